"""labkit.classroom: student copies (hand-checked stubs) and headless grading (real kernels).

Fixture: tests/fixtures/classroom/01_fixture.ipynb - three exercises (a function, a method
with a loop, a tensor function), a markdown answer, a hidden test, a checked cell, and a stale
output. The last test reads the real lessons' check verdicts (marked slow): the solutions must pass
every check. The real student set runs in tests/test_broken_lessons.py.
"""

from __future__ import annotations

import copy
import csv
import os
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from labkit import cli
from labkit.checks import LOG_ENV, check
from labkit.classroom import (
    build_student,
    exercise_names,
    grade,
    make_student,
    restore_checks,
    run_notebook,
    student_cell_source,
    verdicts_from_log,
)
from labkit.classroom.grading import CSV_COLUMNS, splice_solutions

FIXTURES = Path(__file__).parent / "fixtures" / "classroom"
SOURCE = FIXTURES / "01_fixture.ipynb"
LESSONS = Path(__file__).parent.parent / "notebooks"

# The student version of each exercise cell of the fixture, written out by hand.
EXPECTED_STUDENT = {
    2: '''def add(a, b):
    """Return a + b."""
    # YOUR CODE HERE
    raise NotImplementedError


check("T.1 add", lambda: add(2, 3), expected=5, hint="use +")''',
    3: '''class Counter:
    def count_evens(self, xs):
        n = 0
        for x in xs:
            # YOUR CODE HERE
            raise NotImplementedError
        return n


check("T.2 evens", lambda: Counter().count_evens([1, 2, 3, 4]), test=lambda n: n == 2,
      hint="count x with x % 2 == 0")''',
    4: '''**Question.** Why does a mask of zeros not make a dense matmul faster?

YOUR ANSWER HERE''',
    5: '''def sparsity(mask):
    # YOUR CODE HERE
    raise NotImplementedError


check("T.3 sparsity", lambda: sparsity(torch.tensor([1, 0, 0, 1])), expected=0.5,
      hint="fraction of zeros")''',
}


def source_nb():
    return nbformat.read(SOURCE, as_version=4)


# ---------------------------------------------------------------- student copies (no kernel)

def test_stubs_replace_solutions_exactly():
    src = source_nb()
    student = make_student(src, name="fixture")
    for i, expected in EXPECTED_STUDENT.items():
        assert student.cells[i].source == expected, f"cell {i}"
    untouched = set(range(len(src.cells))) - set(EXPECTED_STUDENT)
    assert all(student.cells[i].source == src.cells[i].source for i in untouched)
    assert [c.id for c in student.cells] == [c.id for c in src.cells]  # ids kept: grading matches cells


def test_outputs_cleared_markers_gone_checks_kept():
    src = source_nb()
    before = copy.deepcopy(src)
    student = make_student(src)
    assert src == before  # the source is not modified
    code = [c for c in student.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert any(c.outputs for c in src.cells if c.cell_type == "code")  # the fixture did have outputs
    text = "\n".join(c.source for c in student.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "HIDDEN TESTS", "add(-2, -3)"):
        assert marker not in text
    assert "widgets" not in student.metadata and student.metadata["labkit"]["version"] == "student"
    assert exercise_names(src) == ["T.1 add", "T.2 evens", "T.3 sparsity", "T.4 add negatives"]
    assert exercise_names(student) == ["T.1 add", "T.2 evens", "T.3 sparsity"]
    assert "# NBVAL_CHECK_OUTPUT" in text and "assert sum(range(10)) == 45" in text


def test_stub_keeps_indentation_and_allows_magics():
    src = "%%time\ndef f(x):\n\tif x:\n\t\t### BEGIN SOLUTION\n\t\treturn 1\n\t\t### END SOLUTION\n\treturn 0"
    assert student_cell_source(src) == ("%%time\ndef f(x):\n\tif x:\n\t\t# YOUR CODE HERE\n"
                                        "\t\traise NotImplementedError\n\treturn 0")
    assert student_cell_source("x = 1") == "x = 1"


@pytest.mark.parametrize("source, problem", [
    ("def f():\n    ### BEGIN SOLUTION\n    return 1", "never closed"),
    ("def f():\n    return 1\n    ### END SOLUTION", "without"),
    ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    ### END SOLUTION", "inside another"),
    ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", "top level"),
    ("def f(x):\n    return (x +\n        ### BEGIN SOLUTION\n        1)\n        ### END SOLUTION", "does not compile"),
])
def test_bad_solution_markers_are_clear_errors(source, problem):
    with pytest.raises(ValueError, match=problem):
        student_cell_source(source, where="lesson.ipynb, cell 3")


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="cell_type"):
        student_cell_source("x", cell_type="python")
    with pytest.raises(TypeError, match="nb must be a notebook"):
        make_student({"cells": "no"})
    with pytest.raises(TypeError, match="nb must be a notebook"):
        exercise_names("01_fixture.ipynb")


def test_build_student_writes_every_notebook(tmp_path):
    written = build_student(FIXTURES, tmp_path / "student")
    assert [p.name for p in written] == sorted(p.name for p in FIXTURES.glob("*.ipynb"))
    again = nbformat.read(tmp_path / "student" / SOURCE.name, as_version=4)
    assert again == make_student(source_nb(), name=SOURCE.name)


def test_build_student_bad_input(tmp_path):
    with pytest.raises(ValueError, match="src_dir must be a directory"):
        build_student(SOURCE, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .ipynb"):
        build_student(tmp_path / "empty", tmp_path / "out")
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(source_nb(), src / "01_a.ipynb")
    for bad in (src, src / "student"):
        with pytest.raises(ValueError, match="must not be src_dir"):
            build_student(src, bad)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        build_student(src, tmp_path / "file")
    broken = source_nb()
    broken.cells.append(new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"))
    nbformat.write(broken, src / "02_b.ipynb")
    with pytest.raises(ValueError, match="02_b.ipynb, cell 9: a solution at the top level"):
        build_student(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # all or nothing


def test_restore_checks_brings_back_hidden_tests_and_edited_checks():
    src = source_nb()
    src.cells.insert(6, new_code_cell('check("T.5 again", lambda: add(1, 1), expected=2)', id="cell-check"))
    student = make_student(src)
    student.cells[6].source = 'check("T.5 again", lambda: 2, expected=2)'  # the learner "fixed" the check
    student.cells[5].source = student.cells[5].source.replace("expected=0.5", "expected=1.0")
    restored = restore_checks(student, src)
    assert [c.id for c in restored.cells] == [c.id for c in student.cells]
    assert restored.cells[6].source == src.cells[6].source
    # the solution cell: the instructor's source (its check and hidden test), the learner's stub inside
    assert restored.cells[5].source == src.cells[5].source.replace(
        "    return 1 - mask.float().mean().item()", "    # YOUR CODE HERE\n    raise NotImplementedError")
    assert student.cells[6].source == 'check("T.5 again", lambda: 2, expected=2)'  # a copy was changed


def test_splice_keeps_the_learners_code_and_the_instructors_checks():
    src = source_nb().cells[3].source
    learner = make_student(source_nb()).cells[3].source
    learner = learner.replace("            # YOUR CODE HERE\n            raise NotImplementedError",
                              "            if x % 2:\n                continue\n\n            n += 1")
    learner = learner.replace("lambda: Counter().count_evens([1, 2, 3, 4])", "lambda: 2")  # an edited check
    learner += '\ncheck("T.2 evens", lambda: 2, test=bool)'  # and an extra one
    assert splice_solutions(src, learner) == src.replace(
        "            if x % 2 == 0:\n                n += 1",
        "            if x % 2:\n                continue\n\n            n += 1")
    assert splice_solutions(src, src) == src  # the instructor's own cell, markers and all
    deleted_check = "def sparsity(mask):\n    return 0.5\n"
    assert splice_solutions(source_nb().cells[5].source, deleted_check) == source_nb().cells[5].source.replace(
        "return 1 - mask.float().mean().item()", "return 0.5")


# ---------------------------------------------------------------- grading (real kernels)

STUB = "    # YOUR CODE HERE\n    raise NotImplementedError"


def _learner(path: Path) -> Path:
    """A learner's work on the student copy: T.1 right for positives only (so hidden T.4 errs),
    a crashing cell of their own, T.2 wrong, T.3 right but its check deleted (grading restores it)."""
    nb = make_student(source_nb())
    nb.cells[2].source = nb.cells[2].source.replace(STUB, "    return a + b if a > 0 else a.bad")
    nb.cells[3].source = nb.cells[3].source.replace(STUB.replace("    ", " " * 12), "            n += x")
    nb.cells[5].source = "def sparsity(mask):\n    return 1 - mask.float().mean().item()\n"
    nb.cells.insert(3, new_code_cell("undefined_name + 1", id="learner-crash"))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One grading run against the source: the solutions, the untouched student copy, a learner."""
    tmp = tmp_path_factory.mktemp("grade")
    student = build_student(FIXTURES, tmp / "student")[0]
    learner = _learner(tmp / "learner" / SOURCE.name)
    report = grade([SOURCE, student, learner], source_dir=FIXTURES, feedback_dir=tmp / "feedback", timeout=120)
    return tmp, report


def _status(run):
    return {v.exercise: v.status for v in run.verdicts}


def test_grading_the_solutions_passes_everything(graded):
    run = graded[1].runs[0]
    assert _status(run) == {"T.1 add": "pass", "T.2 evens": "pass", "T.3 sparsity": "pass", "T.4 add negatives": "pass"}
    assert run.ran_to_end and run.errors == [] and run.cells_run == run.cells == 6


def test_grading_the_student_copy_reports_not_done_and_runs_to_the_end(graded):
    run = graded[1].runs[1]
    assert _status(run) == {"T.1 add": "not done", "T.2 evens": "not done", "T.3 sparsity": "not done",
                            "T.4 add negatives": "not done"}  # T.4: the hidden test, restored from the source
    assert run.ran_to_end and run.errors == [] and run.cells_run == run.cells == 6
    last = run.nb.cells[-1]
    assert "lesson checks passed" in last.outputs[0]["text"]  # the final cell ran and printed


def test_one_broken_cell_does_not_hide_later_exercises(graded):
    run = graded[1].runs[2]
    assert _status(run) == {"T.1 add": "pass", "T.2 evens": "fail", "T.3 sparsity": "pass",
                            "T.4 add negatives": "error"}
    assert run.ran_to_end and len(run.errors) == 1 and "cell 3: NameError" in run.errors[0]
    assert run.state == "1 cell error(s)" and run.passed == 2


def test_report_totals_table_and_feedback(graded):
    tmp, report = graded
    assert (report.points, report.max_points) == (6, 12)
    table = report.table()
    assert "total (ran to end)" in table and table.splitlines()[-1].split()[-1] == "6/12"
    assert "not done" in table and "! cell 3: NameError" in table
    feedback = nbformat.read(tmp / "feedback" / "learner" / SOURCE.name, as_version=4)
    assert any("NameError" in str(c.get("outputs")) for c in feedback.cells)  # the executed copy, for the learner


def test_csv_for_a_grade_book(graded, tmp_path):
    _, report = graded
    with report.write_csv(tmp_path / "grades.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS == ("notebook", "exercise", "status", "points", "max_points", "message")
    assert len(rows) == 3 * (4 + 1)
    totals = [r for r in rows if r["exercise"] == "TOTAL"]
    assert [(r["points"], r["max_points"], r["status"]) for r in totals] == [
        ("4", "4", "ran to end"), ("0", "4", "ran to end"), ("2", "4", "1 cell error(s)")]
    assert sum(int(r["points"]) for r in rows if r["exercise"] != "TOTAL") == report.points
    assert rows[7]["status"] == "not done" and "NotImplementedError" in rows[7]["message"]


def test_checks_a_learner_adds_copies_plants_or_edits_score_nothing(tmp_path):
    """Every exercise left undone or wrong, dressed up with checks that would pass if they counted."""
    nb = make_student(source_nb())
    copied = nb.cells[2].source.replace("    # YOUR CODE HERE\n    raise NotImplementedError", "    return a + b")
    nb.cells[3].source = nb.cells[3].source.replace(  # T.2 wrong, with a passing check planted in the body
        "            # YOUR CODE HERE\n            raise NotImplementedError",
        '            check("T.2 evens", lambda: 2, test=lambda n: n == 2)\n            n += x')
    nb.cells[5].source = nb.cells[5].source.replace(  # T.3 not done, its check edited to pass
        "lambda: sparsity(torch.tensor([1, 0, 0, 1]))", "lambda: 0.5")
    nb.cells.insert(2, new_code_cell(copied, id="learner-copy"))  # T.1 solved in a copied cell (the stub runs after it)
    nb.cells.append(new_code_cell('check("T.1 add", lambda: 1, expected=1)\ncheck("T.9 bonus", lambda: 1, expected=1)',
                                  id="learner-added"))
    nbformat.write(nb, tmp_path / SOURCE.name)
    run = grade([tmp_path / SOURCE.name], source_dir=FIXTURES, timeout=120).runs[0]
    assert _status(run) == {"T.1 add": "not done", "T.2 evens": "fail", "T.3 sparsity": "not done",
                            "T.4 add negatives": "not done"}
    assert run.passed == 0 and run.ran_to_end and run.errors == []
    logged = [o["data"]["text/plain"] for c in run.nb.cells for o in c.get("outputs", []) if "data" in o]
    assert sum("[PASS]" in t for t in logged) == 1 + 4 + 2  # the cheats ran and passed (the planted one
    # once per loop turn): they just don't count


def test_a_notebook_out_of_time_is_reported(tmp_path):
    nb = source_nb()
    nb.cells.insert(2, new_code_cell("import time\ntime.sleep(60)", id="slow"))
    nbformat.write(nb, tmp_path / "slow.ipynb")
    run = run_notebook(tmp_path / "slow.ipynb", timeout=8)
    assert run.timed_out and not run.ran_to_end and run.state == "timed out"
    assert set(_status(run).values()) == {"missing"}


def test_a_dying_kernel_is_reported_with_its_last_words(tmp_path):
    nb = source_nb()
    nb.cells.insert(3, new_code_cell('import os\nos.write(2, b"native crash here\\n")\nos._exit(3)', id="die"))
    nbformat.write(nb, tmp_path / "die.ipynb")
    run = run_notebook(tmp_path / "die.ipynb", timeout=60)
    assert run.kernel_died and run.state == "kernel died" and not run.ran_to_end
    assert run.errors == ["the kernel died; its last output: native crash here"]
    assert _status(run) == {"T.1 add": "pass", "T.2 evens": "missing", "T.3 sparsity": "missing",
                            "T.4 add negatives": "missing"}


def test_grade_bad_input(tmp_path):
    with pytest.raises(ValueError, match="notebooks must not be empty"):
        grade([])
    with pytest.raises(TypeError, match="list of notebook paths"):
        grade(str(SOURCE))
    corrupt = tmp_path / "corrupt.ipynb"
    corrupt.write_text("{not json")
    with pytest.raises(ValueError, match=r"notebooks\[1\]: '.*corrupt.ipynb' is not a readable notebook"):
        grade([SOURCE, corrupt])
    (tmp_path / "other.ipynb").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="other.ipynb' is not a readable notebook"):
        grade([tmp_path / "other.ipynb"])
    (tmp_path / "notes.txt").write_text("x")
    for bad in (tmp_path / "notes.txt", tmp_path / "absent.ipynb", FIXTURES):
        with pytest.raises(ValueError, match="not a notebook file"):
            grade([bad])
    with pytest.raises(ValueError, match="source_dir must be a directory"):
        grade([SOURCE], source_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="source_dir has no 01_fixture.ipynb"):
        grade([SOURCE], source_dir=tmp_path)
    with pytest.raises(ValueError, match="timeout"):
        run_notebook(SOURCE, timeout=0)


def test_cli_student_and_grade(tmp_path, capsys):
    out = tmp_path / "student"
    assert cli.main(["student", "--src", str(FIXTURES), "--out", str(out)]) == 0
    assert "2 student notebook(s)" in capsys.readouterr().out
    assert cli.main(["grade", str(out / SOURCE.name), "--csv", str(tmp_path / "g.csv")]) == 0
    printed = capsys.readouterr().out
    assert "T.1 add" in printed and "0/3" in printed and (tmp_path / "g.csv").is_file()
    assert cli.main(["student", "--src", str(FIXTURES), "--out", str(FIXTURES / "x")]) == 2
    assert cli.main(["grade", str(tmp_path / "g.csv")]) == 2
    assert "not a notebook file" in capsys.readouterr().err


def test_verdicts_from_log(tmp_path, monkeypatch):
    log = tmp_path / "checks.jsonl"
    monkeypatch.setenv(LOG_ENV, str(log))
    check("a", lambda: 1, expected=2, quiet=True)
    check("a", lambda: 2, expected=2, quiet=True)  # re-run after a fix: the last verdict counts
    check("extra", lambda: 1, expected=1, quiet=True)
    got = verdicts_from_log(log, ["a", "b"])
    assert [(v.exercise, v.status) for v in got] == [("a", "pass"), ("b", "missing"), ("extra", "pass")]
    assert [v.status for v in verdicts_from_log(tmp_path / "absent.jsonl", ["a"])] == ["missing"]
    with log.open("a") as f:
        f.write('{"exercise": "a", "status": "pass"\n')  # a cut-off line
    with pytest.raises(ValueError, match=r"log '.*checks.jsonl', line 4 is not a check verdict"):
        verdicts_from_log(log, ["a"])
    with pytest.raises(TypeError, match="expected must be a list or tuple"):
        verdicts_from_log(log, "a")


def test_nbval_log_plugin_points_each_lesson_at_its_own_log(nbval_check_logs, tmp_path, monkeypatch):
    """The conftest plugin behind test_real_solutions_pass_every_check, on stand-in items."""
    plugin = type(nbval_check_logs)()
    plugin.LESSONS = tmp_path / "notebooks"
    monkeypatch.setenv(LOG_ENV, "/somewhere/else.jsonl")
    cell = SimpleNamespace(path=plugin.LESSONS / "05_x.ipynb", name="Cell 3")
    plugin.pytest_runtest_setup(cell)
    log = Path(os.environ[LOG_ENV])
    assert log.parent == plugin.dir and log.name == "05_x.jsonl"
    check("05.1 x", lambda: 1, expected=2, quiet=True)  # what a lesson's kernel would write
    plugin.pytest_runtest_setup(SimpleNamespace(path=tmp_path / "test_a.py", name="test_a"))
    assert os.environ[LOG_ENV] == "/somewhere/else.jsonl"  # put back for other tests
    runs = plugin.lessons_run()
    assert list(runs) == [cell.path.resolve()]
    assert [v.status for v in verdicts_from_log(runs[cell.path.resolve()], ["05.1 x"])] == ["fail"]
    # after the lesson's last cell the plugin checks its verdicts: here 05.1 failed and 05.2, 05.3 never ran
    plugin.LESSONS.mkdir()
    nb = nbformat.v4.new_notebook(cells=[new_code_cell(f'check("05.{i} x", lambda: 1, expected=1)') for i in (1, 2, 3)])
    nbformat.write(nb, cell.path)
    plugin.pytest_runtest_teardown(cell, SimpleNamespace(path=cell.path))  # not its last cell: nothing checked
    with pytest.raises(AssertionError, match=r"05.1 x is 'fail'[\s\S]*05.2 x is 'missing'"):
        plugin.pytest_runtest_teardown(cell, None)
    log.write_text("")
    monkeypatch.setenv(LOG_ENV, str(log))
    for i in (1, 2, 3):
        check(f"05.{i} x", lambda: 1, expected=1, quiet=True)
    plugin.pytest_runtest_teardown(cell, None)  # all pass: no error
    assert plugin.checked == {cell.path.resolve()}
    items = [SimpleNamespace(name=n) for n in ("test_real_solutions_pass_every_check", "Cell 0", "test_b")]
    plugin.pytest_collection_modifyitems(None, None, items)
    assert [it.name for it in items] == ["Cell 0", "test_b", "test_real_solutions_pass_every_check"]
    plugin.pytest_unconfigure(None)
    assert not plugin.dir.exists()


# ---------------------------------------------------------------- the real lessons (slow)

def _lessons():
    return sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))


# The real student set runs once per lesson in tests/test_broken_lessons.py (with one technique broken).


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_real_solutions_pass_every_check(request):
    """Every exercise of every lesson passes with the instructor's solutions.

    Cheap path: under ``make test`` nbval runs each lesson with ``$LABKIT_CHECK_LOG`` pointing at a
    per-lesson log, and tests/conftest.py checks that log after the lesson's last cell, on whichever
    pytest-xdist worker ran it (a failure there is an error in that cell's teardown). Lessons this
    session does not give to nbval are graded here, in fast mode.
    """
    lessons = _lessons()
    if not lessons:
        pytest.skip("no lesson notebooks in notebooks/ yet")
    by_nbval = {Path(str(it.path)).resolve() for it in request.session.items if Path(str(it.path)).suffix == ".ipynb"}
    rest = [p for p in lessons if p.resolve() not in by_nbval]
    if not rest:
        pytest.skip(f"nbval runs all {len(lessons)} lessons in this session; their verdicts are checked after each")
    verdicts = {run.path: run.verdicts for run in grade(rest, fast=True, timeout=600).runs}
    problems = [f"{p.name}: {v.exercise} is '{v.status}': {v.message}"
                for p, vs in verdicts.items() for v in vs if v.status != "pass"]
    problems += [f"{p.name}: only {len(vs)} exercise(s)" for p, vs in verdicts.items() if len(vs) < 3]
    assert not problems, "\n".join(problems)
