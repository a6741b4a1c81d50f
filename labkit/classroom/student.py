"""Student versions of lesson notebooks: solutions become stubs, outputs go, checks stay.

A source (instructor) notebook marks the learner's part with nbgrader's markers::

    def sparsity(mask):                                 def sparsity(mask):
        \"\"\"Fraction of zeros in ``mask``.\"\"\"            \"\"\"Fraction of zeros in ``mask``.\"\"\"
        ### BEGIN SOLUTION                       ->         # YOUR CODE HERE
        return 1 - mask.float().mean().item()               raise NotImplementedError
        ### END SOLUTION

The stub takes the indentation of the ``### BEGIN SOLUTION`` line, so the signature and the
docstring above it stay as they were and the cell still compiles (checked here: a stub that
would not compile is an error, as is a solution at the top level of a cell, which would crash
the student's notebook instead of letting ``labkit.checks.check`` report "not done").
In markdown cells the solution becomes ``YOUR ANSWER HERE``. Blocks between
``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` are removed from the student copy (their
checks only run when an instructor grades with the source notebooks, see
:func:`labkit.classroom.grading.grade`). Cell ids are kept, so grading can match cells.

Used by ``labkit student`` (``make student``); docs/INSTRUCTORS.md describes the workflow.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import nbformat

from labkit import _args

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError")
MARKDOWN_STUB = "YOUR ANSWER HERE"
_CHECK_NAME = re.compile(r"""\bcheck\(\s*(?:exercise\s*=\s*)?(['"])(.+?)\1""")


def read_notebook(path: str | os.PathLike, *, name: str = "path") -> nbformat.NotebookNode:
    """The notebook at ``path`` (nbformat 4); a missing, corrupt or non-notebook file is a
    ValueError naming ``name`` and the file, never a bare JSON or schema error."""
    p = _args.path(name, path)
    if p.suffix != ".ipynb" or not p.is_file():
        raise ValueError(f"{name}: not a notebook file: {str(p)!r}")
    try:
        return nbformat.read(p, as_version=4)
    except Exception as err:  # noqa: BLE001 - NotJSONError, jsonschema's ValidationError, UnicodeDecodeError, ...
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"{name}: {str(p)!r} is not a readable notebook ({why})") from None


def check_notebook(name: str, nb) -> None:
    """TypeError unless ``nb`` is an nbformat notebook (``name`` says which argument)."""
    _args.text("name", name)
    if not isinstance(nb, nbformat.NotebookNode) or not hasattr(nb, "cells"):
        raise TypeError(f"{name} must be a notebook (nbformat.NotebookNode), got {type(nb).__name__}")


def exercise_names(nb) -> list[str]:
    """The exercise names of every ``check("NN.k name", ...)`` call in ``nb``'s code cells, in order."""
    check_notebook("nb", nb)
    names: list[str] = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            names += [m.group(2) for m in _CHECK_NAME.finditer(cell.source) if m.group(2) not in names]
    return names


def _replace_blocks(lines: list[str], begin: str, end: str, stub, where: str) -> list[str]:
    """Replace each ``begin``..``end`` block of ``lines`` by ``stub(indent)`` (a list of lines)."""
    out: list[str] = []
    inside = None  # indentation of the open block's BEGIN line
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if text == begin:
            if inside is not None:
                raise ValueError(f"{where}, line {n}: '{begin}' inside another block")
            inside = line[: len(line) - len(line.lstrip())]
            out += stub(inside)
        elif text == end:
            if inside is None:
                raise ValueError(f"{where}, line {n}: '{end}' without '{begin}'")
            inside = None
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise ValueError(f"{where}: '{begin}' is never closed by '{end}'")
    return out


def _compiles(source: str) -> bool:
    """True when ``source`` (IPython syntax: magics allowed) is valid Python."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        compile(TransformerManager().transform_cell(source), "<cell>", "exec")
    except SyntaxError:
        return False
    return True


def student_cell_source(source: str, *, cell_type: str = "code", where: str = "cell") -> str:
    """The student version of one cell's source (see the module docstring for the rules)."""
    _args.text("source", source, non_empty=False)
    _args.choice("cell_type", cell_type, ("code", "markdown", "raw"))
    lines = source.split("\n")
    if cell_type == "code":
        if any(ln.strip() == BEGIN_SOLUTION and not ln[:1].isspace() for ln in lines):
            raise ValueError(f"{where}: a solution at the top level of a cell would crash the student's "
                             "notebook; put the learner's code inside a function")
        lines = _replace_blocks(lines, BEGIN_SOLUTION, END_SOLUTION,
                                lambda ind: [ind + s for s in CODE_STUB], where)
    else:
        lines = _replace_blocks(lines, BEGIN_SOLUTION, END_SOLUTION, lambda ind: [ind + MARKDOWN_STUB], where)
    lines = _replace_blocks(lines, BEGIN_HIDDEN, END_HIDDEN, lambda ind: [], where)
    out = "\n".join(lines)
    if cell_type == "code" and out != source and _compiles(source) and not _compiles(out):
        raise ValueError(f"{where}: the student version does not compile:\n{out}")
    return out


def make_student(nb, *, name: str = "notebook"):
    """Return the student version of ``nb`` (a copy): stubs for solutions, no hidden tests, no outputs."""
    check_notebook("nb", nb)
    _args.text("name", name)
    out = copy.deepcopy(nb)
    for i, cell in enumerate(out.cells):
        cell.source = student_cell_source(cell.source, cell_type=cell.cell_type, where=f"{name}, cell {i}")
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
    out.metadata.pop("widgets", None)
    out.metadata["labkit"] = {"version": "student"}
    return out


def _inside(path: Path, parent: Path) -> bool:
    path, parent = path.resolve(), parent.resolve()
    return path == parent or parent in path.parents


def build_student(src_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write the student version of every ``src_dir/*.ipynb`` to ``out_dir``; return the new paths.

    ``out_dir`` is created if needed and must not be ``src_dir`` or inside it (the copies would
    overwrite the solutions, or be collected by nbval as lessons).
    """
    src, out = _args.path("src_dir", src_dir), _args.path("out_dir", out_dir)
    if not src.is_dir():
        raise ValueError(f"src_dir must be a directory of notebooks, got {str(src)!r}")
    sources = sorted(src.glob("*.ipynb"))
    if not sources:
        raise ValueError(f"src_dir {str(src)!r} holds no .ipynb notebooks")
    if _inside(out, src):
        raise ValueError(f"out_dir {str(out)!r} must not be src_dir {str(src)!r} or inside it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a directory")
    students = [make_student(read_notebook(p, name="src_dir"), name=p.name) for p in sources]  # all or nothing
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for p, nb in zip(sources, students):
        nbformat.write(nb, out / p.name)
        written.append(out / p.name)
    return written
