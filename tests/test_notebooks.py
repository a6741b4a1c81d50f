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
