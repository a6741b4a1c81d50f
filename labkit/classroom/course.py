"""A learner's run of the whole course: every lesson, in order, full size, with an HTML copy of each.

    labkit course [--fast] [--out course-run/] [--timeout S] [NAME...]     (make course)

Each ``NN_*.ipynb`` of the notebooks folder runs top to bottom in a fresh kernel, in that
folder, exactly as a learner's "Run All" would: the full version (``LABKIT_FAST`` off) unless
``fast=True``. Every run is written to ``out_dir`` twice - the executed notebook and an HTML
page (nbconvert's ``HTMLExporter``) to read without Jupyter - and a table gives each lesson's
run time, cells run, cell errors, exercise checks passed (the source notebooks hold the
solutions, so all must pass) and a verdict. The target is the full course in under 20 minutes
on a 2-core laptop CPU. Given ``times_file`` (the CLI passes docs/lesson_times.json), the time of
every lesson that ran ok is recorded there (:mod:`.lesson_times`), and ``labkit times`` copies
it into each notebook's Time line and docs/INSTRUCTORS.md.

Widgets draw their static figure here (``LABKIT_STATIC_WIDGETS=1``), because a saved HTML page
can't run the kernel behind a slider; tests/test_browser.py checks the live widgets instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import nbformat

from labkit import _args
from labkit.checks import PASS
from labkit.classroom.grading import NotebookRun, run_notebook
from labkit.classroom.lesson_times import TARGET_MINUTES, record_runs
from labkit.classroom.student import check_notebook

LESSON = re.compile(r"^\d\d_.+\.ipynb$")


def lessons(notebooks_dir: str | os.PathLike) -> list[Path]:
    """The lesson notebooks (``NN_name.ipynb``) of ``notebooks_dir``, in teaching order."""
    folder = _args.path("notebooks_dir", notebooks_dir)
    if not folder.is_dir():
        raise ValueError(f"notebooks_dir must be a directory, got {str(folder)!r}")
    return sorted(p for p in folder.iterdir() if LESSON.match(p.name))


def verdict(run: NotebookRun) -> str:
    """``ok`` when the lesson ran to the end with no cell error and every check passed."""
    _args.instance("run", run, NotebookRun, "a NotebookRun (from run_notebook)")
    if not run.ran_to_end:
        return run.state.upper()
    if run.errors:
        return f"FAIL: {len(run.errors)} cell error(s)"
    if any(v.status != PASS for v in run.verdicts):
        return f"FAIL: checks {run.passed}/{len(run.verdicts)}"
    return "ok"


def course_table(runs: Sequence[NotebookRun], *, fast: bool = False) -> str:
    """The run-time and pass/fail table that ``labkit course`` prints."""
    _args.sequence("runs", runs, of=NotebookRun, what="a list of NotebookRun")
    _args.boolean("fast", fast)
    width = max([len("notebook")] + [len(r.path.name) for r in runs])
    mode = "fast" if fast else "full"
    lines = [f"{'notebook':<{width}}  mode  {'time':>8}  {'cells':>7}  errors  checks  verdict"]
    for r in runs:
        lines.append(f"{r.path.name:<{width}}  {mode}  {_clock(r.seconds):>8}  {f'{r.cells_run}/{r.cells}':>7}  "
                     f"{len(r.errors):>6}  {f'{r.passed}/{len(r.verdicts)}':>6}  {verdict(r)}")
        lines += [f"{'':<{width}}    ! {e[:110]}" for e in r.errors]
    total = sum(r.seconds for r in runs)
    ok = sum(verdict(r) == "ok" for r in runs)
    within = "within" if total < TARGET_MINUTES * 60 else "OVER"
    lines.append(f"{'total':<{width}}  {mode}  {_clock(total):>8}  {ok}/{len(runs)} lessons ok; "
                 f"{within} the {TARGET_MINUTES}-minute target" + ("" if not fast else " (which is for the full run)"))
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def write_html(nb, path: str | os.PathLike) -> Path:
    """Write ``nb`` (with its outputs) as a standalone HTML page."""
    from nbconvert import HTMLExporter

    check_notebook("nb", nb)
    path = _args.path("path", path)
    body, _ = HTMLExporter().from_notebook_node(nb)
    path = Path(path)
    path.write_text(body, encoding="utf-8")
    return path


def run_course(notebooks_dir: str | os.PathLike, out_dir: str | os.PathLike, *, fast: bool = False,
               timeout: float = 900, names: Sequence[str] | None = None, echo: bool = True,
               times_file: str | os.PathLike | None = None) -> list[NotebookRun]:
    """Run every lesson of ``notebooks_dir`` in order; write ``out_dir/NAME.ipynb`` and ``.html``.

    ``timeout`` bounds each lesson (seconds); ``names`` picks some lessons (a prefix such as
    ``"05"`` or a file name). Prints a line per lesson as it finishes, then :func:`course_table`
    (``echo=False`` keeps quiet). ``times_file``: record the lessons that ran ok there
    (:func:`~labkit.classroom.lesson_times.record_runs`). Returns one
    :class:`~labkit.classroom.grading.NotebookRun` per lesson.
    """
    src, out = _args.path("notebooks_dir", notebooks_dir), _args.path("out_dir", out_dir)
    _args.boolean("fast", fast)
    _args.positive_float("timeout", timeout)
    _args.boolean("echo", echo)
    if times_file is not None:
        times_file = _args.path("times_file", times_file)
    if names is not None:
        _args.sequence("names", names, of=str)
    found = lessons(src)
    if not found:
        raise ValueError(f"notebooks_dir {str(src)!r} holds no lesson notebooks named NN_*.ipynb")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ValueError(f"out_dir {str(out)!r} must not be notebooks_dir or inside it (the executed copies "
                         "would overwrite the lessons or be collected as lessons)")
    if names:
        chosen = [p for p in found if any(p.name == n or p.name.startswith(n) for n in names)]
        unknown = [n for n in names if not any(p.name == n or p.name.startswith(n) for p in found)]
        if unknown:
            raise ValueError(f"names {unknown} match no lesson in {str(src)!r}")
        found = chosen
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for path in found:
        run = run_notebook(path, fast=fast, timeout=timeout)
        nbformat.write(run.nb, out / path.name)
        write_html(run.nb, out / path.with_suffix(".html").name)
        runs.append(run)
        if echo:
            print(f"{path.name}: {_clock(run.seconds)} {verdict(run)}", flush=True)
    table = course_table(runs, fast=fast)
    (out / "summary.txt").write_text(table + "\n")
    if echo:
        print("\n" + table)
    if times_file is not None:
        recorded = record_runs(times_file, [r for r in runs if verdict(r) == "ok"], fast=fast)
        if echo:
            print(f"recorded the {'fast' if fast else 'full'} times of lessons {', '.join(recorded) or 'none'} in "
                  f"{times_file}; `labkit times` copies them into the notebooks and docs/INSTRUCTORS.md")
    return runs
