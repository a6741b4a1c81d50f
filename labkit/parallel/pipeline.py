"""Pipeline parallelism from first principles: a model cut by layers across ranks (lesson 04).

Rank ``s`` holds stage ``s`` (a contiguous run of layers). Forward: it receives the activation
from rank ``s-1``, runs its layers and sends the result to rank ``s+1``. Backward: it receives
the gradient of the loss with respect to that result from rank ``s+1``, back-propagates through
its layers (accumulating its own parameters' gradients) and sends the gradient with respect to
its input to rank ``s-1``: ``out.backward(grad_out)``; ``send(inp.grad)``. Nothing else crosses
the cut, so the split model computes exactly what the unsplit one does.

Cutting the batch into ``m`` micro-batches lets stages work at the same time. Each rank runs its
list of ``('F', i)`` / ``('B', i)`` ops from :mod:`labkit.parallel.schedule` (GPipe or 1F1B)
and records when each op started and ended, so the measured idle share can be set against
``(p-1)/(m+p-1)``. A :class:`labkit.parallel.problem.LiveActivationMeter` counts the bytes autograd keeps for backward:
the activation memory that grows with the micro-batches in flight.

Workers (run them with :func:`labkit.parallel.launch.launch`): :func:`pipeline_worker`,
:func:`bubble_worker`, :func:`torch_pipelining_worker`; :func:`labkit.parallel.problem.reference_run`
is the same training in one process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from statistics import median

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

from labkit import _args
from labkit.devices import synchronize
from labkit.parallel.comm import CountingComm, require_group
from labkit.parallel.launch import rank_device
from labkit.parallel.problem import LiveActivationMeter, make_problem
from labkit.parallel.schedule import Slot, bubble_fraction, idle_fraction, make_schedule, replay


def partition(costs: Sequence[float], parts: int) -> list[tuple[int, int]]:
    """Cut ``costs`` into ``parts`` contiguous ranges ``[a, b)`` minimising the costliest range
    (the slowest stage sets the pipeline's pace). Dynamic programming, O(n^2 parts)."""
    parts = _args.positive_int("parts", parts)
    costs = [_args.real(f"costs[{i}]", c) for i, c in enumerate(_args.sequence("costs", costs))]
    n = len(costs)
    if n < parts:
        raise ValueError(f"cannot cut {n} layers into {parts} non-empty stages")
    if any(c < 0 for c in costs):
        raise ValueError(f"costs must be >= 0, got {list(costs)}")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]  # best[k][j]: first j layers in k stages
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                worst = max(best[k - 1][i], prefix[j] - prefix[i])
                if worst < best[k][j]:
                    best[k][j], cut[k][j] = worst, i
    bounds, j = [], n
    for k in range(parts, 0, -1):
        bounds.append((cut[k][j], j))
        j = cut[k][j]
    return bounds[::-1]


def split_model(model: nn.Sequential, stages: int) -> list[nn.Sequential]:
    """Cut an ``nn.Sequential`` into ``stages`` slices balanced by parameter count.

    A layer with parameters and the parameter-free layers after it (activations) stay
    together; the slices keep the original names, so ``state_dict`` keys match the model's."""
    _args.module("model", model, nn.Sequential)
    stages = _args.positive_int("stages", stages)
    has_params = [any(True for _ in layer.parameters()) for layer in model]
    groups: list[list[int]] = []
    for i, has in enumerate(has_params):
        if not groups or (has and any(has_params[j] for j in groups[-1])):
            groups.append([i])  # a new group starts at each layer with parameters
        else:
            groups[-1].append(i)  # activations (and leading flatten) join the group before them
    costs = [sum(p.numel() for j in g for p in model[j].parameters()) for g in groups]
    if len(groups) < stages:
        raise ValueError(f"stages={stages} but the model has only {len(groups)} layers with parameters")
    return [model[groups[a][0]: groups[b - 1][-1] + 1] for a, b in partition(costs, stages)]


def _check_ops(ops) -> list[tuple[str, int]]:
    """``ops`` as a list of ``('F', i)`` / ``('B', i)`` pairs (what :mod:`labkit.parallel.schedule` makes)."""
    ops = _args.sequence("ops", ops, what="a list of ('F' or 'B', micro-batch) pairs")
    for k, op in enumerate(ops):
        if not (isinstance(op, (tuple, list)) and len(op) == 2 and op[0] in ("F", "B")):
            raise ValueError(f"ops[{k}] must be an ('F' or 'B', micro-batch) pair, got {op!r}")
        _args.non_negative_int(f"ops[{k}][1]", op[1])
    return [tuple(op) for op in ops]


def run_stage(stage: nn.Module, ops: Sequence[tuple[str, int]], comm: CountingComm, *, inputs=None, targets=None,
              in_shapes: Sequence[tuple[int, ...]] = (), out_shapes: Sequence[tuple[int, ...]] = (),
              loss_fn=F.mse_loss, batch: int, t0: float = 0.0, meter: LiveActivationMeter | None = None,
              lookahead: int = 2):
    """Run this rank's ops; return ``(events, outputs, cpu_seconds)``: timed :class:`Slot` s
    (seconds after ``t0``, compute only), the last stage's outputs per micro-batch, and the CPU
    time this thread spent inside the ops (less than their wall time when other programs took
    the core: ``cpu_seconds / busy wall seconds`` is the share of a core the rank really had).

    ``in_shapes[i]`` / ``out_shapes[i]``: micro-batch ``i``'s activation entering / leaving this
    stage. Loss of micro-batch ``i`` is weighted by its share of the batch, so the summed
    gradients equal the full batch's mean-loss gradients. Each receive is posted ``lookahead``
    receives early (tags: ``2i`` activations, ``2i+1`` gradients), so data arrives while this
    rank computes instead of after it asks."""
    _args.module("stage", stage)
    ops = _check_ops(ops)
    _args.instance("comm", comm, CountingComm, "a labkit.parallel.comm.CountingComm")
    batch = _args.positive_int("batch", batch)
    rank, world = comm.rank, comm.world_size
    first, last = rank == 0, rank == world - 1
    receive = _Receiver(ops, comm, in_shapes, out_shapes, lookahead)
    held, pending, events, outputs, cpu = {}, [], [], {}, 0.0
    for kind, i in ops:
        if kind == "F":
            x = inputs[i] if first else receive("F", i).requires_grad_()

            def forward(x=x, i=i):
                with meter if meter is not None else contextlib.nullcontext():
                    out = stage(x)
                    return out, loss_fn(out, targets[i]) * (len(out) / batch) if last else None

            (out, loss), slot, seconds = _timed(forward, comm, "F", i, t0)
            if last:
                outputs[i] = out.detach()
            else:
                pending.append(comm.isend(out.detach(), dst=rank + 1, tag=2 * i))
            held[i] = (x, loss if last else out)
        else:
            grad = None if last else receive("B", i)
            x, y = held.pop(i)
            _, slot, seconds = _timed(lambda y=y, grad=grad: torch.autograd.backward(y, grad), comm, "B", i, t0)
            if not first:
                pending.append(comm.isend(x.grad, dst=rank - 1, tag=2 * i + 1))
            del x, y
        events.append(slot)
        cpu += seconds
    for work in pending:
        work.wait()
    return events, [outputs[i] for i in sorted(outputs)], cpu


class _Receiver:
    """``receive(kind, i)``: the tensor for op ``(kind, i)``, its ``irecv`` posted ``lookahead``
    receives early, in the order this rank's ops need them (tags ``2i`` activations from the
    previous stage, ``2i+1`` gradients from the next)."""

    def __init__(self, ops, comm: CountingComm, in_shapes, out_shapes, lookahead: int):
        first, last = comm.rank == 0, comm.rank == comm.world_size - 1
        self.needs = [(k, i) for k, i in ops if (k == "F" and not first) or (k == "B" and not last)]
        self.comm, self.in_shapes, self.out_shapes, self.lookahead = comm, in_shapes, out_shapes, lookahead
        self.posted, self.n_posted, self.n_used = {}, 0, 0

    def __call__(self, kind: str, i: int) -> torch.Tensor:
        self.n_used += 1
        while self.n_posted < min(self.n_used + self.lookahead, len(self.needs)):
            k, j = self.needs[self.n_posted]
            rank = self.comm.rank
            self.posted[(k, j)] = (self.comm.irecv(self.in_shapes[j], src=rank - 1, tag=2 * j) if k == "F"
                                   else self.comm.irecv(self.out_shapes[j], src=rank + 1, tag=2 * j + 1))
            self.n_posted += 1
        return self.posted.pop((kind, i)).wait()


def _timed(fn, comm: CountingComm, kind: str, i: int, t0: float):
    """``(fn(), Slot, cpu_seconds)``: the op's wall interval after ``t0`` (the device synchronized
    before each clock reading, so a GPU's queued kernels count) and this thread's CPU time."""
    def now():
        synchronize(comm.device)
        return time.perf_counter()

    start, c0 = now(), time.thread_time()
    result = fn()
    end = now()
    return result, Slot(comm.rank, kind, i, start - t0, end - t0), time.thread_time() - c0


def _setup(width, depth, batch, micro_batches, seed):
    require_group("this pipeline worker")
    model, x, y = make_problem(width, depth, batch, seed=seed, device=rank_device())
    p, rank = dist.get_world_size(), dist.get_rank()
    stages = split_model(model.layers, p)
    xs, ys = x.tensor_split(micro_batches), y.tensor_split(micro_batches)
    h, widths = x[:1], []  # one row through the stages gives the shape at every cut
    with torch.no_grad():
        for s in stages:
            widths.append(tuple(h.shape[1:]))
            h = s(h)
    widths.append(tuple(h.shape[1:]))
    shapes = {"in_shapes": [(len(xi), *widths[rank]) for xi in xs],
              "out_shapes": [(len(xi), *widths[rank + 1]) for xi in xs]}
    return stages[rank], xs, ys, shapes


def pipeline_worker(width: int = 64, depth: int = 4, batch: int = 32, micro_batches: int = 4, *,
                    schedule: str = "gpipe", steps: int = 1, lr: float = 0.1, seed: int = 0) -> dict:
    """Train the split model ``steps`` SGD steps with a pipeline schedule; this rank reports its
    stage's parameter names, first-step gradients, final parameters, outputs (last rank), saved
    activation bytes (first step), bytes sent and the timed ops of every step."""
    if micro_batches > batch:
        raise ValueError(f"micro_batches={micro_batches} exceeds batch={batch}")
    stage, xs, ys, shapes = _setup(width, depth, batch, micro_batches, seed)
    comm = CountingComm(device=rank_device())
    ops = [(sl.kind, sl.micro) for sl in make_schedule(schedule, comm.world_size, micro_batches)
           if sl.stage == comm.rank]
    opt = torch.optim.SGD(stage.parameters(), lr=lr)
    report = {"rank": comm.rank, "names": [n for n, _ in stage.named_parameters()], "events": []}
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        meter = LiveActivationMeter(stage.parameters()) if step == 0 else None
        dist.barrier()
        t0 = time.perf_counter()
        events, outs, _ = run_stage(stage, ops, comm, inputs=xs, targets=ys, batch=batch, t0=t0, meter=meter,
                                    **shapes)
        report["events"].append(events)
        if step == 0:
            report["grads"] = {n: p.grad.cpu().clone() for n, p in stage.named_parameters()}
            report["output"] = torch.cat(outs).cpu() if outs else None
            report["saved_peak_bytes"] = meter.peak
            report["sent_bytes"] = comm.bytes("send")
        opt.step()
    report["params"] = {n: p.detach().cpu().clone() for n, p in stage.named_parameters()}
    return report


def bubble_worker(width: int = 256, depth: int = 4, micro_batch_size: int = 64, ms: Sequence[int] = (1, 2, 4, 8), *,
                  schedules: Sequence[str] = ("gpipe",), repeats: int = 3, seed: int = 0) -> list[dict]:
    """For each schedule and each ``m`` in ``ms``: one warm-up step measuring saved-activation
    bytes, then ``repeats`` timed steps (micro-batches of fixed size, so the work per op stays
    the same as ``m`` grows). Returns one row per (schedule, m) with this rank's timed ops."""
    if not ms or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in ms):
        raise ValueError(f"ms must be a non-empty list of positive ints, got {ms!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    rows = []
    for name in schedules:
        for m in ms:
            stage, xs, ys, shapes = _setup(width, depth, m * micro_batch_size, m, seed)
            # Equal stages: the first one also computes its input's gradient (one more matmul
            # per layer), as every stage inside a longer pipeline does.
            xs = [xi.detach().requires_grad_() for xi in xs]
            comm = CountingComm(device=rank_device())
            ops = [(sl.kind, sl.micro) for sl in make_schedule(name, comm.world_size, m) if sl.stage == comm.rank]
            runs, cpus, peak = [], [], 0
            for r in range(repeats + 1):
                meter = LiveActivationMeter(stage.parameters()) if r == 0 else None
                stage.zero_grad(set_to_none=True)
                dist.barrier()
                t0 = time.perf_counter()
                events, _, cpu = run_stage(stage, ops, comm, inputs=xs, targets=ys, batch=m * micro_batch_size,
                                           t0=t0, meter=meter, **shapes)
                if r == 0:
                    peak = meter.peak
                else:
                    runs.append(events)
                    cpus.append(cpu)
            rows.append({"schedule": name, "m": m, "rank": comm.rank, "runs": runs, "cpu_seconds": cpus,
                         "saved_peak_bytes": peak})
    return rows


def measured_bubbles(results: Sequence[Sequence[dict]]) -> list[dict]:
    """Combine :func:`bubble_worker`'s per-rank rows. Per (schedule, m): the idle share of each
    timed step (all ranks' ops together) and their median (``measured``), the formula, the
    median idle share of each step replayed with its own op durations and no communication
    cost (``replayed``), the share of a core the ranks had during their ops (``core_share``:
    CPU time / wall time; well below 1 means other programs competed and the timeline shows it),
    median op times, the per-rank saved bytes, and the median step's ops."""
    results = _args.sequence("results", results, what="one list of rows per rank (bubble_worker's output)")
    for r, rows in enumerate(results):
        _args.sequence(f"results[{r}]", rows, what="a list of rows")
    if not results or len({len(r) for r in results}) != 1:
        raise ValueError("results must hold one list of rows per rank, all of the same length (bubble_worker's output)")
    p = len(results)
    table = []
    for k, row in enumerate(results[0]):
        per_rank = [results[r][k] for r in range(p)]
        runs = [sum((pr["runs"][j] for pr in per_rank), []) for j in range(len(row["runs"]))]
        idle = [idle_fraction(ev) for ev in runs]
        replayed = [idle_fraction(replay(ev)) for ev in runs]
        cpu = sum(c for pr in per_rank for c in pr["cpu_seconds"])
        wall = sum(s.duration for ev in runs for s in ev)
        fwd = median(s.duration for ev in runs for s in ev if s.kind == "F")
        bwd = median(s.duration for ev in runs for s in ev if s.kind == "B")
        table.append({"schedule": row["schedule"], "m": row["m"], "measured": median(idle),
                      "formula": bubble_fraction(p, row["m"]), "runs": idle, "replayed": median(replayed),
                      "core_share": cpu / wall if wall > 0 else float("nan"), "t_forward": fwd, "t_backward": bwd,
                      "saved_peak_bytes": [pr["saved_peak_bytes"] for pr in per_rank],
                      "events": runs[min(range(len(idle)), key=lambda j: abs(idle[j] - median(idle)))]})
    return table


def torch_pipelining_worker(width: int = 64, depth: int = 4, batch: int = 32, micro_batches: int = 4, *,
                            seed: int = 0) -> dict:
    """The same split model through ``torch.distributed.pipelining`` (``PipelineStage`` +
    ``ScheduleGPipe``): this rank's gradients, and the outputs on the last rank."""
    require_group("torch_pipelining_worker")
    dev = rank_device()
    model, x, y = make_problem(width, depth, batch, seed=seed, device=dev)
    p, rank = dist.get_world_size(), dist.get_rank()
    stage_mod = split_model(model.layers, p)[rank]
    stage = PipelineStage(stage_mod, rank, p, dev)
    # ScheduleGPipe averages the micro-batch losses (scale_grads): the full batch's mean loss.
    sched = ScheduleGPipe(stage, n_microbatches=micro_batches, loss_fn=F.mse_loss)
    start = time.perf_counter()
    out = sched.step(x) if rank == 0 else sched.step(target=y) if rank == p - 1 else sched.step()
    seconds = time.perf_counter() - start
    return {"rank": rank, "grads": {n: q.grad.cpu().clone() for n, q in stage_mod.named_parameters()},
            "output": out.detach().cpu() if rank == p - 1 else None, "seconds": seconds}


def equivalence_worker(width: int = 64, depth: int = 4, batch: int = 32, micro_batches: int = 4, *,
                       steps: int = 3, seed: int = 0) -> dict:
    """One launch for lesson 04's checks: GPipe and 1F1B (``steps`` SGD steps each) and
    ``torch.distributed.pipelining``'s GPipe on the same split model."""
    return {"gpipe": pipeline_worker(width, depth, batch, micro_batches, steps=steps, seed=seed),
            "1f1b": pipeline_worker(width, depth, batch, micro_batches, schedule="1f1b", steps=steps, seed=seed),
            "torch": torch_pipelining_worker(width, depth, batch, micro_batches, seed=seed)}


