"""The ``labkit`` command line.

    labkit doctor            versions, devices, threads, bf16/int8 support, completeness
    labkit bench [--quick]   matmul GFLOP/s per device, peak estimate, elementwise bandwidth
    labkit nb strip|refresh|lint NOTEBOOK...   notebook housekeeping (labkit.classroom.nbtools)
    labkit student [--src notebooks/] [--out student/]   the student set (labkit.classroom)
    labkit grade NOTEBOOK... [--csv FILE] [--source DIR]   grade learners' notebooks headless
    labkit course [--fast] [--out course-run/] [NAME...]   run every lesson as a learner would
    labkit times [--check]   copy docs/lesson_times.json into the notebooks' Time lines and docs/INSTRUCTORS.md

Each sub-command lives in its own module; this file only parses arguments and dispatches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit code 2, not a usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _doctor(args) -> int:
    from labkit.doctor import doctor_report, missing_required

    print(doctor_report())
    return 1 if missing_required() else 0


def _bench(args) -> int:
    import torch

    from labkit.devices import available_devices
    from labkit.hardware import cpu_peak_gflops, elementwise_gbps, matmul_sweep

    sizes = (128, 512, 1024) if args.quick else (128, 256, 512, 1024, 2048)
    peak = cpu_peak_gflops()
    print(peak, "\n")
    print(f"{'device':<8} {'dtype':<9} {'n':>6} {'ms':>9} {'GFLOP/s':>9}")
    for dev in available_devices():
        dtypes = (torch.float32, torch.bfloat16) if not args.quick else (torch.float32,)
        for row in matmul_sweep(sizes, dtypes, device=dev, min_run_time=0.1 if args.quick else 0.3):
            print(f"{row['device']:<8} {row['dtype']:<9} {row['n']:>6} {row['seconds'] * 1e3:>9.3f} {row['gflops']:>9.1f}")
        bw = elementwise_gbps(1 << 24, device=dev, min_run_time=0.1)
        print(f"{dev:<8} elementwise add of 16M floats: {bw['gbps']:.1f} GB/s\n")
    best = max(r["gflops"] for r in matmul_sweep((sizes[-1],), device="cpu", min_run_time=0.2))
    print(f"cpu achieved / peak: {best:.0f} / {peak.gflops:.0f} GFLOP/s = {best / peak.gflops:.0%}")
    return 0


def _nb(args) -> int:
    from labkit.classroom.nbtools import main as nb_main

    try:
        return nb_main([args.action, *args.notebooks])
    except (ValueError, OSError) as err:
        return _user_error("nb", err)


def _user_error(command: str, err: Exception) -> int:
    """A user's mistake: one line on stderr, exit code 2, no traceback."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"labkit {command}: error: {first}", file=sys.stderr)
    return 2


def _student(args) -> int:
    from labkit.classroom import build_student

    try:
        written = build_student(args.src, args.out)
    except ValueError as err:
        return _user_error("student", err)
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} student notebook(s) in {args.out}: solutions replaced by stubs, outputs cleared")
    return 0


def _grade(args) -> int:
    from labkit.classroom import grade

    try:
        report = grade(args.notebooks, source_dir=args.source, fast=not args.full, timeout=args.timeout,
                       feedback_dir=args.feedback)
    except ValueError as err:
        return _user_error("grade", err)
    print(report.table())
    if args.csv:
        print(f"wrote {report.write_csv(args.csv)}")
    return 0


def _course(args) -> int:
    from labkit.classroom.course import run_course, verdict

    try:
        runs = run_course(args.notebooks, args.out, fast=args.fast, timeout=args.timeout, names=args.names,
                          times_file=_times_file(args))
    except ValueError as err:
        return _user_error("course", err)
    print(f"HTML copies and executed notebooks in {args.out}")
    return 0 if all(verdict(r) == "ok" for r in runs) else 1


def _times_file(args):
    """``--times``, else docs/lesson_times.json beside the notebooks folder if that docs/ exists
    (a copy of the lessons elsewhere records nothing); '' records nothing."""
    if args.times is not None:
        return args.times or None
    docs = Path(args.notebooks).resolve().parent / "docs"
    return docs / "lesson_times.json" if docs.is_dir() else None


def _times(args) -> int:
    from labkit.classroom.course import lessons
    from labkit.classroom.lesson_times import sync

    try:
        docs = Path(args.notebooks).resolve().parent / "docs"
        times, guide = args.times or docs / "lesson_times.json", args.guide or docs / "INSTRUCTORS.md"
        stale = sync(lessons(args.notebooks), times, guide, write=not args.check)
    except ValueError as err:
        return _user_error("times", err)
    for path in stale:
        print(f"{'out of date' if args.check else 'rewrote'}: {path}")
    if not stale:
        print(f"every Time line and {guide} agree with {times}")
    return 1 if args.check and stale else 0


COMMANDS = {
    "doctor": (_doctor, "check the environment and describe this machine's devices"),
    "bench": (_bench, "time matmuls and memory bandwidth on every device"),
    "nb": (_nb, "notebook housekeeping: strip outputs, refresh checked outputs, lint lessons"),
    "student": (_student, "write the student set: solutions replaced by stubs, outputs cleared"),
    "grade": (_grade, "run learners' notebooks headless and report every exercise (table, CSV)"),
    "course": (_course, "run every lesson in order as a learner would, with HTML copies and times"),
    "times": (_times, "copy docs/lesson_times.json into each notebook's Time line and docs/INSTRUCTORS.md"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="labkit", description="labkit: make deep learning fast and small")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help=COMMANDS["doctor"][1])
    b = sub.add_parser("bench", help=COMMANDS["bench"][1])
    b.add_argument("--quick", action="store_true", help="fewer sizes, shorter runs")
    n = sub.add_parser("nb", help=COMMANDS["nb"][1])
    n.add_argument("action", choices=("strip", "refresh", "lint"))
    n.add_argument("notebooks", nargs="+")
    s = sub.add_parser("student", help=COMMANDS["student"][1])
    s.add_argument("--src", default="notebooks", help="the source (instructor) notebooks (default: notebooks)")
    s.add_argument("--out", default="student", help="where to write the student set (default: student)")
    g = sub.add_parser("grade", help=COMMANDS["grade"][1])
    g.add_argument("notebooks", nargs="+", help="learners' notebooks (.ipynb)")
    g.add_argument("--csv", help="also write the verdicts to this CSV file (one row per exercise)")
    g.add_argument("--source", help="the instructor's notebooks: restores their checks and hidden tests")
    g.add_argument("--full", action="store_true", help="run the full version (default: LABKIT_FAST=1)")
    g.add_argument("--timeout", type=float, default=600, help="seconds per notebook (default: 600)")
    g.add_argument("--feedback", help="write each executed notebook (with outputs) under this folder")
    c = sub.add_parser("course", help=COMMANDS["course"][1])
    c.add_argument("names", nargs="*", help="only these lessons (a file name or prefix such as 05)")
    c.add_argument("--fast", action="store_true", help="the CI-sized version (LABKIT_FAST=1)")
    c.add_argument("--out", default="course-run", help="where to write HTML and executed copies (default: course-run)")
    c.add_argument("--notebooks", default="notebooks", help="the lessons folder (default: notebooks)")
    c.add_argument("--timeout", type=float, default=900, help="seconds per lesson (default: 900)")
    c.add_argument("--times", help="record each ok lesson's time here (default: docs/lesson_times.json beside "
                                   "the notebooks folder, if that docs/ exists; '' records nothing)")
    t = sub.add_parser("times", help=COMMANDS["times"][1])
    t.add_argument("--check", action="store_true", help="only report what is out of date (exit 1 if anything is)")
    t.add_argument("--notebooks", default="notebooks", help="the lessons folder (default: notebooks)")
    t.add_argument("--times", help="the times file (default: docs/lesson_times.json beside the notebooks folder)")
    t.add_argument("--guide", help="the instructors' guide (default: docs/INSTRUCTORS.md beside the notebooks folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][0](args)


if __name__ == "__main__":
    sys.exit(main())
