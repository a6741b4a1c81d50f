"""Shared fixtures and markers: hardware markers skip where the hardware is missing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import matplotlib
import pytest
import torch

from labkit.checks import LOG_ENV

matplotlib.use("Agg")
os.environ.setdefault("LABKIT_STATIC_WIDGETS", "1")


def _has(kind: str) -> bool:
    from labkit.devices import available_devices

    return any(d.startswith(kind) for d in available_devices())


def pytest_collection_modifyitems(config, items):
    missing = {k: not _has(k) for k in ("cuda", "mps", "xla")}
    marks = {"gpu": "cuda", "mps": "mps", "xla": "xla"}
    for item in items:
        for mark, kind in marks.items():
            if mark in item.keywords and missing[kind]:
                item.add_marker(pytest.mark.skip(reason=f"no {kind} device on this machine"))


@pytest.fixture(params=None)
def device(request):
    """Each available device in turn (only 'cpu' on a machine without accelerators)."""
    return torch.device(request.param)


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        from labkit.devices import available_devices

        metafunc.parametrize("device", available_devices(), indirect=True)


@pytest.fixture
def gen():
    """A seeded torch.Generator for tests that draw random numbers."""
    return torch.Generator().manual_seed(0)


# --- Exercise verdicts from the nbval run ----------------------------------------------------------
# While nbval runs a lesson from notebooks/, $LABKIT_CHECK_LOG points at a log file for that
# lesson, so every check() there records its verdict; after the lesson's last cell the plugin
# checks that every exercise passed: the solutions are proven without running the lessons a second
# time, on whichever pytest-xdist worker ran each lesson. test_real_solutions_pass_every_check
# (tests/test_classroom.py, kept last) grades only lessons nbval did not run in this session.
# Outside lesson items the variable is put back as it was.
_UNSET = object()


class NbvalCheckLogs:
    """A plugin: per-lesson check logs during nbval's run of notebooks/."""

    LESSONS = Path(__file__).resolve().parent.parent / "notebooks"
    LAST = "test_real_solutions_pass_every_check"

    def __init__(self):
        self.dir = None
        self.logs = {}  # lesson path -> its log file, for every lesson whose cells nbval ran
        self.saved = _UNSET  # the variable's value before the first lesson item
        self.checked = set()  # lessons whose verdicts were checked after their last cell

    def lessons_run(self) -> dict:
        return dict(self.logs)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session, config, items):
        last = [it for it in items if it.name == self.LAST]
        items[:] = [it for it in items if it.name != self.LAST] + last

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):  # runs before nbval starts the lesson's kernel
        path = Path(str(item.path)).resolve()
        if path.suffix != ".ipynb" or path.parent != self.LESSONS:
            if self.saved is not _UNSET:
                os.environ.pop(LOG_ENV, None)
                if self.saved is not None:
                    os.environ[LOG_ENV] = self.saved
                self.saved = _UNSET
            return
        if self.saved is _UNSET:
            self.saved = os.environ.get(LOG_ENV)
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="labkit-nbval-checks-"))
        os.environ[LOG_ENV] = str(self.logs.setdefault(path, self.dir / f"{path.stem}.jsonl"))

    def pytest_runtest_teardown(self, item, nextitem):
        """After a lesson's last cell: every exercise of the lesson logged a "pass" (the instructor's
        solutions). A problem is reported as an error in the teardown of that cell. Checked here, on
        whichever pytest-xdist worker ran the lesson, rather than in a test that would need every
        worker's logs."""
        path = Path(str(item.path)).resolve()
        if path not in self.logs or (nextitem is not None and Path(str(nextitem.path)).resolve() == path):
            return
        import nbformat

        from labkit.classroom import exercise_names, verdicts_from_log

        names = exercise_names(nbformat.read(path, as_version=4))
        verdicts = verdicts_from_log(self.logs[path], names)
        problems = [f"{v.exercise} is '{v.status}': {v.message}" for v in verdicts if v.status != "pass"]
        if len(names) < 3:
            problems.append(f"only {len(names)} exercise(s)")
        self.checked.add(path)
        assert not problems, f"{path.name}, the instructor's solutions:\n" + "\n".join(problems)

    def pytest_unconfigure(self, config):
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def pytest_configure(config):
    config.pluginmanager.register(NbvalCheckLogs(), "labkit-nbval-check-logs")


@pytest.fixture(scope="session")
def nbval_check_logs(pytestconfig):
    """The NbvalCheckLogs plugin: ``.lessons_run()`` maps each lesson nbval ran to its verdict log."""
    return pytestconfig.pluginmanager.get_plugin("labkit-nbval-check-logs")
