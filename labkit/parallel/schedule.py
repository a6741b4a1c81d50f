"""Pipeline schedules as plain data: who computes what, when (lesson ``04_model_parallelism``).

A model cut into ``p`` stages (one per rank) processes a batch split into ``m`` micro-batches.
Each stage runs a forward ``F`` and a backward ``B`` for every micro-batch, and both wait on a
neighbour: ``F(s, i)`` needs ``F(s-1, i)`` (the activation), ``B(s, i)`` needs ``B(s+1, i)`` (the
gradient through the cut; on the last stage it needs its own ``F``). A *schedule* is the order in
which each stage runs its ``2m`` operations; :func:`simulate` turns orders plus the cost of an
``F`` and a ``B`` into timed :class:`Slot` s, so the same code explains the plan and, fed with
measured times, the run.

* **GPipe** (:func:`gpipe`): every forward, then every backward. Time ``(m+p-1)(t_F+t_B)``, of
  which each stage is busy ``m(t_F+t_B)``: the idle share, the *bubble*, is
  ``(p-1)/(m+p-1)`` (:func:`bubble_fraction`). Each stage holds the activations of all ``m``
  micro-batches before its first backward.
* **1F1B** (:func:`one_f_one_b`): after ``p-1-s`` warm-up forwards, stage ``s`` alternates one
  forward and one backward. Same bubble, but at most ``p - s`` micro-batches in flight
  (:func:`peak_in_flight`), so activation memory stops growing with ``m``.
* **Interleaved 1F1B** (:func:`interleaved`, Megatron-LM's schedule, Narayanan et al. 2021): each
  rank holds ``v`` *virtual stages* (model chunks) instead of one - chunk ``k`` of rank ``s`` is
  virtual stage ``k*p + s`` - so an op costs ``t_F/v`` and the fill and drain shrink by ``v``:
  the bubble is ``(p-1)/(v*m + p-1)``, at the price of ``(p*v-1)/(p-1)`` times the point-to-point
  sends (a micro-batch crosses ``p*v-1`` cuts, not ``p-1``) and more micro-batches in flight. Like Megatron, it needs ``m`` to be a multiple of ``p``.

An op is ``(kind, micro)`` or, with virtual stages, ``(kind, micro, chunk)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from labkit import _args

KINDS = ("F", "B")


@dataclass(frozen=True)
class Slot:
    """One operation of a schedule: stage ``stage`` runs ``kind`` ('F' or 'B') of micro-batch
    ``micro`` from ``start`` to ``end`` (time units when planned, seconds when measured), on its
    model chunk ``chunk`` (always 0 unless the schedule is interleaved)."""

    stage: int
    kind: str
    micro: int
    start: float
    end: float
    chunk: int = 0

    def __post_init__(self):
        _args.fields(self)
        _args.non_negative_int("stage", self.stage)
        _args.choice("kind", self.kind, KINDS)
        _args.non_negative_int("micro", self.micro)
        _args.real("start", self.start)
        _args.real("end", self.end, minimum=self.start)
        _args.non_negative_int("chunk", self.chunk)

    @property
    def duration(self) -> float:
        return self.end - self.start


def bubble_fraction(stages: int, micro_batches: int, virtual_stages: int = 1) -> float:
    """Idle share of a GPipe (or 1F1B) step with equal-cost stages: ``(p-1)/(m+p-1)``; with ``v``
    virtual stages per rank (interleaved 1F1B) ``(p-1)/(v*m + p-1)``."""
    p, m = _args.positive_int("stages", stages), _args.positive_int("micro_batches", micro_batches)
    v = _args.positive_int("virtual_stages", virtual_stages)
    return (p - 1) / (v * m + p - 1)


def gpipe_order(stages: int, micro_batches: int) -> list[list[tuple[str, int]]]:
    """Per stage: ``F0 .. F(m-1)`` then ``B0 .. B(m-1)`` (torch's ``ScheduleGPipe`` order)."""
    p, m = _args.positive_int("stages", stages), _args.positive_int("micro_batches", micro_batches)
    return [[("F", i) for i in range(m)] + [("B", i) for i in range(m)] for _ in range(p)]


def one_f_one_b_order(stages: int, micro_batches: int) -> list[list[tuple[str, int]]]:
    """Per stage ``s``: ``min(p-1-s, m)`` warm-up forwards, then F/B pairs, then the last backwards."""
    p, m = _args.positive_int("stages", stages), _args.positive_int("micro_batches", micro_batches)
    orders = []
    for s in range(p):
        warm = min(p - 1 - s, m)
        ops = [("F", i) for i in range(warm)]
        for i in range(m - warm):
            ops += [("F", warm + i), ("B", i)]
        ops += [("B", i) for i in range(m - warm, m)]
        orders.append(ops)
    return orders


def interleaved_order(stages: int, micro_batches: int, virtual_stages: int = 2) -> list[list[tuple[str, int, int]]]:
    """Per rank ``s``, Megatron-LM's interleaved 1F1B order of ``(kind, micro, chunk)`` ops.

    Forwards go in groups of ``p`` micro-batches per chunk (chunk 0, 1, .., v-1, then the next
    ``p`` micro-batches), backwards the same with the chunks reversed. Rank ``s`` warms up with
    ``2(p-1-s) + (v-1)p`` forwards (at most all ``m*v``), then alternates one forward and one
    backward, then drains. ``m`` must be a multiple of ``p``. This is the order PyTorch's
    ``ScheduleInterleaved1F1B`` runs (tested); Megatron-LM runs every forward first when ``m == p``.
    """
    p, m = _args.positive_int("stages", stages), _args.positive_int("micro_batches", micro_batches)
    v = _args.positive_int("virtual_stages", virtual_stages)
    if m % p:
        raise ValueError(f"micro_batches must be a multiple of stages ({p}) for the interleaved schedule, got {m}")
    total = m * v

    def op(kind: str, k: int) -> tuple[str, int, int]:
        group = (k // p) % v
        return kind, (k // (p * v)) * p + k % p, group if kind == "F" else v - 1 - group

    orders = []
    for s in range(p):
        warm = min(2 * (p - 1 - s) + (v - 1) * p, total)
        ops = [op("F", k) for k in range(warm)]
        for k in range(total - warm):
            ops += [op("F", warm + k), op("B", k)]
        ops += [op("B", k) for k in range(total - warm, total)]
        orders.append(ops)
    return orders


def _normalised(orders) -> tuple[list[list[tuple[str, int, int]]], int, int]:
    """Orders as ``(kind, micro, chunk)`` ops, with ``m`` and ``v``; ValueError if any rank's ops
    are not each ``F`` and ``B`` of every (micro-batch, chunk) once."""
    ops = []
    for row in _args.sequence("orders", orders, of=(list, tuple), non_empty=True,
                              what="a list with one list of ops per stage"):
        ops.append([tuple(op) + (0,) if len(op) == 2 else tuple(op) for op in row])
    m = sum(1 for op in ops[0] if op[0] == "F" and op[2] == 0)
    v = 1 + max((op[2] for row in ops for op in row if isinstance(op[2], int)), default=0)
    want = sorted((k, i, c) for k in KINDS for i in range(m) for c in range(v))
    for s, row in enumerate(ops):
        try:
            ok = sorted(row) == want
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"orders[{s}] must hold ('F', i) and ('B', i) once for each i in 0..{m - 1}"
                             + (f" and each chunk in 0..{v - 1}" if v > 1 else "") + f", got {list(orders[s])}")
    return ops, m, v


def simulate(orders: Sequence[Sequence[tuple[str, int]]], *, t_forward: float = 1.0,
             t_backward: float = 2.0, durations: Mapping[tuple[int, str, int], float] | None = None) -> list[Slot]:
    """Time a schedule: each op starts when its stage is free and its dependency has ended.

    ``orders[s]`` lists stage ``s``'s ops as ``('F', i)`` / ``('B', i)``, or ``('F', i, k)`` on
    model chunk ``k`` (virtual stage ``k*p + s``); every stage must run each micro-batch's F and B
    once per chunk. ``F`` waits on the previous virtual stage's ``F``, ``B`` on its own ``F`` and
    the next virtual stage's ``B``. An op lasts ``t_forward`` / ``t_backward``, unless
    ``durations[(stage, kind, micro)]`` (or ``[(stage, kind, micro, chunk)]``) says otherwise.
    Raises ValueError if the orders deadlock.
    """
    tf, tb = _args.positive_float("t_forward", t_forward), _args.positive_float("t_backward", t_backward)
    orders, m, v = _normalised(orders)
    p = len(orders)
    last = p * v - 1
    end: dict[tuple[int, str, int, int], float] = {}
    free, nxt, slots = [0.0] * p, [0] * p, []
    while len(slots) < 2 * m * p * v:
        progressed = False
        for s in range(p):
            while nxt[s] < len(orders[s]):
                kind, i, c = orders[s][nxt[s]]
                vs = c * p + s  # the virtual stage; its neighbours live on ranks s-1 and s+1 (mod p)
                if kind == "F":
                    deps = [((vs - 1) % p, "F", i, (vs - 1) // p)] if vs > 0 else []
                else:
                    deps = [(s, "F", i, c)] + ([((vs + 1) % p, "B", i, (vs + 1) // p)] if vs < last else [])
                if any(d not in end for d in deps):
                    break
                start = max([free[s]] + [end[d] for d in deps])
                cost = None
                if durations:
                    cost = durations.get((s, kind, i, c), durations.get((s, kind, i)) if c == 0 else None)
                stop = start + (cost if cost is not None else tf if kind == "F" else tb)
                slots.append(Slot(s, kind, i, start, stop, c))
                end[(s, kind, i, c)], free[s] = stop, stop
                nxt[s] += 1
                progressed = True
        if not progressed:
            raise ValueError("orders deadlock: every stage waits on an op that never runs")
    return sorted(slots, key=lambda sl: (sl.stage, sl.start))


def gpipe(stages: int, micro_batches: int, *, t_forward: float = 1.0, t_backward: float = 2.0) -> list[Slot]:
    """The timed GPipe schedule (all forwards, then all backwards)."""
    return simulate(gpipe_order(stages, micro_batches), t_forward=t_forward, t_backward=t_backward)


def one_f_one_b(stages: int, micro_batches: int, *, t_forward: float = 1.0, t_backward: float = 2.0) -> list[Slot]:
    """The timed 1F1B schedule (PipeDream-Flush / Megatron's non-interleaved schedule)."""
    return simulate(one_f_one_b_order(stages, micro_batches), t_forward=t_forward, t_backward=t_backward)


def interleaved(stages: int, micro_batches: int, virtual_stages: int = 2, *, t_forward: float = 1.0,
                t_backward: float = 2.0) -> list[Slot]:
    """The timed interleaved 1F1B schedule. ``t_forward`` / ``t_backward`` are a rank's whole
    share of the model, as for :func:`one_f_one_b`, so each chunk's op lasts ``t/v``: the work
    is the same and only the bubble changes."""
    v = _args.positive_int("virtual_stages", virtual_stages)
    tf, tb = _args.positive_float("t_forward", t_forward), _args.positive_float("t_backward", t_backward)
    return simulate(interleaved_order(stages, micro_batches, v), t_forward=tf / v, t_backward=tb / v)


def replay(measured: Sequence[Slot]) -> list[Slot]:
    """Re-simulate a measured run: each stage's ops in the order they ran, each lasting as long
    as it did, with instant communication. ``idle_fraction(measured) - idle_fraction(replay)``
    is the idle time that uneven op durations don't explain (send/recv, waiting on the OS)."""
    measured = _check_slots(measured, "measured")
    stages = sorted({s.stage for s in measured})
    if stages != list(range(len(stages))):
        raise ValueError(f"measured slots must cover stages 0..p-1, got {stages}")
    orders = [[(s.kind, s.micro, s.chunk) for s in sorted((x for x in measured if x.stage == st), key=lambda x: x.start)]
              for st in stages]
    return simulate(orders, durations={(s.stage, s.kind, s.micro, s.chunk): s.duration for s in measured})


SCHEDULES = {"gpipe": gpipe, "1f1b": one_f_one_b, "interleaved": interleaved}


def make_schedule(name: str, stages: int, micro_batches: int, **options) -> list[Slot]:
    """``make_schedule('gpipe' | '1f1b' | 'interleaved', p, m)``; ``virtual_stages=v`` for the
    interleaved one, ``t_forward`` / ``t_backward`` for all."""
    _args.choice("name", name, sorted(SCHEDULES))
    return SCHEDULES[name](stages, micro_batches, **options)


def _check_slots(slots, name: str = "slots") -> list[Slot]:
    return _args.sequence(name, slots, of=Slot, non_empty=True, what="a list of Slot")


def idle_fraction(slots: Sequence[Slot]) -> float:
    """Measured bubble of any timed schedule: ``1 - busy / (stages x makespan)``.

    Planned slots give :func:`bubble_fraction` (up to float rounding); measured slots (seconds) give the real
    idle share, waiting on communication included.
    """
    slots = _check_slots(slots)
    stages = len({s.stage for s in slots})
    span = max(s.end for s in slots) - min(s.start for s in slots)
    return 1.0 - sum(s.duration for s in slots) / (stages * span)


def peak_in_flight(slots: Sequence[Slot]) -> list[int]:
    """Per stage, the most micro-batches whose forward ended but whose backward has not: the
    number of activation sets that stage must hold at once."""
    slots = _check_slots(slots)
    peaks = []
    for s in sorted({sl.stage for sl in slots}):
        live = peak = 0
        for sl in sorted((x for x in slots if x.stage == s), key=lambda x: (x.start, x.kind == "F")):
            live += 1 if sl.kind == "F" else -1
            peak = max(peak, live)
        peaks.append(peak)
    return peaks


def slot_at(slots: Sequence[Slot], stage: int, t: float) -> Slot | None:
    """The op stage ``stage`` runs at time ``t`` (start inclusive, end exclusive), or None if idle."""
    slots = _check_slots(slots)
    _args.non_negative_int("stage", stage)
    _args.real("t", t)
    for sl in slots:
        if sl.stage == stage and sl.start <= t < sl.end:
            return sl
    return None


def render(slots: Sequence[Slot]) -> str:
    """The schedule as text, one row per stage and one column per time unit ('.' = idle).

    Needs whole-number times (planned schedules with integer costs)."""
    slots = _check_slots(slots)
    if any(float(s.start) != int(s.start) or float(s.end) != int(s.end) for s in slots):
        raise ValueError("render needs whole-number start/end times (use integer t_forward / t_backward)")
    stages = sorted({s.stage for s in slots})
    span = int(max(s.end for s in slots))
    width = 1 + len(str(max(s.micro for s in slots)))
    rows = []
    for st in stages:
        cells = ["." * width] * span
        for sl in slots:
            if sl.stage == st:
                for t in range(int(sl.start), int(sl.end)):
                    cells[t] = f"{sl.kind}{sl.micro}".ljust(width)
        rows.append(f"stage {st} | " + " ".join(cells))
    return "\n".join(rows)
