"""Run a worker function on N local processes through torch.distributed, from a notebook or a script.

    from labkit.parallel.launch import launch
    from labkit.parallel.examples import hello
    results = launch(hello, world_size=2)      # one result per rank, in rank order

Each rank is a fresh process (``spawn``), joined into one process group (gloo on CPUs, NCCL
when every rank has its own GPU). The worker is a plain function importable from a module (a
function defined in a notebook cell can't be pickled under spawn); inside it, ask
``torch.distributed`` for the rank and world size, exactly as under ``torchrun``. The same
worker runs from a terminal with ``python -m labkit.parallel.run`` under torchrun.

The launcher always says why a run failed:

* a rank that raises (even while importing the worker) -> :class:`WorkerError` with that rank
  and its traceback; peers that then lose their partner are summarised in one line each;
* a rank that dies without a word -> :class:`WorkerError` naming the signal or exit code;
* a run past ``timeout`` seconds -> ``TimeoutError`` naming the unfinished ranks and the last
  thing each reported through :func:`mark` (``CountingComm`` marks every collective).

Every argument is checked before any process starts, and nothing is left running either way.
Used by lessons 03 and 04.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import pickle
import queue as queue_mod
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from labkit import _args

MAX_LOCAL_WORLD = 64
EVENTS_ENV = "LABKIT_RANK_EVENTS"  # the file where this rank's last event is written (set by launch)
_POLL = 0.2


class WorkerError(RuntimeError):
    """A rank failed; ``rank`` says which and ``remote_traceback`` holds its traceback."""

    def __init__(self, rank: int, remote_traceback: str):
        self.rank = rank
        self.remote_traceback = remote_traceback
        super().__init__(f"rank {rank} failed:\n{remote_traceback}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing is listening on right now."""
    _args.instance("host", host, str, "a host name or address (str)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(port: int, host: str = "127.0.0.1") -> int:
    """``port`` if it is a valid, currently free TCP port on ``host``, else ValueError/TypeError."""
    port = _args.integer("port", port, minimum=1, maximum=65535)
    _args.instance("host", host, str, "a host name or address (str)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as err:
            raise ValueError(f"port {port} on {host} is busy ({err.strerror}); pass another port or port=None") from None
    return port


def default_backend(world_size: int) -> str:
    """``nccl`` when there is one CUDA GPU per rank, else ``gloo`` (CPUs)."""
    world_size = _args.positive_int("world_size", world_size)
    if dist.is_nccl_available() and torch.cuda.is_available() and torch.cuda.device_count() >= world_size:
        return "nccl"
    return "gloo"


def rank_device() -> torch.device:
    """The device this rank should compute on: its own GPU under NCCL, the CPU under gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())) % torch.cuda.device_count())
    return torch.device("cpu")


def mark(event: str) -> None:
    """Record what this rank is doing now (``"all_reduce 4096 B"``, ``"step 3"``): if the run times
    out, the launcher names each unfinished rank's last mark. A no-op outside :func:`launch`."""
    _args.text("event", event)
    target = os.environ.get(EVENTS_ENV)
    if target:
        tmp = f"{target}.tmp"
        Path(tmp).write_text(f"{time.time()}\t{event}")
        os.replace(tmp, target)


def _last_event(path: Path) -> tuple[float, str] | None:
    try:
        stamp, _, event = path.read_text().partition("\t")
        return float(stamp), event
    except (OSError, ValueError):
        return None


def worker_spec(worker: Callable) -> tuple[str, str]:
    """``(module, qualname)`` by which the ranks import ``worker``; TypeError unless it is a
    top-level function of an importable module."""
    _args.function("worker", worker)
    module = getattr(worker, "__module__", None)
    qualname = getattr(worker, "__qualname__", "")
    if module in (None, "__main__", "__mp_main__") or not qualname or "<" in qualname:
        raise TypeError(
            f"worker {qualname or worker!r} must be a top-level function importable from a module "
            "(not defined in a notebook cell, a lambda or a nested function): spawned processes import it by name")
    return module, qualname


def _import_worker(module: str, qualname: str) -> Callable:
    try:
        return functools.reduce(getattr, qualname.split("."), importlib.import_module(module))
    except ImportError as err:
        raise type(err)(f"{err} - the ranks import the worker {module}.{qualname} by name: put its module "
                        "in a package on PYTHONPATH (sys.path changes in the caller do not reach them)") from err


class _Told(Exception):
    """A rank's failure whose one-line message is the whole story (no traceback needed)."""


def _entry(rank, world_size, spec, payload, backend, host, port, threads, timeout, results, events):
    """Body of each spawned process: load the worker, join the group, run, report back, leave."""
    os.environ.update(MASTER_ADDR=host, MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), OMP_NUM_THREADS=str(threads), **{EVENTS_ENV: events})
    torch.set_num_threads(threads)
    code = 1
    try:
        mark("importing the worker")
        try:
            worker = _import_worker(*spec)
            args, kwargs = pickle.loads(payload)
        except ImportError as err:  # the message says it all; the import machinery's frames don't
            raise _Told(f"{type(err).__name__}: {err}") from None
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        mark("joining the process group")
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout))
        mark(f"running {spec[1]}")
        value = worker(*args, **kwargs)
        mark("sending the result")
        buf = io.BytesIO()
        torch.save(value, buf)  # bytes, not shared-memory tensors: safe after this process exits
        results.put(("ok", rank, buf.getvalue()))
        code = 0
    except _Told as err:
        results.put(("error", rank, str(err)))
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))
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


# --- why a rank failed ------------------------------------------------------------------------


def _first_line(text: str) -> str:
    """The line of a traceback that helps: the exception, without gloo's C++ source prefix
    (``[../third_party/gloo/.../pair.cc:534] ``) or the C++ frames torch appends after it."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    cut = next((i for i, ln in enumerate(lines) if ln.startswith(("Exception raised from", "frame #"))), len(lines))
    lines = lines[:cut]
    exc = next((ln for ln in reversed(lines) if not ln.startswith(("File ", "^", "~"))
                and ":" in ln and ln.split(":", 1)[0].replace(".", "").isidentifier()), lines[-1] if lines else "")
    name, _, message = exc.partition(": ")
    if message.startswith("[") and "] " in message:  # "[../gloo/transport/tcp/pair.cc:534] Connection closed..."
        message = message.split("] ", 1)[1]
    message = message.split(". This is typically caused", 1)[0]  # gloo's advice to read the peer's logs
    return f"{name}: {message}" if message else name


def _exit_reason(exitcode: int, started: bool) -> str:
    """Why a rank that never reported ended, from its exit code and whether it reached the worker."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"process was killed by {name} without reporting (out of memory, or killed from outside)"
    why = f"process exited with code {exitcode} without reporting"
    if started:
        return why + " (os._exit, sys.exit in a thread, or a crash in C code)"
    why += " before it could load the worker; its traceback is on the terminal's stderr"
    main = sys.modules.get("__main__")
    if exitcode == 1 and getattr(main, "__file__", None) and not hasattr(sys, "ps1"):
        why += (f" - a script that calls launch() ({Path(main.__file__).name}) needs an "
                "`if __name__ == '__main__':` guard, or the ranks re-run it")
    return why


def _drain_errors(results, errors: dict) -> None:
    try:
        while True:
            status, r, text = results.get(timeout=0.1)
            if status == "error":
                errors.setdefault(r, text)
    except queue_mod.Empty:
        pass


def _root_cause(run, rank: int, payload: str) -> WorkerError:
    """When one rank fails, its peers soon fail too (their collectives lose a partner). Wait a
    moment and blame a rank that died without a word, if any, before the first one to report;
    peers' errors are summarised in one line each."""
    time.sleep(0.5)
    errors = {rank: payload}
    _drain_errors(run.results, errors)
    for r, p in enumerate(run.procs):
        if r not in run.outputs and r not in errors and p.exitcode not in (None, 0):
            others = "; ".join(f"rank {k}: {_first_line(v)}" for k, v in sorted(errors.items()))
            return WorkerError(r, f"{_exit_reason(p.exitcode, run.started(r))}; its peers then failed ({others})")
    culprit = min(errors, key=lambda k: ("Connection closed by peer" in errors[k] or "Connection reset" in errors[k], k))
    peers = [f"rank {k}: {_first_line(v)}" for k, v in sorted(errors.items()) if k != culprit]
    text = errors[culprit] + (f"\nthen its peers failed: {'; '.join(peers)}" if peers else "")
    return WorkerError(culprit, text)


def _timeout_error(run, timeout: float) -> TimeoutError:
    waiting = [r for r in range(run.world_size) if r not in run.outputs]
    now, doing = time.time(), []
    for r in waiting:
        last = _last_event(run.events(r))
        doing.append(f"rank {r}: " + (f"last reported '{last[1]}' {now - last[0]:.1f} s ago" if last
                                       else "nothing reported yet: still starting Python and torch"))
    return TimeoutError(f"ranks {waiting} did not finish within {timeout} s ({'; '.join(doing)}); "
                        "all ranks were stopped")


# --- the run ------------------------------------------------------------------------------------


class _Run:
    """The processes of one launch, their result queue and event files."""

    def __init__(self, world_size: int, folder: str):
        self.world_size, self.folder = world_size, Path(folder)
        self.ctx = mp.get_context("spawn")
        self.results = self.ctx.Queue()
        self.procs: list = []
        self.outputs: dict[int, object] = {}

    def events(self, rank: int) -> Path:
        return self.folder / f"rank{rank}.event"

    def started(self, rank: int) -> bool:
        return self.events(rank).exists()

    def start(self, entry_args: Callable[[int], tuple]) -> None:
        self.procs = [self.ctx.Process(target=_entry, args=entry_args(r), daemon=True) for r in range(self.world_size)]
        for p in self.procs:
            p.start()

    def next_report(self, deadline: float, timeout: float):
        """The next ``(status, rank, payload)``; raises when a rank died silently or time ran out."""
        while True:
            try:
                return self.results.get(timeout=_POLL)
            except queue_mod.Empty:
                pass
            for r, p in enumerate(self.procs):
                if r not in self.outputs and p.exitcode is not None:
                    try:  # its report may still be in flight
                        return self.results.get(timeout=1.0)
                    except queue_mod.Empty:
                        raise _root_cause(self, r, _exit_reason(p.exitcode, self.started(r))) from None
            if time.monotonic() > deadline:
                raise _timeout_error(self, timeout)

    def stop(self) -> None:
        procs = [p for p in self.procs if p.pid is not None]  # only those that started
        for p in procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 5
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(2)
        self.results.close()
        self.results.join_thread()


def _check_options(world_size, timeout, backend, threads_per_rank, port, host) -> tuple:
    world_size = _args.integer("world_size", world_size, minimum=1, maximum=MAX_LOCAL_WORLD)
    timeout = _args.positive_float("timeout", timeout)
    backend = default_backend(world_size) if backend is None else _args.choice("backend", backend, ("gloo", "nccl"))
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"backend 'nccl' needs one GPU per rank: world_size {world_size} but "
                         f"{torch.cuda.device_count()} GPUs")
    if threads_per_rank is not None:
        threads_per_rank = _args.positive_int("threads_per_rank", threads_per_rank)
    _args.instance("host", host, str, "a host name or address (str)")
    port = free_port(host) if port is None else check_port(port, host)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return world_size, timeout, backend, threads_per_rank or max(1, cores // world_size), port


def _pickled(args: tuple, kwargs: dict) -> bytes:
    try:
        return pickle.dumps((args, kwargs))
    except Exception as err:
        raise TypeError(f"the worker's arguments must be picklable to reach the ranks: {err}") from None


def launch(worker: Callable, world_size: int, *args, backend: str | None = None, timeout: float = 120.0,
           port: int | None = None, host: str = "127.0.0.1", threads_per_rank: int | None = None, **kwargs) -> list:
    """Run ``worker(*args, **kwargs)`` on ``world_size`` processes; return each rank's result.

    ``threads_per_rank`` defaults to the cores divided among the ranks (at least 1), so ranks
    don't fight over cores. Raises :class:`WorkerError` (with the failing rank's traceback) or
    ``TimeoutError``; in both cases every process has been stopped before this returns.
    """
    spec = worker_spec(worker)
    world_size, timeout, backend, threads, port = _check_options(world_size, timeout, backend, threads_per_rank,
                                                                 port, host)
    payload = _pickled(args, kwargs)
    with tempfile.TemporaryDirectory(prefix="labkit-launch-") as folder:
        run = _Run(world_size, folder)
        deadline = time.monotonic() + timeout
        try:
            run.start(lambda r: (r, world_size, spec, payload, backend, host, port, threads, timeout, run.results,
                                 str(run.events(r))))
            while len(run.outputs) < world_size:
                status, rank, body = run.next_report(deadline, timeout)
                if status == "error":
                    raise _root_cause(run, rank, body)
                run.outputs[rank] = torch.load(io.BytesIO(body), weights_only=False)
            for p in run.procs:
                p.join(10)
        finally:
            run.stop()
    return [run.outputs[r] for r in range(world_size)]
