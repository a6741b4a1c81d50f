"""labkit.classroom.course: a learner's run of every lesson, with HTML copies, times and verdicts.

One real run (``labkit course --fast``) over a small course built from the fixtures: a good
lesson, a broken one, and one with a figure and a widget explorer; the table is also checked
on hand-made runs, without kernels.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from labkit import cli
from labkit.checks import CheckResult
from labkit.classroom import NotebookRun
from labkit.classroom.course import course_table, lessons, run_course, verdict

FIXTURES = Path(__file__).parent / "fixtures" / "classroom"


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """notebooks/ with 01 (all good), 02 (a crashing cell, a wrong answer), 03 (figure + explorer)."""
    tmp = tmp_path_factory.mktemp("course")
    src = tmp / "notebooks"
    src.mkdir()
    shutil.copy(FIXTURES / "01_fixture.ipynb", src / "01_good.ipynb")
    broken = nbformat.read(FIXTURES / "01_fixture.ipynb", as_version=4)
    broken.cells[2].source = broken.cells[2].source.replace("a + b", "a * b")
    broken.cells.insert(3, new_code_cell("raise RuntimeError('lesson bug')"))
    nbformat.write(broken, src / "02_broken.ipynb")
    shutil.copy(FIXTURES / "widget_figure.ipynb", src / "03_widgets.ipynb")
    (src / "notes.ipynb").write_text("{}")  # not NN_name: not a lesson
    return src, tmp / "course-run"


@pytest.fixture(scope="module")
def ran(course):
    src, out = course
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        status = cli.main(["course", "--fast", "--notebooks", str(src), "--out", str(out), "--timeout", "120"])
    return status, buf.getvalue(), out


def test_course_runs_every_lesson_in_order_and_reports(ran):
    status, printed, out = ran
    assert status == 1  # 02 fails, so the command fails
    rows = [ln for ln in printed.splitlines() if re.match(r"0\d_\w+\.ipynb\s+fast", ln)]
    assert [r.split()[0] for r in rows] == ["01_good.ipynb", "02_broken.ipynb", "03_widgets.ipynb"]
    assert rows[0].endswith("ok") and rows[2].endswith("ok")
    assert "FAIL: 1 cell error(s)" in rows[1] and "3/4" not in rows[0] and "4/4" in rows[0]
    assert "RuntimeError: lesson bug" in printed
    assert "2/3 lessons ok" in printed and "within the 20-minute target" in printed
    assert (out / "summary.txt").read_text().strip() == printed[printed.index("notebook "):].split("HTML copies")[0].strip()


def test_html_copies_hold_the_outputs(ran):
    _, _, out = ran
    for name in ("01_good", "02_broken", "03_widgets"):
        assert (out / f"{name}.html").is_file() and (out / f"{name}.ipynb").is_file()
    good = (out / "01_good.html").read_text()
    assert "lesson checks passed" in good and "45" in good and "exercise T.1 add" in good
    widgets = (out / "03_widgets.html").read_text()
    assert widgets.count("<img") == 2  # the figure, and the explorer's static figure
    executed = nbformat.read(out / "03_widgets.ipynb", as_version=4)
    assert "done: 42" in executed.cells[-1].outputs[0]["text"]


def test_broken_lesson_still_reports_later_checks(ran):
    _, printed, _ = ran
    row = next(ln for ln in printed.splitlines() if re.match(r"02_broken.ipynb\s+fast", ln))
    assert re.search(r"\s2/4\s", row)  # T.1 and T.4 fail (a * b); T.2, T.3 still pass after the crash


def _run(name, *, seconds=1.0, errors=(), statuses=("pass",), cells=(3, 3), timed_out=False):
    verdicts = [CheckResult(f"x.{i}", s, "") for i, s in enumerate(statuses)]
    return NotebookRun(Path(name), seconds, cells[1], cells[0], list(errors), verdicts, timed_out)


def test_verdicts_and_table_without_kernels():
    assert verdict(_run("a")) == "ok"
    assert verdict(_run("a", statuses=("pass", "fail"))) == "FAIL: checks 1/2"
    assert verdict(_run("a", errors=["cell 2: E: x"])) == "FAIL: 1 cell error(s)"
    assert verdict(_run("a", cells=(1, 3), timed_out=True)) == "TIMED OUT"
    table = course_table([_run("00_a.ipynb", seconds=70.5), _run("01_b.ipynb", seconds=1150.0)])
    assert "1:10.5" in table and "full" in table
    assert table.splitlines()[-1].split()[2] == "20:20.5" and "OVER the 20-minute target" in table
    assert "within" in course_table([_run("00_a.ipynb", seconds=60)], fast=True)


def test_bad_input(course, tmp_path):
    src, _ = course
    with pytest.raises(ValueError, match="must be a directory"):
        run_course(FIXTURES / "01_fixture.ipynb", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no lesson notebooks"):
        run_course(tmp_path / "empty", tmp_path / "out")
    for bad in (src, src / "run"):
        with pytest.raises(ValueError, match="must not be notebooks_dir"):
            run_course(src, bad)
    with pytest.raises(ValueError, match=r"names \['07'\] match no lesson"):
        run_course(src, tmp_path / "out", names=["01", "07"])
    assert [p.name for p in lessons(src)] == ["01_good.ipynb", "02_broken.ipynb", "03_widgets.ipynb"]
    assert cli.main(["course", "--notebooks", str(tmp_path / "empty")]) == 2
