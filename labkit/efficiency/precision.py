"""Mixed precision: what bfloat16 / float16 cost in accuracy, and what they buy in speed here.

Lesson ``02_one_device_efficiency`` (after ``01_cpu_vs_gpu_tpu``'s matmul measurements).
A floating-point format with e exponent bits and m mantissa bits has::

    machine epsilon = 2^-m          (the gap after 1.0: relative rounding error <= eps / 2)
    largest finite  ~ 2^(2^(e-1))   (float16 overflows past 65504, bfloat16 past ~3.4e38)

float32 is e=8, m=23; bfloat16 keeps float32's range (e=8) with m=7; float16 has more
precision (m=10) but a narrow range (e=5), so small gradients underflow to zero. That is why
float16 training multiplies the loss by a scale S before backward (gradients scale by S too),
divides the gradients by S before the step, and skips steps whose gradients overflowed
(:class:`NaiveLossScaler`, checked against ``torch.amp.GradScaler``). bfloat16 needs none of it.

``torch.autocast`` runs matmuls and convolutions in the low precision and keeps reductions
(losses, softmax, norms) in float32. It only pays where the hardware has low-precision units
(GPUs' tensor cores, TPUs, CPUs with AVX512-BF16 / AMX); elsewhere it is slower. Measure:
:func:`autocast_step_times`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from labkit import _args
from labkit.timing import compare
from labkit.train import make_train_step

LOW_PRECISION = (torch.bfloat16, torch.float16)


def _check_dtype(dtype) -> None:
    _args.instance("dtype", dtype, torch.dtype, "a floating torch.dtype")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")


def dtype_facts(dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16, torch.float16)) -> list[dict]:
    """Bits, exponent and mantissa bits, epsilon, largest and smallest normal value of each dtype
    (read from ``torch.finfo``)."""
    rows = []
    for dt in dtypes:
        _check_dtype(dt)
        fi = torch.finfo(dt)
        mantissa = round(-math.log2(fi.eps))
        rows.append({"dtype": str(dt).replace("torch.", ""), "bits": fi.bits, "exponent_bits": fi.bits - 1 - mantissa,
                     "mantissa_bits": mantissa, "eps": fi.eps, "max": fi.max, "tiny": fi.tiny})
    return rows


def round_to(x: float, dtype: torch.dtype) -> float:
    """The value ``x`` becomes when stored in ``dtype`` (round to nearest even)."""
    _args.real("x", x, finite=False)
    _check_dtype(dtype)
    return torch.tensor(float(x), dtype=torch.float64).to(dtype).item()


def running_sum(step: float, n: int, dtype: torch.dtype) -> float:
    """``step`` added ``n`` times to an accumulator kept in ``dtype``. In bfloat16, 1.0 added
    repeatedly stops growing at 256: past it, 256 + 1 rounds back to 256."""
    _args.real("step", step)
    _check_dtype(dtype)
    _args.non_negative_int("n", n)
    acc, inc = torch.zeros((), dtype=dtype), torch.tensor(step, dtype=dtype)
    for _ in range(n):
        acc = acc + inc
    return acc.item()


def matmul_relative_error(n: int, dtype: torch.dtype, *, generator: torch.Generator | None = None) -> float:
    """``||A B - ref|| / ||ref||`` for an ``n x n`` matmul in ``dtype`` (inputs rounded to it),
    against float64."""
    _check_dtype(dtype)
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    b = torch.randn(n, n, generator=generator, dtype=torch.float64)
    ref = a @ b
    got = (a.to(dtype) @ b.to(dtype)).double()
    return float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref))


def flushed_to_zero(values: torch.Tensor, dtype: torch.dtype, *, scale: float = 1.0) -> float:
    """Fraction of the non-zero ``values`` that become 0 when ``values * scale`` is stored in
    ``dtype`` (float16 gradients underflow; a loss scale lifts them back into range)."""
    _check_dtype(dtype)
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a tensor, got {type(values).__name__}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    nz = values[values != 0].double() * scale
    if nz.numel() == 0:
        raise ValueError("values has no non-zero entries")
    return float((nz.to(dtype) == 0).double().mean())


class NaiveLossScaler:
    """Dynamic loss scaling from scratch, with ``torch.amp.GradScaler``'s rules and defaults.

    ``scale(loss)`` returns ``loss * S``; ``step(optimizer)`` divides the gradients by S and
    steps only if all are finite; ``update()`` halves S after an overflow (``backoff_factor``)
    and doubles it after ``growth_interval`` clean steps in a row (``growth_factor``).
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale!r}")
        if not growth_factor > 1 or not 0 < backoff_factor < 1:
            raise ValueError("growth_factor must be > 1 and backoff_factor in (0, 1)")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval <= 0:
            raise ValueError(f"growth_interval must be a positive int, got {growth_interval!r}")
        self.scale_value, self.growth_factor, self.backoff_factor = float(init_scale), growth_factor, backoff_factor
        self.growth_interval, self._clean_steps, self.found_inf = growth_interval, 0, False

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale the gradients and step unless one is inf/NaN; returns whether it stepped."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        with torch.no_grad():
            for grad in grads:
                grad.mul_(1.0 / self.scale_value)
            self.found_inf = not all(bool(torch.isfinite(grad).all()) for grad in grads)
        if not self.found_inf:
            optimizer.step()
        return not self.found_inf

    def update(self) -> None:
        if self.found_inf:
            self.scale_value *= self.backoff_factor
            self._clean_steps = 0
        else:
            self._clean_steps += 1
            if self._clean_steps == self.growth_interval:
                self.scale_value *= self.growth_factor
                self._clean_steps = 0

    def get_scale(self) -> float:
        return self.scale_value


def autocast_supported(device_type: str, dtype: torch.dtype) -> bool:
    """True if a Linear layer runs under ``torch.autocast(device_type, dtype)`` here."""
    _args.text("device_type", device_type)
    _check_dtype(dtype)
    try:
        with torch.autocast(device_type, dtype=dtype):
            out = nn.Linear(4, 4).to(device_type)(torch.ones(2, 4, device=device_type))
        return out.dtype == dtype
    except (RuntimeError, ValueError, AssertionError):
        return False


def autocast_step_times(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16), train: bool = True,
                        loss_fn: Callable | None = None, lr: float = 1e-3, min_run_time: float = 0.3,
                        rounds: int = 3) -> list[dict]:
    """Median time of a training step (or, with ``train=False``, an inference forward) of
    ``model`` under ``torch.autocast`` for each dtype (float32 = autocast off), on ``x``'s
    device, timed in interleaved rounds, with its speed-up over the first dtype. Unsupported
    dtypes get ``seconds=nan``."""
    _args.module("model", model)
    _args.tensor("x", x, non_empty=True)
    _args.tensor("y", y)
    for i, dt in enumerate(_args.sequence("dtypes", dtypes, non_empty=True)):
        _args.instance(f"dtypes[{i}]", dt, torch.dtype)
    _args.boolean("train", train)
    _args.positive_float("lr", lr)
    _args.positive_float("min_run_time", min_run_time)
    _args.positive_int("rounds", rounds)
    dev = x.device
    loss_fn = loss_fn or nn.functional.cross_entropy

    def runner(dt):
        cast = None if dt == torch.float32 else dt
        if train:
            return make_train_step(model, x, y, loss_fn=loss_fn, lr=lr, device=dev, autocast_dtype=cast, copy_model=False)

        def run():
            with torch.autocast(dev.type, dtype=dt, enabled=cast is not None), torch.no_grad():
                return model(x)
        return run

    fns = {}
    for dt in dtypes:
        _check_dtype(dt)
        if dt == torch.float32 or autocast_supported(dev.type, dt):
            fns[str(dt).replace("torch.", "")] = runner(dt)
    times = {k: t["median"] for k, t in compare(fns, rounds=rounds, device=dev, min_run_time=min_run_time / rounds).items()} if fns else {}
    rows = [{"dtype": str(dt).replace("torch.", ""), "seconds": times.get(str(dt).replace("torch.", ""), math.nan)}
            for dt in dtypes]
    base = rows[0]["seconds"]
    for r in rows:
        r["speedup"] = base / r["seconds"] if r["seconds"] > 0 else math.nan
    return rows
