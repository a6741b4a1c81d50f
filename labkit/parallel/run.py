"""Run a labkit worker under ``torchrun`` - the same function ``launch`` runs from a notebook.

    torchrun --nproc_per_node=2 -m labkit.parallel.run labkit.parallel.examples:hello
    torchrun --nproc_per_node=2 -m labkit.parallel.run labkit.parallel.data_parallel:some_worker --kwargs '{"steps": 5}'

Across machines, run the same line on each with ``--nnodes=2 --node_rank=K
--rdzv_backend=c10d --rdzv_endpoint=HOST:29500``. torchrun sets RANK, WORLD_SIZE, MASTER_ADDR
and MASTER_PORT; this module joins the process group, runs the worker and prints each rank's
result (as ``rank R: ...``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

import torch
import torch.distributed as dist

from labkit.parallel.launch import default_backend


def resolve(spec: str):
    """``'package.module:function'`` -> the function."""
    if ":" not in spec:
        raise ValueError(f"worker must be given as 'module:function', got {spec!r}")
    module, _, name = spec.partition(":")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"{module} has no function {name!r}")
    return fn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("worker", help="module:function")
    parser.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    parser.add_argument("--backend", default=None, help="gloo (default: CPU tensors) or nccl (worker uses rank_device)")
    args = parser.parse_args(argv)
    worker = resolve(args.worker)
    kwargs = json.loads(args.kwargs)
    if "RANK" not in os.environ:
        parser.error("RANK is not set: start this module with torchrun (or use labkit.parallel.launch.launch)")
    world = int(os.environ["WORLD_SIZE"])
    backend = args.backend or default_backend(world)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    try:
        result = worker(**kwargs)
        # one write() per line: ranks share the terminal's pipe, and small writes don't interleave
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), f"rank {dist.get_rank()}: {result}\n".encode())
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
