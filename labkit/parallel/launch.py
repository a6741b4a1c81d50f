"""Run a worker function on N local processes through torch.distributed, from a notebook or a script.

    from labkit.parallel.launch import launch
    from labkit.parallel.examples import hello
    results = launch(hello, world_size=2)      # one result per rank, in rank order

Each rank is a fresh process (``spawn``), joined into one process group: gloo by default,
because the course's workers keep their tensors on the CPU; NCCL only when asked for
(``backend='nccl'``, one GPU per rank) by a worker that puts its tensors on :func:`rank_device`
(NCCL cannot reduce CPU tensors, and gloo on GPU tensors would copy them through the host). The worker is a plain function importable from a module (a
function defined in a notebook cell can't be pickled under spawn); inside it, ask
``torch.distributed`` for the rank and world size, exactly as under ``torchrun``. The same
worker runs from a terminal with ``python -m labkit.parallel.run`` under torchrun.

If any rank raises or dies, the others are stopped and :class:`WorkerError` is raised here
with that rank's traceback; if the run exceeds ``timeout`` seconds, every rank is stopped and
``TimeoutError`` is raised. Nothing is left running either way. Used by lessons 03 and 04.
"""

from __future__ import annotations

import io
import os
import queue as queue_mod
import socket
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

MAX_LOCAL_WORLD = 64


class WorkerError(RuntimeError):
    """A rank failed; ``rank`` says which and ``remote_traceback`` holds its traceback."""

    def __init__(self, rank: int, remote_traceback: str):
        self.rank = rank
        self.remote_traceback = remote_traceback
        super().__init__(f"rank {rank} failed:\n{remote_traceback}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing is listening on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(port: int, host: str = "127.0.0.1") -> int:
    """Raise ValueError unless ``port`` is a valid, currently free TCP port on ``host``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an int in 1..65535, got {port!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as err:
            raise ValueError(f"port {port} on {host} is busy ({err.strerror}); pass another port or port=None") from None
    return port


def default_backend(world_size: int, *, device_type: str = "cpu") -> str:
    """The backend that matches where the worker's tensors live (``device_type``).

    ``gloo`` for CPU tensors - the default, and what every lesson-03 worker uses, even on a
    machine with GPUs; ``nccl`` for CUDA tensors when there is one GPU per rank (the worker
    must then put its tensors on :func:`rank_device`), else ``gloo``.
    """
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    if (device_type == "cuda" and dist.is_nccl_available() and torch.cuda.is_available()
            and torch.cuda.device_count() >= world_size):
        return "nccl"
    return "gloo"


def rank_device() -> torch.device:
    """The device this rank should compute on: its own GPU under NCCL, the CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())) % torch.cuda.device_count())
    return torch.device("cpu")


def _check_worker(worker: Callable) -> None:
    if not callable(worker):
        raise TypeError(f"worker must be a function, got {type(worker).__name__}")
    module = getattr(worker, "__module__", None)
    qualname = getattr(worker, "__qualname__", "")
    if module in (None, "__main__") or "<locals>" in qualname or "<lambda>" in qualname:
        raise TypeError(
            f"worker {qualname or worker!r} must be a top-level function importable from a module "
            "(not defined in a notebook cell, a lambda or a nested function): spawned processes import it by name"
        )


def _entry(rank, world_size, worker, args, kwargs, backend, host, port, threads, timeout, results):
    """Body of each spawned process: join the group, run the worker, report back, leave."""
    os.environ.update(MASTER_ADDR=host, MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), OMP_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout))
        value = worker(*args, **kwargs)
        buf = io.BytesIO()
        torch.save(value, buf)  # bytes, not shared-memory tensors: safe after this process exits
        results.put(("ok", rank, buf.getvalue()))
        code = 0
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))
        code = 1
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass
    # The report is in the queue: flush it and leave without the interpreter's slow teardown of
    # torch (1-3 s per launch on a busy 2-core machine), which would only delay the caller.
    results.close()
    results.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stop(procs) -> None:
    procs = [p for p in procs if p.pid is not None]  # only those that started
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(2)


def _silent_exit(exitcode: int) -> str:
    why = f"process exited with code {exitcode} without reporting (killed, out of memory, or os._exit)"
    if exitcode == 1:  # spawn could not even start the worker: the traceback is on the terminal's stderr
        why += ("; if it failed while starting, its traceback is on stderr - a script that calls launch() "
                "needs an `if __name__ == '__main__':` guard")
    return why


def _root_cause(procs, results, outputs, rank: int, payload: str) -> WorkerError:
    """When one rank fails, its peers soon fail too (their collectives lose a partner). Wait a
    moment and blame a rank that died without a word, if any, before the first one to report."""
    time.sleep(0.5)
    errors = {rank: payload}
    try:
        while True:
            status, r, text = results.get(timeout=0.1)
            if status == "error":
                errors.setdefault(r, text)
    except queue_mod.Empty:
        pass
    for r, p in enumerate(procs):
        if r not in outputs and r not in errors and p.exitcode not in (None, 0):
            others = "; ".join(f"rank {k}: {v.strip().splitlines()[-1]}" for k, v in errors.items())
            return WorkerError(r, f"{_silent_exit(p.exitcode)}; its peers then failed ({others})")
    return WorkerError(rank, payload)


def launch(worker: Callable, world_size: int, *args, backend: str | None = None, timeout: float = 120.0,
           port: int | None = None, host: str = "127.0.0.1", threads_per_rank: int | None = None, **kwargs) -> list:
    """Run ``worker(*args, **kwargs)`` on ``world_size`` processes; return each rank's result.

    ``backend`` defaults to ``gloo`` (CPU tensors, :func:`default_backend`); pass ``'nccl'`` only
    for a worker whose tensors live on :func:`rank_device`. ``threads_per_rank`` defaults to the
    cores divided among the ranks (at least 1), so ranks don't fight over cores. Raises :class:`WorkerError` (with the failing rank's traceback) or
    ``TimeoutError``; in both cases every process has been stopped before this returns.
    """
    _check_worker(worker)
    if isinstance(world_size, bool) or not isinstance(world_size, int):
        raise TypeError(f"world_size must be an int, got {type(world_size).__name__}")
    if not 1 <= world_size <= MAX_LOCAL_WORLD:
        raise ValueError(f"world_size must be between 1 and {MAX_LOCAL_WORLD} local processes, got {world_size}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout}")
    backend = backend or default_backend(world_size)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"nccl needs one GPU per rank: world_size {world_size} but {torch.cuda.device_count()} GPUs")
    if threads_per_rank is not None and (isinstance(threads_per_rank, bool) or not isinstance(threads_per_rank, int)
                                         or threads_per_rank < 1):
        raise ValueError(f"threads_per_rank must be a positive int or None, got {threads_per_rank!r}")
    port = free_port(host) if port is None else check_port(port, host)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads_per_rank or max(1, cores // world_size)

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_entry, args=(r, world_size, worker, args, kwargs, backend, host, port, threads,
                                              timeout, results), daemon=True) for r in range(world_size)]
    outputs: dict[int, object] = {}
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.start()
        while len(outputs) < world_size:
            try:
                status, rank, payload = results.get(timeout=0.2)
            except queue_mod.Empty:
                for r, p in enumerate(procs):
                    if r not in outputs and p.exitcode is not None:
                        try:  # its report may still be in flight
                            status, rank, payload = results.get(timeout=1.0)
                            break
                        except queue_mod.Empty:
                            raise WorkerError(r, _silent_exit(p.exitcode)) from None
                else:
                    if time.monotonic() > deadline:
                        waiting = sorted(set(range(world_size)) - set(outputs))
                        raise TimeoutError(f"ranks {waiting} did not finish within {timeout} s; all ranks were stopped")
                    continue
            if status == "error":
                raise _root_cause(procs, results, outputs, rank, payload)
            outputs[rank] = torch.load(io.BytesIO(payload), weights_only=False)
        for p in procs:
            p.join(10)
    finally:
        _stop(procs)
        results.close()
        results.join_thread()
    return [outputs[r] for r in range(world_size)]
