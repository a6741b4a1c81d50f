"""Lesson times from one table: ``labkit course`` writes them, ``labkit times`` copies them out.

docs/lesson_times.json is the only place a lesson's run time is typed: ``labkit course`` (full,
``make course``) and ``labkit course --fast`` record each lesson that ran ok there, with the
machine and date of the run; ``labkit times`` then rewrites every notebook's ``**Time**``
paragraph and the lesson table of docs/INSTRUCTORS.md from it (run times, session times and the
exercises column, which it reads from the notebooks' ``check`` calls). ``labkit times --check``
only reports what is out of date; tests/test_lesson_times.py fails when anything is.

The file::

    {"about": "...", "seeded": "(while some times were copied from elsewhere: from where)",
     "lessons": {"00": {"notebook": "00_welcome_and_setup.ipynb", "session": "45 min",
                        "full": {"seconds": 24.0, "machine": "...", "date": "2026-12-02", "source": "labkit course"},
                        "fast": null}, ...}}

``session`` is a planning estimate edited by hand (how long a learner spends); ``full`` and
``fast`` are measured (``null``: not measured yet).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import nbformat
import torch

from labkit import _args, devices
from labkit.classroom.grading import NotebookRun
from labkit.classroom.student import exercise_names, read_notebook

MODES = ("full", "fast")
TARGET_MINUTES = 20  # the whole course, full version, on a 2-core laptop CPU
TIME = re.compile(r"\*\*Time\*\*:.*?(?=\n\s*\n|\Z)", re.S)
RUN_COLUMN, SESSION_COLUMN, EXERCISE_COLUMN = "run time, 2-core CPU", "session time", "exercises"


def clock(seconds: float) -> str:
    """``m:ss`` (61.4 -> '1:01')."""
    seconds = round(_args.non_negative_float("seconds", seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def read_times(path: str | os.PathLike) -> dict:
    """The lesson-times file at ``path`` (see the module doc)."""
    path = _args.path("path", path)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} is not a file: write it with `labkit course`")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data.get("lessons"), dict):
        raise ValueError(f"{str(path)!r} has no 'lessons' table")
    return data


def record_runs(path: str | os.PathLike, runs: Sequence[NotebookRun], *, fast: bool, machine: str | None = None,
                date: str | None = None) -> list[str]:
    """Write the run time of every lesson in ``runs`` into the file at ``path`` (created if
    missing), under ``fast`` or ``full``; other lessons and the other mode are kept. Pass only
    runs that went well (``labkit course`` passes those whose verdict is ok). ``machine``
    defaults to this CPU's name, cores and torch version, ``date`` to today (UTC). Returns the
    lesson numbers recorded."""
    path = _args.path("path", path)
    _args.sequence("runs", runs, of=NotebookRun, what="a list of NotebookRun")
    _args.boolean("fast", fast)
    if machine is None:
        cpu = devices.describe_device("cpu")
        machine = f"{cpu.name}, {cpu.cores} cores, torch {torch.__version__}"
    date = date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    data = read_times(path) if path.is_file() else {"about": __doc__.split("\n\n")[0], "lessons": {}}
    recorded = []
    for run in runs:
        number = run.path.name[:2]
        entry = data["lessons"].setdefault(number, {"notebook": run.path.name, "session": None, "full": None,
                                                    "fast": None})
        entry["fast" if fast else "full"] = {"seconds": round(run.seconds, 1), "machine": machine, "date": date,
                                             "source": "labkit course" + (" --fast" if fast else "")}
        recorded.append(number)
    data["lessons"] = dict(sorted(data["lessons"].items()))
    if not any(str((e.get(m) or {}).get("source", "")).startswith("seeded") for e in data["lessons"].values() for m in MODES):
        data.pop("seeded", None)  # the note on times copied from elsewhere, once none is left
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return recorded


def time_paragraph(entry: dict) -> str:
    """A notebook's ``**Time**`` paragraph, made from its entry of the lesson-times file."""
    _args.instance("entry", entry, dict)
    session = f"about {entry['session']} to work through (a planning estimate)" if entry.get("session") else \
        "no planning estimate yet"
    full, fast = entry.get("full"), entry.get("fast")
    if full is None:
        run = "Run All has not been timed yet (`make course` measures it)"
    else:
        run = f"Run All took {clock(full['seconds'])} (m:ss) on {full['machine']}"
        run += f", {full['date']}" if full.get("date") else ""
        run += f" ({full['source']})"
    run += f"; {clock(fast['seconds'])} with `LABKIT_FAST=1`" if fast else ""
    return f"**Time**: {session}. {run}. Numbers from docs/lesson_times.json; yours will differ."


def _row_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def instructors_table(text: str, data: dict, exercises: dict[str, list[str]]) -> str:
    """``text`` (docs/INSTRUCTORS.md) with the lesson table's run time, session time and exercises
    columns and its total row rewritten from ``data`` and ``exercises`` ({number: check names})."""
    _args.text("text", text)
    _args.mapping("data", data)
    _args.mapping("exercises", exercises)
    lines = text.split("\n")
    head = next((i for i, line in enumerate(lines) if line.startswith("|") and RUN_COLUMN in line), None)
    if head is None:
        raise ValueError(f"no table with a {RUN_COLUMN!r} column found")
    header = _row_cells(lines[head])
    col = {name: next(i for i, h in enumerate(header) if h.startswith(name))
           for name in (RUN_COLUMN, SESSION_COLUMN, EXERCISE_COLUMN)}
    total, i = 0.0, head + 2
    while i < len(lines) and lines[i].startswith("|"):
        cells = _row_cells(lines[i])
        entry = data["lessons"].get(cells[0])
        if entry is not None:
            full = entry.get("full")
            total += full["seconds"] if full else 0.0
            cells[col[RUN_COLUMN]] = clock(full["seconds"]) if full else "not measured"
            cells[col[SESSION_COLUMN]] = entry.get("session") or "?"
            names = [n.split(" ", 1)[1] for n in exercises.get(cells[0], [])]
            cells[col[EXERCISE_COLUMN]] = f"{len(names)}: {', '.join(names)}"
        elif "**total**" in cells:
            missing = [n for n, e in data["lessons"].items() if not e.get("full")]
            cells[col[RUN_COLUMN]] = (f"**{clock(total)}**" + (f" (without {', '.join(missing)})" if missing else "")
                                      + f" (target: under {TARGET_MINUTES} min)")
        lines[i] = "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"
        i += 1
    return "\n".join(lines)


def sync(notebooks: Sequence[str | os.PathLike], times_file: str | os.PathLike, instructors: str | os.PathLike, *,
         write: bool = True) -> list[Path]:
    """Rewrite the ``**Time**`` paragraph of each lesson in ``notebooks`` (the paths that
    ``course.lessons`` lists) and docs/INSTRUCTORS.md's lesson table from ``times_file``;
    return the files that were out of date (``write=False``: only report them)."""
    _args.boolean("write", write)
    data, guide = read_times(_args.path("times_file", times_file)), _args.path("instructors", instructors)
    changed, exercises = {}, {}  # everything is checked before anything is written
    for path in [_args.path(f"notebooks[{i}]", p) for i, p in enumerate(_args.sequence("notebooks", notebooks))]:
        number = path.name[:2]
        if number not in data["lessons"]:
            raise ValueError(f"{str(times_file)!r} has no entry for lesson {number} ({path.name})")
        nb = read_notebook(path)
        exercises[number] = exercise_names(nb)
        front = nb.cells[0]
        found = TIME.search(front.source)
        if found is None:
            raise ValueError(f"{path.name}: its first cell has no **Time**: paragraph")
        new = front.source[:found.start()] + time_paragraph(data["lessons"][number]) + front.source[found.end():]
        if new != front.source:
            front.source = new
            changed[path] = nb
    text = guide.read_text(encoding="utf-8")
    new_text = instructors_table(text, data, exercises)
    if write:
        for path, nb in changed.items():
            nbformat.write(nb, path)
        if new_text != text:
            guide.write_text(new_text, encoding="utf-8")
    return list(changed) + ([guide] if new_text != text else [])
