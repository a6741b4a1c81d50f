"""The ``labkit`` command line.

    labkit doctor            versions, devices, threads, bf16/int8 support, completeness
    labkit bench [--quick]   matmul GFLOP/s per device, peak estimate, elementwise bandwidth
    labkit nb strip|refresh|lint NOTEBOOK...   notebook housekeeping (labkit.nbtools)

Each sub-command lives in its own module; this file only parses arguments and dispatches.
"""

from __future__ import annotations

import argparse
import sys


def _doctor(args) -> int:
    from labkit.doctor import doctor_report, missing_required

    print(doctor_report())
    return 1 if missing_required() else 0


def _bench(args) -> int:
    import torch

    from labkit.bench import cpu_peak_gflops, elementwise_gbps, matmul_sweep
    from labkit.devices import available_devices

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
    from labkit.nbtools import main as nb_main

    return nb_main([args.action, *args.notebooks])


COMMANDS = {
    "doctor": (_doctor, "check the environment and describe this machine's devices"),
    "bench": (_bench, "time matmuls and memory bandwidth on every device"),
    "nb": (_nb, "notebook housekeeping: strip outputs, refresh checked outputs, lint lessons"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="labkit", description="labkit: make deep learning fast and small")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help=COMMANDS["doctor"][1])
    b = sub.add_parser("bench", help=COMMANDS["bench"][1])
    b.add_argument("--quick", action="store_true", help="fewer sizes, shorter runs")
    n = sub.add_parser("nb", help=COMMANDS["nb"][1])
    n.add_argument("action", choices=("strip", "refresh", "lint"))
    n.add_argument("notebooks", nargs="+")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][0](args)


if __name__ == "__main__":
    sys.exit(main())
