"""labkit.classroom.nbtools: stripping keeps exactly the checked outputs; lint catches each broken rule."""

from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from labkit.classroom import nbtools as N

FRONT = "# Lesson\nLearning goals: x. Prerequisites: y. Runs on: CPU. Time: 1 min."
EXERCISE = "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\ncheck('{k}', f, expected=1)"


def good_notebook():
    cells = [new_markdown_cell(FRONT), new_code_cell("from labkit.checks import check")]
    cells += [new_code_cell(EXERCISE.format(k=k)) for k in ("1", "2", "3")]
    checked = new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(2)", outputs=[new_output("stream", name="stdout", text="2\n")])
    cells += [checked, new_code_cell("assert 1 + 1 == 2")]
    return new_notebook(cells=cells)


def test_good_notebook_passes_lint():
    assert N.lint(good_notebook()) == []


@pytest.mark.parametrize("mutate, problem", [
    (lambda nb: nb.cells.pop(0), "first cell"),
    (lambda nb: setattr(nb.cells[0], "source", "# Lesson"), "learning goals"),
    (lambda nb: nb.cells.insert(1, new_code_cell("!pip install torch")), "installs packages"),
    (lambda nb: nb.cells.insert(1, new_code_cell("from torch import *")), "import *"),
    (lambda nb: nb.cells.insert(1, new_code_cell("import sys\nsys.path.append('..')")), "sys.path"),
    (lambda nb: nb.cells.insert(1, new_code_cell("x = y.cuda()")), ".cuda()"),
    (lambda nb: nb.cells.pop(2), ">= 3 checked exercises"),
    (lambda nb: setattr(nb.cells[-1], "source", "print('done')"), "last code cell"),
    (lambda nb: nb.cells[1].outputs.append(new_output("stream", name="stdout", text="x")), "outputs committed"),
    (lambda nb: setattr(nb.cells[5], "source", "print(2)"), "NBVAL_CHECK_OUTPUT"),
])
def test_lint_catches(mutate, problem):
    nb = good_notebook()
    mutate(nb)
    assert any(problem in p for p in N.lint(nb)), N.lint(nb)


def test_strip_keeps_only_checked_outputs(tmp_path):
    nb = good_notebook()
    nb.cells[1].outputs = [new_output("stream", name="stdout", text="noise")]
    nb.cells[1].execution_count = 3
    N.strip_outputs(nb)
    assert nb.cells[1].outputs == [] and nb.cells[1].execution_count is None
    assert nb.cells[5].outputs[0]["text"] == "2\n"
    assert N.strip_outputs(good_notebook(), keep_checked=False).cells[5].outputs == []


def test_execute_and_refresh(tmp_path):
    nb = new_notebook(cells=[new_code_cell("import os\nprint(os.environ['LABKIT_FAST'])"),
                             new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(6 * 7)")])
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    N.refresh(path)
    out = N.read(path)
    assert out.cells[0].outputs == []
    assert out.cells[1].outputs[0]["text"] == "42\n"
    ran = N.execute(N.read(path), cwd=tmp_path, fast=False)
    assert ran.cells[0].outputs[0]["text"] == "0\n"


def test_read_and_main_bad_input(tmp_path, capsys):
    with pytest.raises(ValueError, match="not a notebook"):
        N.read(tmp_path / "x.txt")
    assert N.main(["bogus"]) == 2
    path = tmp_path / "n.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("1")]), path)
    assert N.main(["lint", str(path)]) == 1 and "first cell" in capsys.readouterr().out
