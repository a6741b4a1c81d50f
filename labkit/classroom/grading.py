"""Run notebooks headless and collect every exercise's verdict: the engine of ``labkit grade``.

Each notebook runs in a fresh kernel (nbclient) with ``$LABKIT_CHECK_LOG`` pointing at its own
log file, so every ``labkit.checks.check`` call appends one JSON verdict there (pass / fail /
not done / error). Errors don't stop the run (``allow_errors``): one broken cell must not hide
the exercises after it. An exercise the notebook should have but that never reported (the
learner deleted the check, the kernel died, the notebook ran out of time) is "missing".
Only the instructor's check cells score: each verdict is tied to the cell that logged it (the
log's length before and after every cell), and an exercise's verdict is the last one logged by
the cell whose instructor source checks it - so a check a learner appends, copies or plants in
their solution earns nothing. One point per passed exercise; the report is a text table and a
CSV in long format (one row per exercise plus a TOTAL row per notebook) that a grade book or a
spreadsheet can pivot.

Used by ``labkit grade`` and by :mod:`labkit.classroom.course` (``labkit course``).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from labkit import _args
from labkit.checks import LOG_ENV, PASS, CheckResult
from labkit.classroom.student import (
    BEGIN_HIDDEN,
    BEGIN_SOLUTION,
    CODE_STUB,
    END_SOLUTION,
    check_notebook,
    exercise_names,
    read_notebook,
    student_cell_source,
)

MISSING = "missing"
_CHECK_CALL = re.compile(r"\bcheck\(")
CSV_COLUMNS = ("notebook", "exercise", "status", "points", "max_points", "message")


@dataclass
class NotebookRun:
    """What happened when one notebook ran: time, cells, errors and the verdicts of its checks."""

    path: Path
    seconds: float
    cells: int
    cells_run: int
    errors: list[str]
    verdicts: list[CheckResult]
    timed_out: bool = False
    kernel_died: bool = False
    nb: object = field(default=None, repr=False)

    def __post_init__(self):
        _args.fields(self)

    @property
    def ran_to_end(self) -> bool:
        return self.cells_run == self.cells and not (self.timed_out or self.kernel_died)

    @property
    def passed(self) -> int:
        return sum(v.status == PASS for v in self.verdicts)

    @property
    def state(self) -> str:
        if self.timed_out:
            return "timed out"
        if self.kernel_died:
            return "kernel died"
        return f"{len(self.errors)} cell error(s)" if self.errors else "ran to end"


def _error_text(cell) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename', 'Error')}: {out.get('evalue', '')}".strip()
    return None


def verdicts_from_log(log: str | os.PathLike, expected: Sequence[str]) -> list[CheckResult]:
    """The verdicts a ``$LABKIT_CHECK_LOG`` file holds: one per expected exercise, then any others.

    A check that ran twice counts once, with its last verdict; an expected exercise that never
    reported is "missing" (an absent log file means no check ran at all).
    """
    log = _args.path("log", log)
    expected = [_args.text(f"expected[{i}]", n) for i, n in enumerate(_args.sequence("expected", expected))]
    lines = log.read_text().splitlines() if log.exists() else []
    latest = {}
    for number, line in enumerate(lines, 1):
        if line.strip():
            v = _log_line(log, number, line)
            latest[v.exercise] = v
    gone = "the check never reported (deleted, or the notebook stopped before it)"
    return ([latest.get(n, CheckResult(n, MISSING, gone)) for n in expected]
            + [v for k, v in latest.items() if k not in expected])


def _log_line(log: Path, number: int, line: str) -> CheckResult:
    """One verdict of a check log; a line that is not one is a ValueError naming the file and line."""
    try:
        return CheckResult(**json.loads(line))
    except (ValueError, TypeError) as err:
        raise ValueError(f"log {str(log)!r}, line {number} is not a check verdict ({err}): {line[:80]!r}") from None


def run_notebook(path: str | os.PathLike, *, fast: bool = True, timeout: float = 600,
                 expected: Sequence[str] | None = None, env: dict[str, str] | None = None,
                 nb=None, source=None, kernel_name: str = "python3") -> NotebookRun:
    """Execute a notebook in a fresh kernel (in its own folder) and return a :class:`NotebookRun`.

    ``timeout`` bounds the whole notebook (seconds, kernel start included); ``expected`` names
    the exercises to report (default: those the notebook's own checks name); ``nb`` runs a
    modified copy of ``path`` (e.g. with the instructor's checks restored). ``source`` (the
    instructor's notebook) says which cells may report which exercise: the cells whose id is a
    source cell with checks, for the exercises that source cell checks; without it every cell
    may report the exercises its own checks name. The executed notebook, outputs included, is
    ``result.nb``.
    """
    path = _args.path("path", path)
    _args.boolean("fast", fast)
    _args.positive_float("timeout", timeout)
    _args.text("kernel_name", kernel_name)
    if expected is not None:
        _args.sequence("expected", expected, of=str)
    if env is not None:
        _args.mapping("env", env)
    nb = read_notebook(path) if nb is None else nb
    check_notebook("nb", nb)
    names = list(expected) if expected is not None else exercise_names(nb)
    graded = (instructor_cells(nb, source) if source is not None
              else {i: _names(c) for i, c in enumerate(nb.cells) if c.cell_type == "code"})
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp:
        log = Path(tmp) / "checks.jsonl"
        kernel_env = {**os.environ, "LABKIT_FAST": "1" if fast else "0", "LABKIT_STATIC_WIDGETS": "1",
                      **(env or {}), LOG_ENV: str(log)}
        start = time.perf_counter()
        deadline = start + timeout
        cell_log = _CellLog(log)
        client = NotebookClient(nb, kernel_name=kernel_name, allow_errors=True,
                                timeout_func=lambda cell: max(1, int(deadline - time.perf_counter())),
                                resources={"metadata": {"path": str(path.parent.resolve())}},
                                on_cell_execute=cell_log.start, on_cell_executed=cell_log.read)
        timed_out = died = False
        # the kernel process's own stdout/stderr (C-level warnings, crash messages) go to a file,
        # shown only if the kernel dies; what cells print reaches the notebook as usual
        with (Path(tmp) / "kernel.log").open("w+") as kernel_log:
            try:
                client.execute(env=kernel_env, stdout=kernel_log, stderr=kernel_log)
            except CellTimeoutError:
                timed_out = True
            except DeadKernelError:
                died = True
            kernel_log.seek(0)
            lines = [ln for ln in kernel_log.read().splitlines() if "without encryption" not in ln]
            last_words = "\n".join(lines)[-500:].strip()
        seconds = time.perf_counter() - start
        cell_log.read()  # what the cell that timed out or killed the kernel logged
        verdicts = cell_log.verdicts(graded, names)
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    errors = [f"cell {i}: {e}" for i, c in code if (e := _error_text(c))]
    if died:
        errors.append(f"the kernel died; its last output: {last_words or '(none)'}")
    return NotebookRun(path, seconds, len(code), sum(c.get("execution_count") is not None for _, c in code),
                       errors, verdicts, timed_out, died, nb)


class _CellLog:
    """Which cell logged each verdict: the check log's length when a cell starts and after it replied.

    Used as nbclient's ``on_cell_execute`` / ``on_cell_executed`` hooks; the kernel appends to
    the log synchronously inside ``check``, so a cell's lines are all there when it replies.
    """

    def __init__(self, path: Path):
        self.path, self.offset, self.cell = path, 0, None
        self.by_cell: dict[int, list[CheckResult]] = {}

    def start(self, cell=None, cell_index=None, **_):
        self.read()
        self.cell = cell_index

    def read(self, cell=None, cell_index=None, **_):
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                new = f.read()
            self.offset += len(new)
            lines = [CheckResult(**json.loads(line)) for line in new.decode().splitlines() if line.strip()]
            if lines and self.cell is not None:
                self.by_cell.setdefault(self.cell, []).extend(lines)
        self.cell = None

    def verdicts(self, graded: dict[int, list[str]], expected: Sequence[str]) -> list[CheckResult]:
        """One verdict per expected exercise: the last one its graded cell logged, else "missing"."""
        latest = {v.exercise: v for i in sorted(self.by_cell) for v in self.by_cell[i] if v.exercise in graded.get(i, ())}
        gone = "the check never reported (deleted, or the notebook stopped before it)"
        return [latest.get(n, CheckResult(n, MISSING, gone)) for n in expected]


def _names(cell) -> list[str]:
    """The exercises one code cell's checks name."""
    return exercise_names(nbformat.v4.new_notebook(cells=[cell]))


def instructor_cells(nb, source) -> dict[int, list[str]]:
    """``{cell index in nb: exercises it may report}``: the cells of ``nb`` whose id is a code cell
    of ``source`` with checks (hidden ones included), each with the names that source cell checks."""
    check_notebook("nb", nb)
    check_notebook("source", source)
    names = {c.get("id"): _names(c) for c in source.cells if c.cell_type == "code" and c.get("id")}
    return {i: names[c.get("id")] for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and names.get(c.get("id"))}


def splice_solutions(source: str, submitted: str) -> str:
    """The instructor's cell ``source`` with each solution block holding the learner's code for it.

    The learner edited the student version of the cell, where each block is a two-line stub.
    The lines they kept (aligned with :class:`difflib.SequenceMatcher`) anchor each stub: what
    stands between the kept lines around a stub is their code for that block. Everything else
    - the check calls, the hidden tests - is the instructor's, so an edited or appended check
    line never runs.
    """
    _args.text("source", source, non_empty=False)
    _args.text("submitted", submitted, non_empty=False)
    student, mine = student_cell_source(source).split("\n"), submitted.split("\n")
    kept = {}  # index in student -> index in mine
    for i, j, n in SequenceMatcher(None, student, mine, autojunk=False).get_matching_blocks():
        kept.update({i + k: j + k for k in range(n)})
    stubs = [i for i in range(len(student) - 1)
             if (student[i].strip(), student[i + 1].strip()) == CODE_STUB]
    blocks = []
    for a in stubs:
        left = max((j + 1 for i, j in kept.items() if i < a), default=0)
        right = min((j for i, j in kept.items() if i >= a + len(CODE_STUB)), default=len(mine))
        blocks.append([ln for ln in mine[left:max(left, right)] if ln.strip() not in (BEGIN_SOLUTION, END_SOLUTION)])
    out, inside = [], False
    for line in source.split("\n"):
        if line.strip() == BEGIN_SOLUTION:
            out += [line] + blocks.pop(0)
            inside = True
        elif line.strip() == END_SOLUTION:
            inside = False
        if not inside:
            out.append(line)
    return "\n".join(out)


def restore_checks(submitted, source):
    """The submitted notebook (a copy) with the instructor's checks and hidden tests back in place.

    Cells are matched by cell id (student copies keep the source's ids). A source cell with a
    solution gets the learner's code spliced into its solution blocks (:func:`splice_solutions`);
    any other source cell with checks or hidden tests replaces the submitted one. Either way the
    checks that run are the instructor's.
    """
    check_notebook("submitted", submitted)
    check_notebook("source", source)
    out = copy.deepcopy(submitted)
    by_id = {c.get("id"): c for c in source.cells if c.get("id") and c.cell_type == "code"}
    for cell in out.cells:
        ref = by_id.get(cell.get("id"))
        if ref is None or cell.cell_type != "code":
            continue
        if BEGIN_SOLUTION in ref.source:
            cell.source = splice_solutions(ref.source, cell.source)
        elif BEGIN_HIDDEN in ref.source or _CHECK_CALL.search(ref.source):
            cell.source = ref.source
    return out


@dataclass
class GradeReport:
    """The verdicts of every graded notebook; ``table()`` for people, ``write_csv()`` for a grade book."""

    runs: list[NotebookRun]

    def __post_init__(self):
        _args.fields(self)

    @property
    def points(self) -> int:
        return sum(r.passed for r in self.runs)

    @property
    def max_points(self) -> int:
        return sum(len(r.verdicts) for r in self.runs)

    def rows(self) -> list[dict]:
        rows = []
        for r in self.runs:
            rows += [dict(notebook=str(r.path), exercise=v.exercise, status=v.status, points=int(v.passed),
                          max_points=1, message=v.message) for v in r.verdicts]
            rows.append(dict(notebook=str(r.path), exercise="TOTAL", status=r.state, points=r.passed,
                             max_points=len(r.verdicts), message="; ".join(r.errors)[:300]))
        return rows

    def write_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows())
        return path

    def table(self) -> str:
        width = max([len("notebook")] + [len(str(r.path)) for r in self.runs])
        lines = [f"{'notebook':<{width}}  {'exercise':<28} {'status':<10} points"]
        for r in self.runs:
            lines += [f"{str(r.path):<{width}}  {v.exercise[:28]:<28} {v.status:<10} {int(v.passed)}/1"
                      for v in r.verdicts]
            lines.append(f"{str(r.path):<{width}}  {'total (' + r.state + ')':<39} {r.passed}/{len(r.verdicts)}"
                         f"   {r.seconds:.0f} s")
            lines += [f"{'':<{width}}    ! {e[:100]}" for e in r.errors]
        lines.append(f"{'TOTAL':<{width}}  {'':<39} {self.points}/{self.max_points}")
        return "\n".join(lines)


def grade(notebooks: Sequence[str | os.PathLike], *, source_dir: str | os.PathLike | None = None,
          fast: bool = True, timeout: float = 600, feedback_dir: str | os.PathLike | None = None) -> GradeReport:
    """Run each learner's notebook headless and report every exercise's verdict.

    ``fast`` runs with ``LABKIT_FAST=1`` (the default: grading needs the checks, not the full
    training runs); ``timeout`` is per notebook, in seconds. With ``source_dir`` (the instructor's
    notebooks), the exercises expected are the source's and its check cells and hidden tests are
    restored before running (:func:`restore_checks`). ``feedback_dir`` receives each executed
    notebook, outputs included, as ``feedback_dir/<the notebook's folder>/<name>.ipynb``, to hand
    back to the learner.
    """
    what = "a list of notebook paths (not a single path)"
    paths = [_args.path(f"notebooks[{i}]", p) for i, p in
             enumerate(_args.sequence("notebooks", notebooks, non_empty=True, what=what))]
    _args.boolean("fast", fast)
    _args.positive_float("timeout", timeout)
    if source_dir is not None and not _args.path("source_dir", source_dir).is_dir():
        raise ValueError(f"source_dir must be a directory, got {str(source_dir)!r}")
    if feedback_dir is not None:
        _args.path("feedback_dir", feedback_dir)
    notebooks = [read_notebook(p, name=f"notebooks[{i}]") for i, p in enumerate(paths)]  # all readable first
    runs = []
    for p, nb in zip(paths, notebooks):
        expected, ref = None, None
        if source_dir is not None:
            ref_path = Path(source_dir) / p.name
            if not ref_path.is_file():
                raise ValueError(f"source_dir has no {p.name} to grade {str(p)!r} against")
            ref = read_notebook(ref_path, name="source_dir")
            nb, expected = restore_checks(nb, ref), exercise_names(ref)
        runs.append(run_notebook(p, nb=nb, fast=fast, timeout=timeout, expected=expected, source=ref))
        if feedback_dir is not None:  # feedback/<learner's folder>/<notebook>: names repeat across learners
            target = Path(feedback_dir) / p.resolve().parent.name / p.name
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(runs[-1].nb, target)
    return GradeReport(runs)
