"""Notebook housekeeping: strip outputs, refresh the outputs nbval checks, run, and lint lessons.

Lesson notebooks are committed without outputs, except the cells whose output nbval compares
(cells that start with ``# NBVAL_CHECK_OUTPUT``). ``labkit nb refresh FILE`` runs a notebook
(in fast mode) and keeps exactly those outputs; ``labkit nb strip FILE`` clears everything
else; ``labkit nb lint`` checks the course's notebook rules (see :func:`lint`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat

from labkit import _args
from labkit.classroom.student import check_notebook, read_notebook

CHECK_MARK = "NBVAL_CHECK_OUTPUT"
FRONT_MATTER = ("learning goals", "prerequisites", "runs on", "time")
FORBIDDEN = {
    r"^\s*[!%]\s*pip\s+install": "installs packages from a cell (use the environment instead)",
    r"\bimport\s+\*": "uses `import *`",
    r"sys\.path\.(append|insert)": "changes sys.path",
    r"filterwarnings\(\s*['\"]ignore": "silences all warnings",
    r"\.cuda\(\)": "hard-codes .cuda() (use labkit.devices.get_device)",
}
SOLUTION_BEGIN, SOLUTION_END = "### BEGIN SOLUTION", "### END SOLUTION"


def read(path: str | os.PathLike) -> nbformat.NotebookNode:
    """The notebook at ``path``; a missing, corrupt or non-notebook file is a ValueError naming it."""
    return read_notebook(path)


def is_checked(cell) -> bool:
    """True for code cells whose output nbval compares."""
    _args.instance("cell", cell, nbformat.NotebookNode, "a notebook cell (nbformat.NotebookNode)")
    return cell.cell_type == "code" and (CHECK_MARK in cell.source or "nbval-check-output" in cell.metadata.get("tags", []))


def strip_outputs(nb, *, keep_checked: bool = True):
    """Clear outputs and execution counts in place, keeping checked cells' outputs if asked."""
    check_notebook("nb", nb)
    _args.boolean("keep_checked", keep_checked)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        if keep_checked and is_checked(cell):
            continue
        cell.outputs = []
        cell.execution_count = None
    nb.metadata.pop("widgets", None)
    return nb


def execute(nb, *, cwd: str | os.PathLike, timeout: int = 600, fast: bool = True, env: dict | None = None,
            allow_errors: bool = False):
    """Run every cell of ``nb`` in a fresh kernel (in place) with nbclient; return it."""
    from nbclient import NotebookClient

    check_notebook("nb", nb)  # all checked before a kernel starts
    if not _args.path("cwd", cwd).is_dir():
        raise ValueError(f"cwd must be a directory, got {str(cwd)!r}")
    _args.positive_float("timeout", timeout)
    _args.boolean("fast", fast)
    _args.boolean("allow_errors", allow_errors)
    if env is not None:
        for k, v in _args.mapping("env", env).items():
            _args.text(f"env[{k!r}]", v, non_empty=False)

    old = {k: os.environ.get(k) for k in ("LABKIT_FAST", "LABKIT_STATIC_WIDGETS", *(env or {}))}
    os.environ["LABKIT_FAST"] = "1" if fast else "0"
    os.environ.setdefault("LABKIT_STATIC_WIDGETS", "0")
    os.environ.update(env or {})
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                                resources={"metadata": {"path": str(cwd)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def refresh(path: str | os.PathLike, *, timeout: int = 600) -> None:
    """Run ``path`` in fast mode and save it with only the checked cells' outputs."""
    nb = read(path)
    _args.positive_float("timeout", timeout)
    execute(nb, cwd=Path(path).parent, timeout=timeout, fast=True)
    nbformat.write(strip_outputs(nb), path)


def lint(nb) -> list[str]:
    """The course's rules for a lesson notebook; returns the problems found (empty = fine).

    Front matter first (learning goals, prerequisites, runs on, time); no forbidden patterns;
    at least three checked exercises with solution markers; a final code cell of asserts;
    outputs stripped except in checked cells; at least one checked cell.
    """
    check_notebook("nb", nb)
    problems = []
    if not nb.cells or nb.cells[0].cell_type != "markdown":
        problems.append("the first cell must be markdown front matter")
    else:
        first = nb.cells[0].source.lower()
        problems += [f"front matter lacks '{w}'" for w in FRONT_MATTER if w not in first]
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        for pattern, why in FORBIDDEN.items():
            if re.search(pattern, cell.source, flags=re.M):
                problems.append(f"code cell {i} {why}")
        if (cell.outputs or cell.execution_count) and not is_checked(cell):
            problems.append(f"code cell {i} has outputs committed (strip them: labkit nb strip)")
    text = "\n".join(c.source for c in code)
    n_solutions = text.count(SOLUTION_BEGIN)
    if n_solutions != text.count(SOLUTION_END):
        problems.append("unbalanced solution markers")
    n_checks = len(re.findall(r"\bcheck\(\s*['\"]", text))
    if n_checks < 3 or n_solutions < 3:
        problems.append(f"needs >= 3 checked exercises with solution markers (found {n_checks} checks, {n_solutions} solutions)")
    if not code or "assert" not in code[-1].source:
        problems.append("the last code cell must assert the lesson's results")
    if not any(is_checked(c) for c in code):
        problems.append(f"no cell is marked {CHECK_MARK}: nbval would only catch exceptions")
    return problems


def main(argv: list[str]) -> int:
    """``labkit nb strip|refresh|lint FILE...``"""
    argv = _args.sequence("argv", argv, of=str, what="a list of command-line words")
    if len(argv) < 2 or argv[0] not in ("strip", "refresh", "lint"):
        print("usage: labkit nb strip|refresh|lint NOTEBOOK...")
        return 2
    status = 0
    for path in argv[1:]:
        if argv[0] == "strip":
            nbformat.write(strip_outputs(read(path)), path)
        elif argv[0] == "refresh":
            refresh(path)
        else:
            for problem in lint(read(path)):
                print(f"{path}: {problem}")
                status = 1
    return status
