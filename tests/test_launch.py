"""The launcher: results per rank, failures surfaced within the timeout, nothing left running,
clear errors for impossible requests, and the same worker under torchrun."""

from __future__ import annotations

import ast
import math
import multiprocessing
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from labkit.parallel import examples
from labkit.parallel import launch as launch_mod
from labkit.parallel.launch import WorkerError, check_port, free_port, launch
from labkit.parallel.run import main as run_main
from labkit.parallel.run import resolve

ROOT = Path(__file__).resolve().parents[1]


def _spawned_children() -> list[int]:
    """PIDs of live (non-zombie) processes whose parent is this one and that were started by
    multiprocessing's spawn (the resource tracker, also our child, is not a worker)."""
    found = []
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("PPid", "").strip() == me and not fields.get("State", "").startswith("Z") \
                and "spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _assert_nothing_left(pids=()):
    assert multiprocessing.active_children() == []
    if Path("/proc/self/status").exists():
        assert _spawned_children() == []
        for pid in pids:  # gone, or at most a zombie that was already reaped by join
            status = Path(f"/proc/{pid}/status")
            assert not status.exists() or "State:\tZ" in status.read_text()


# --- checks that start no process ---------------------------------------------------------------


@pytest.mark.parametrize("world_size", [0, -1, 65])
def test_impossible_world_size_is_a_value_error(world_size):
    with pytest.raises(ValueError, match="world_size"):
        launch(examples.hello, world_size)


@pytest.mark.parametrize("world_size", [1.5, True, "2", None])
def test_non_int_world_size_is_a_type_error(world_size):
    with pytest.raises(TypeError, match="world_size"):
        launch(examples.hello, world_size)


def test_busy_port_is_a_value_error():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(ValueError, match=f"port {busy} .*busy"):
            launch(examples.hello, 2, port=busy)
    _assert_nothing_left()


@pytest.mark.parametrize("port", [0, 70000, -5])
def test_bad_port_values(port):
    with pytest.raises(ValueError, match="port"):
        check_port(port)


@pytest.mark.parametrize("port", [True, "29500", 1.0, None])
def test_bad_port_types(port):
    with pytest.raises(TypeError, match="port"):
        check_port(port)


def test_free_port_is_bindable():
    port = free_port()
    assert check_port(port) == port


def _nested_worker():
    def inner():
        return 1

    return inner


@pytest.mark.parametrize("worker", [lambda: 1, _nested_worker(), 42])
def test_worker_must_be_an_importable_function(worker):
    with pytest.raises(TypeError, match="worker"):
        launch(worker, 2)


@pytest.mark.parametrize("kwargs, exc, word", [
    ({"timeout": 0}, ValueError, "timeout"),
    ({"timeout": -1.0}, ValueError, "timeout"),
    ({"timeout": "10"}, TypeError, "timeout"),
    ({"timeout": math.nan}, ValueError, "timeout"),
    ({"timeout": math.inf}, ValueError, "timeout"),
    ({"threads_per_rank": 0}, ValueError, "threads_per_rank"),
    ({"threads_per_rank": 1.5}, TypeError, "threads_per_rank"),
    ({"backend": "mpi"}, ValueError, "backend"),
    ({"host": None}, TypeError, "host"),
    ({"lock": threading.Lock()}, TypeError, "picklable"),
])
def test_bad_options_are_refused_before_any_process_starts(monkeypatch, kwargs, exc, word):
    def no_spawn(*a, **k):
        raise AssertionError("a process was about to start")

    monkeypatch.setattr(launch_mod._Run, "start", no_spawn)
    with pytest.raises(exc, match=word):
        launch(examples.hello, 2, **kwargs)
    _assert_nothing_left()


TRACE_FROM_PEER = """Traceback (most recent call last):
  File "/x/labkit/parallel/launch.py", line 150, in _entry
    value = worker(*args, **kwargs)
  File "/x/labkit/parallel/examples.py", line 42, in fail_on_rank
    dist.barrier()
torch.distributed.DistBackendError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242
Exception raised from recvLoop at /pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534 (most recent call first):
frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x98 (0x7f in libc10.so)
frame #1: <unknown function> + 0x5a3 (0x7f in libtorch_cpu.so)
"""


def test_peer_messages_are_trimmed_to_one_line():
    assert launch_mod._first_line(TRACE_FROM_PEER) == \
        "torch.distributed.DistBackendError: Connection closed by peer [127.0.0.1]:4242"
    assert launch_mod._first_line("Traceback:\n  File 'a'\nValueError: bad x") == "ValueError: bad x"


def test_exit_reasons(monkeypatch):
    killed = launch_mod._exit_reason(-signal.SIGKILL, started=True)
    assert "SIGKILL" in killed and "__main__" not in killed
    exited = launch_mod._exit_reason(3, started=True)
    assert "code 3" in exited and "__main__" not in exited
    # a rank that never reached the worker, started from a script: the guard is the likely cause
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__="/home/me/train.py"))
    monkeypatch.delattr(sys, "ps1", raising=False)
    assert "if __name__ == '__main__'" in launch_mod._exit_reason(1, started=False)
    assert "train.py" in launch_mod._exit_reason(1, started=False)
    assert "__main__" not in launch_mod._exit_reason(1, started=True)


def test_resolve_worker_spec():
    assert resolve("labkit.parallel.examples:hello") is examples.hello
    with pytest.raises(ValueError, match="module:function"):
        resolve("labkit.parallel.examples.hello")
    with pytest.raises(ValueError, match="no function"):
        resolve("labkit.parallel.examples:nope")


def test_run_refuses_to_start_outside_torchrun(monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit):
        run_main(["labkit.parallel.examples:hello"])
    assert "torchrun" in capsys.readouterr().err


# --- real processes -----------------------------------------------------------------------------


@pytest.mark.dist
def test_results_come_back_in_rank_order():
    out = launch(examples.hello, 3, threads_per_rank=1, timeout=120)
    assert [r["rank"] for r in out] == [0, 1, 2]
    assert all(r["world_size"] == 3 and r["backend"] == "gloo" and r["threads"] == 1 for r in out)
    assert all(r["sum_of_ranks"] == 0 + 1 + 2 for r in out)
    pids = [r["pid"] for r in out]
    assert len(set(pids)) == 3 and os.getpid() not in pids
    _assert_nothing_left(pids)


@pytest.mark.dist
def test_arguments_and_tensors_travel_both_ways():
    x = torch.arange(5.0)
    out = launch(examples.all_reduce_sum, 2, x, timeout=120)
    for y in out:  # rank r sends x * (r + 1); the sum is x * (1 + 2)
        torch.testing.assert_close(y, x * 3)
    _assert_nothing_left()


@pytest.mark.dist
def test_a_rank_that_raises_surfaces_its_traceback():
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        launch(examples.fail_on_rank, 2, 1, timeout=60)
    assert time.monotonic() - start < 45
    err = info.value
    assert err.rank == 1
    assert "Traceback" in err.remote_traceback and "deliberate failure on rank 1" in err.remote_traceback
    assert "fail_on_rank" in err.remote_traceback  # the worker's frame is in it
    _assert_nothing_left()


@pytest.mark.dist
def test_a_rank_that_dies_is_named():
    start = time.monotonic()
    with pytest.raises(WorkerError) as info:
        launch(examples.die_on_rank, 2, 0, timeout=60)
    assert time.monotonic() - start < 45
    assert info.value.rank == 0
    message = str(info.value)
    assert "exited with code 3" in message and "__main__" not in message
    assert "frame #" not in message  # the peer's gloo error is one line, not a C++ trace
    _assert_nothing_left()


@pytest.mark.dist
def test_a_rank_killed_by_a_signal_is_named():
    with pytest.raises(WorkerError) as info:
        launch(examples.kill_rank, 2, 1, timeout=60)
    assert info.value.rank == 1
    message = str(info.value)
    assert "SIGKILL" in message and "__main__" not in message
    _assert_nothing_left()


@pytest.mark.dist
def test_a_worker_the_ranks_cannot_import(tmp_path, monkeypatch):
    (tmp_path / "lonely_worker_mod.py").write_text(textwrap.dedent("""
        def work():
            return 1
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import lonely_worker_mod

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])  # the ranks won't see it
    start = time.monotonic()
    try:
        with pytest.raises(WorkerError) as info:
            launch(lonely_worker_mod.work, 2, timeout=60)
    finally:
        sys.modules.pop("lonely_worker_mod", None)
    assert time.monotonic() - start < 30
    assert info.value.rank in (0, 1)
    assert "ModuleNotFoundError" in str(info.value) and "lonely_worker_mod" in str(info.value)
    assert "without reporting" not in str(info.value)
    _assert_nothing_left()


@pytest.mark.dist
def test_a_hang_times_out_names_ranks_and_what_they_did():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks \[0, 1\]") as info:
        launch(examples.sleep_forever, 2, timeout=20)
    elapsed = time.monotonic() - start
    assert 20 <= elapsed < 20 + 20
    for rank in (0, 1):
        assert f"rank {rank}: last reported 'rank {rank} sleeping 3600 s after the barrier'" in str(info.value)
    _assert_nothing_left()


@pytest.mark.dist
def test_same_worker_under_torchrun():
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "labkit.parallel.run",
                           "labkit.parallel.examples:hello"], capture_output=True, text=True, timeout=180,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("rank ")]
    under_torchrun = sorted((ast.literal_eval(ln.split(": ", 1)[1]) for ln in lines), key=lambda r: r["rank"])
    under_launch = launch(examples.hello, 2, threads_per_rank=1, timeout=120)
    keys = ("rank", "world_size", "backend", "sum_of_ranks", "threads")
    assert [{k: r[k] for k in keys} for r in under_torchrun] == [{k: r[k] for k in keys} for r in under_launch]
    _assert_nothing_left()


def _descendants(pids) -> set[int]:
    """Every live process below ``pids`` (torchrun starts its workers in sessions of their own,
    so killing the agent's process group would not reach them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(next(ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("PPid:")).split()[1])
            except (OSError, StopIteration, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except OSError:
        return False


def readme_two_node_command() -> str:
    """The README's multi-machine recipe: the one command line in a bash block with --nnodes=2."""
    text = (ROOT / "README.md").read_text()
    lines = [ln.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for ln in block.splitlines()
             if "--nnodes=2" in ln]
    assert len(lines) == 1, f"README.md should hold one torchrun line with --nnodes=2 in a bash block, found {lines}"
    return lines[0]


@pytest.mark.dist
@pytest.mark.skipif(not Path("/proc").exists(), reason="finds torchrun's workers through /proc")
def test_two_torchrun_nodes(tmp_path):
    """Two torchrun agents, node_rank 0 and 1, meet through a c10d rendezvous on 127.0.0.1, as two
    machines would: the README's own command, with HOST, PORT and K filled in. Both ranks must
    see the all-reduce and end the DP steps with the single-process parameters."""
    from labkit.parallel.data_parallel import train_single_process

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    line = readme_two_node_command()
    for placeholder in ("HOST:PORT", "--node_rank=K", ".venv/bin/torchrun "):
        assert placeholder in line, f"the README's command lost {placeholder!r}: {line}"
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    agents, logs = [], []
    try:
        for k in (0, 1):
            argv = shlex.split(line.replace("HOST:PORT", f"127.0.0.1:{port}").replace("--node_rank=K", f"--node_rank={k}"))
            argv[0] = str(torchrun)
            out, err = open(tmp_path / f"node{k}.out", "w+"), open(tmp_path / f"node{k}.err", "w+")
            logs.append((out, err))
            agents.append(subprocess.Popen(argv, stdout=out, stderr=err, cwd=ROOT, env=env, start_new_session=True))
        deadline = time.monotonic() + 150
        while any(a.poll() is None for a in agents) and time.monotonic() < deadline:
            time.sleep(0.2)
        codes = [a.poll() for a in agents]
        texts = [(o.seek(0) or o.read(), e.seek(0) or e.read()) for o, e in logs]
        assert codes == [0, 0], f"exit codes {codes} (None: still running after 150 s); stderr: " + \
            " | ".join(e[-1500:] for _, e in texts)
    finally:
        left = _descendants([a.pid for a in agents]) | {a.pid for a in agents}
        for a in agents:
            if a.poll() is None:
                a.terminate()  # torchrun stops its workers on SIGTERM
        for a in agents:
            try:
                a.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for pid in left | _descendants(left):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for a in agents:
            a.wait(5)
        for out, err in logs:
            out.close()
            err.close()
        time.sleep(0.2)
        assert not [pid for pid in left if _alive(pid)], "processes left running"
    ranks = sorted((ast.literal_eval(ln.split(": ", 1)[1]) for out, _ in texts for ln in out.splitlines()
                    if ln.startswith("rank ")), key=lambda r: r["rank"])
    # c10d numbers the nodes in the order they join (torchrun ignores --node_rank for it): one rank per node
    assert [(r["rank"], r["node"], r["world_size"], r["sum_of_ranks"]) for r in ranks] == [(0, "0", 2, 1.0), (1, "1", 2, 1.0)]
    steps = ast.literal_eval(re.search(r"--kwargs '(.*)'", line).group(1).replace("true", "True"))["steps"]
    reference, losses = train_single_process(steps=steps, batch_size=32, hidden=(16,))
    for r in ranks:
        assert r["rank_spread"] == 0.0
        assert torch.allclose(torch.tensor(r["params"]), reference, atol=1e-6)
        assert r["losses"] == pytest.approx(losses, abs=1e-6)


def _mock_gpus(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)


def _mock_group(monkeypatch, backend, rank):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: backend)
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: rank)
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def test_backend_agrees_with_the_workers_tensor_device(monkeypatch):
    from labkit.parallel.cost import sweep_functions
    from labkit.parallel.launch import default_backend, rank_device

    _mock_gpus(monkeypatch, 2)  # a 2-GPU machine: enough GPUs for NCCL at world size 2
    # lesson-03 workers build CPU tensors: the default must be gloo, or every all-reduce fails
    backend = default_backend(2)
    assert backend == "gloo"
    _mock_group(monkeypatch, backend, 1)
    assert rank_device() == torch.device("cpu")
    fn = sweep_functions([0.001], ("gloo",))["gloo 0.001"]
    assert fn.__defaults__[0].device == rank_device()  # the tensor the worker all-reduces
    # a worker that puts its tensors on rank_device asks for CUDA: NCCL, and its rank's own GPU
    backend = default_backend(2, device_type="cuda")
    assert backend == "nccl"
    _mock_group(monkeypatch, backend, 1)
    assert rank_device() == torch.device("cuda", 1)
    assert default_backend(3, device_type="cuda") == "gloo"  # fewer GPUs than ranks
    with pytest.raises(ValueError, match="device_type"):
        default_backend(2, device_type="mps")
