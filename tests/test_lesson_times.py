"""Lesson times come from one table: docs/lesson_times.json, written by ``labkit course`` and
copied by ``labkit times`` into each notebook's Time line and docs/INSTRUCTORS.md.

The writer is tested on a tiny fake course (two one-cell lessons and a two-row guide, with
hand-made runs, then one real ``labkit course`` of two trivial notebooks); the repository's own
notebooks and guide must agree with the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labkit.checks import CheckResult
from labkit.classroom.course import lessons
from labkit.classroom.grading import NotebookRun
from labkit.classroom.lesson_times import clock, read_times, record_runs, sync, time_paragraph
from labkit.cli import main

ROOT = Path(__file__).parent.parent
GUIDE = """# Guide

| # | notebook | topic | exercises | run time, 2-core CPU (measured) | run time, GPU (estimate) | session time |
|---|---|---|---|---|---|---|
| 00 | `00_a` | a | 0: | 9:99 | ~0:20 | 45 min |
| 01 | `01_b` | b | 0: | 9:99 | ~0:20 | 60 min |
| | **total** | | | **9:99** | ~1 min | 1 session |

Text after the table.
"""


def _lesson(folder: Path, name: str, exercise: str) -> Path:
    nb = new_notebook(cells=[
        new_markdown_cell(f"# {name}\n\n**Time**: about 3 hours (typed in by hand).\n\nA note that stays.\n\nMore."),
        new_code_cell(f'def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n\n\ncheck("{exercise}", f, expected=1)')])
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def _run(path: Path, seconds: float, status: str = "pass") -> NotebookRun:
    return NotebookRun(path=path, seconds=seconds, cells=2, cells_run=2, errors=[],
                       verdicts=[CheckResult(f"{path.name[:2]}.1 x", status, "message")])


@pytest.fixture
def course(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    paths = [_lesson(folder, "00_a", "00.1 first thing"), _lesson(folder, "01_b", "01.1 second thing")]
    guide = tmp_path / "INSTRUCTORS.md"
    guide.write_text(GUIDE)
    times = tmp_path / "lesson_times.json"
    return paths, guide, times


def test_clock_rounds_to_whole_seconds():
    assert [clock(61.4), clock(59.6), clock(0), clock(600)] == ["1:01", "1:00", "0:00", "10:00"]


def test_a_fake_course_run_is_recorded_then_copied_into_notebooks_and_guide(course):
    paths, guide, times = course
    assert record_runs(times, [_run(paths[0], 61.4)], fast=False, machine="a test box", date="2026-12-02") == ["00"]
    data = read_times(times)
    assert data["lessons"]["00"]["full"] == {"seconds": 61.4, "machine": "a test box", "date": "2026-12-02",
                                             "source": "labkit course"}
    with pytest.raises(ValueError, match="no entry for lesson 01"):
        sync(paths, times, guide)
    record_runs(times, [_run(paths[1], 5.0)], fast=True, machine="a test box", date="2026-12-02")
    data = read_times(times)
    assert data["lessons"]["00"]["fast"] is None and data["lessons"]["01"]["full"] is None  # the other mode kept

    assert sync(paths, times, guide, write=False) == paths + [guide]  # reports, writes nothing
    assert "3 hours" in nbformat.read(paths[0], as_version=4).cells[0].source
    assert sync(paths, times, guide) == paths + [guide]
    assert sync(paths, times, guide) == []  # idempotent

    front = nbformat.read(paths[0], as_version=4).cells[0].source
    assert "3 hours" not in front and "\n\nA note that stays.\n\nMore." in front  # only the Time paragraph changed
    assert "Run All took 1:01 (m:ss) on a test box, 2026-12-02 (labkit course)" in front
    b = nbformat.read(paths[1], as_version=4).cells[0].source
    assert "has not been timed yet" in b and "0:05 with `LABKIT_FAST=1`" in b
    rows = guide.read_text().split("\n")
    assert rows[4] == "| 00 | `00_a` | a | 1: first thing | 1:01 | ~0:20 | ? |"  # no session estimate in the file
    assert rows[5] == "| 01 | `01_b` | b | 1: second thing | not measured | ~0:20 | ? |"
    assert rows[6] == "| | **total** | | | **1:01** (without 01) (target: under 20 min) | ~1 min | 1 session |"
    assert guide.read_text().endswith("Text after the table.\n")

    data["lessons"]["00"]["session"] = "45 min"  # hand-edited planning estimate
    times.write_text(json.dumps(data))
    assert sync(paths, times, guide, write=False) == [paths[0], guide]
    assert main(["times", "--notebooks", str(paths[0].parent), "--times", str(times), "--guide", str(guide),
                 "--check"]) == 1
    assert main(["times", "--notebooks", str(paths[0].parent), "--times", str(times), "--guide", str(guide)]) == 0
    assert "about 45 min to work through" in nbformat.read(paths[0], as_version=4).cells[0].source


def test_failed_runs_are_not_recorded_and_the_seeded_note_goes_with_the_last_seeded_time(course, tmp_path):
    paths, guide, times = course
    seeded = {"seconds": 1.0, "machine": "m", "date": None, "source": "seeded from elsewhere"}
    times.write_text(json.dumps({"about": "a", "seeded": "copied from elsewhere", "lessons": {
        "00": {"notebook": "00_a.ipynb", "session": None, "full": dict(seeded), "fast": None},
        "01": {"notebook": "01_b.ipynb", "session": None, "full": dict(seeded), "fast": None}}}))
    record_runs(times, [_run(paths[0], 7.0)], fast=False, machine="m", date="d")
    assert "seeded" in read_times(times)  # lesson 01's time is still a copied one
    record_runs(times, [_run(paths[1], 8.0)], fast=False, machine="m", date="d")
    assert "seeded" not in read_times(times)


@pytest.mark.slow
def test_labkit_course_records_the_lessons_that_ran_ok_beside_the_notebooks(tmp_path, capsys):
    folder, docs = tmp_path / "notebooks", tmp_path / "docs"
    folder.mkdir(), docs.mkdir()
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1 + 1")]), folder / "00_ok.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("raise RuntimeError('broken lesson')")]), folder / "01_bad.ipynb")
    assert main(["course", "--fast", "--notebooks", str(folder), "--out", str(tmp_path / "out"), "--timeout", "120"]) == 1
    printed = capsys.readouterr().out
    seconds = float(re.search(r"00_ok\.ipynb: (\d+):(\d+\.\d)", printed).group(2))
    data = read_times(docs / "lesson_times.json")  # the default: docs/ beside the notebooks folder
    assert list(data["lessons"]) == ["00"]  # the broken lesson's time is not a lesson time
    entry = data["lessons"]["00"]["fast"]
    assert abs(entry["seconds"] - seconds) <= 0.1 and entry["source"] == "labkit course --fast"
    assert data["lessons"]["00"]["full"] is None


def test_labkit_course_records_nothing_without_a_docs_folder(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    assert main(["course", "--notebooks", str(folder)]) == 2  # no lessons: a usage error, and no file written
    assert list(tmp_path.iterdir()) == [folder]


def test_bad_inputs(course, tmp_path):
    paths, guide, times = course
    with pytest.raises(ValueError, match="labkit course"):
        read_times(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="runs"):
        record_runs(times, "00_a", fast=False)
    with pytest.raises(TypeError, match="fast"):
        record_runs(times, [], fast="no")
    with pytest.raises(TypeError, match="entry"):
        time_paragraph(None)
    (tmp_path / "bad.json").write_text('{"lessons": []}')
    with pytest.raises(ValueError, match="lessons"):
        read_times(tmp_path / "bad.json")


def test_the_notebooks_and_the_instructors_guide_agree_with_docs_lesson_times():
    stale = sync(lessons(ROOT / "notebooks"), ROOT / "docs" / "lesson_times.json", ROOT / "docs" / "INSTRUCTORS.md",
                 write=False)
    assert stale == [], f"run `labkit times` (out of date: {[p.name for p in stale]})"
