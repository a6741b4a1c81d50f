"""Classroom tooling: student versions of the lessons, and headless grading of learners' work.

    labkit student [--src notebooks/] [--out student/]     -> student.build_student
    labkit grade NOTEBOOK... [--csv FILE] [--source DIR]    -> grading.grade

The source notebooks are the instructor's version: each exercise is a function whose body sits
between nbgrader's ``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers, followed by a
``labkit.checks.check(...)`` call. :mod:`.student` turns solutions into
``raise NotImplementedError`` stubs; :mod:`.grading` runs notebooks with ``$LABKIT_CHECK_LOG``
set and collects the verdicts. docs/INSTRUCTORS.md is the instructor's guide.

Why our own ~300 lines and not nbgrader or otter-grader
-------------------------------------------------------
Both were weighed (their docs, pyproject files and issue trackers):

* **nbgrader** grades "autograder cells": a cell that raises scores 0, one that doesn't scores
  full marks. Our checks deliberately never raise (a stub reports "not done" so the rest of the
  notebook still runs), so nbgrader would give every learner full marks unless every check were
  rewritten as bare asserts - losing the hints. It also needs per-cell nbgrader metadata
  (set with its toolbar), a course directory layout (``source/ release/ submitted/ autograded/``)
  and an SQLite gradebook (SQLAlchemy + alembic migrations), and pulls in ``notebook>=7``,
  rapidfuzz and its own JupyterLab extension, whose version coupling with JupyterLab has broken
  installs (jupyter/nbgrader#1948: 0.9.4's extension refused JupyterLab 4.3). We use only its
  *solution-marker convention*, so an instructor who prefers nbgrader can still run
  ``nbgrader generate_assignment`` on our sources.
* **otter-grader** wants its own notebook format (``# BEGIN QUESTION`` blocks and test files per
  question, checked through ``otter.Notebook().check``), grades in Docker containers by default,
  and depends on pandas, jupytext, dill, python-on-whales, ipylab and more.

What we need is small: strip solutions (a line-based rewrite), run a notebook with nbclient
(already a dependency, used by ``labkit nb refresh``) and read the JSON lines our checks
already write. That keeps one notebook format for learners, CI (nbval) and grading, adds no
dependency, needs no database or config, and works offline.
"""

from labkit.classroom.grading import (
    GradeReport,
    NotebookRun,
    grade,
    restore_checks,
    run_notebook,
    verdicts_from_log,
)
from labkit.classroom.student import (
    build_student,
    exercise_names,
    make_student,
    student_cell_source,
)

__all__ = ["GradeReport", "NotebookRun", "build_student", "exercise_names", "grade", "make_student",
           "restore_checks", "run_notebook", "student_cell_source", "verdicts_from_log"]
