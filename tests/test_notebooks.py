"""The lesson notebooks as a set: each follows docs/CONTRIBUTING.md (labkit.classroom.nbtools.lint), and
they are numbered 00..09 in teaching order, without gaps. nbval runs them (make test); this file
only reads them, so it takes well under a second."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labkit.classroom.nbtools import lint, read

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("*.ipynb"))
EXPECTED_COUNT = 10  # 00_welcome_and_setup .. 09_serving_a_language_model


@pytest.mark.parametrize("path", LESSONS, ids=[p.name for p in LESSONS])
def test_lesson_follows_the_notebook_rules(path):
    problems = lint(read(path))
    assert problems == [], f"{path.name}:\n  " + "\n  ".join(problems)


def test_lessons_are_numbered_in_order_without_gaps():
    names = [p.name for p in LESSONS]
    bad = [n for n in names if not re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", n)]
    assert bad == [], f"lesson names must look like NN_lower_case_words.ipynb: {bad}"
    numbers = [int(n[:2]) for n in names]
    assert numbers == list(range(EXPECTED_COUNT)), f"expected lessons 00..{EXPECTED_COUNT - 1}, found {names}"


def _colab_cell(path):
    cells = [c for c in read(path).cells if c.get("id") == "colab-setup"]
    assert len(cells) == 1, f"{path.name}: expected one cell with id 'colab-setup'"
    return cells[0].source


def test_every_lesson_has_the_same_guarded_colab_install_cell():
    sources = {p.name: _colab_cell(p) for p in LESSONS}
    assert len(set(sources.values())) == 1, "the Colab cells differ between lessons"
    for path in LESSONS:
        assert read(path).cells[1].get("id") == "colab-setup", f"{path.name}: the Colab cell must come first"


def _run_colab_cell(monkeypatch, *, in_colab: bool, has_labkit: bool, repo: str | None = None):
    import importlib.util
    import subprocess
    import sys
    import types

    source = _colab_cell(LESSONS[0])
    if repo is not None:
        source = source.replace("https://github.com/OWNER/REPO.git", repo)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if has_labkit else None) if name == "labkit" else real_find_spec(name, *a))
    if in_colab:
        google = types.ModuleType("google")
        google.__path__ = []
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.setitem(sys.modules, "google.colab", None)  # import fails, as outside Colab
    exec(compile(source, "colab-setup", "exec"), {})
    return calls


def test_colab_cell_does_nothing_outside_colab_or_when_labkit_is_there(monkeypatch):
    assert _run_colab_cell(monkeypatch, in_colab=False, has_labkit=False) == []
    assert _run_colab_cell(monkeypatch, in_colab=True, has_labkit=True) == []


def test_colab_cell_installs_labkit_non_editably_in_colab(monkeypatch):
    with pytest.raises(RuntimeError, match="set COURSE_REPO"):
        _run_colab_cell(monkeypatch, in_colab=True, has_labkit=False)
    calls = _run_colab_cell(monkeypatch, in_colab=True, has_labkit=False, repo="https://example.org/course.git")
    (clone, _), (pip, kw) = calls
    assert clone[:2] == ["git", "clone"] and "https://example.org/course.git" in clone
    assert pip[1:4] == ["-m", "pip", "install"] and "-e" not in pip and "--editable" not in pip
    assert pip[-1] == clone[-1] and kw.get("check") is True
