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

from labkit import _args
from labkit.cli import OneLineParser
from labkit.parallel.launch import default_backend


def resolve(spec: str):
    """``'package.module:function'`` -> the function (ValueError naming ``spec`` if it is not one)."""
    _args.instance("spec", spec, str, "a 'module:function' string")
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"spec: worker must be given as 'module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name, None)
    except ImportError as err:
        raise ValueError(f"spec {spec!r}: cannot import {module}: {err}") from None
    if not callable(fn):
        raise ValueError(f"spec {spec!r}: {module} has no function {name!r}")
    return fn


def parse_kwargs(text: str) -> dict:
    """``--kwargs`` JSON -> a dict (ValueError saying what is wrong with it)."""
    _args.instance("text", text, str, "a JSON string")
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--kwargs is not valid JSON ({err}): {text!r}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--kwargs must be a JSON object like '{{\"steps\": 5}}', got {text!r}")
    return kwargs


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m labkit.parallel.run", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("worker", help="module:function")
    parser.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    parser.add_argument("--backend", default=None, choices=("gloo", "nccl"))
    args = parser.parse_args(argv)
    try:
        worker = resolve(args.worker)
        kwargs = parse_kwargs(args.kwargs)
    except ValueError as err:
        parser.error(str(err))
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
