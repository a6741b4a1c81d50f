"""Observers watch the values flowing through a tensor and choose its quantization range.

Weights are known in advance; activations are not, so a quantized model is first *calibrated*:
a few batches run through it while observers record statistics, and each observer then turns
what it saw into a scale and zero-point (:func:`labkit.quantize.maths.qparams_from_minmax`):

* :class:`MinMaxObserver` - the smallest and largest value ever seen (one outlier stretches
  the grid for everyone);
* :class:`MovingAverageObserver` - ``min <- min + c (batch_min - min)``: an exponential moving
  average of per-batch extremes (what QAT uses while the weights move);
* :class:`PercentileObserver` - clips to the ``p``-th percentile of a sample of values, trading
  clipping error on rare outliers for a finer grid for the rest;
* :class:`MSEObserver` - tries shrunken ranges ``alpha * [min, max]`` and keeps the one with
  the lowest quantization mean squared error on a sample of values.

Min-max and moving-average observers take ``axis=`` for per-channel ranges and equal PyTorch's
``torch.ao.quantization`` observers (``tests/test_quantize_observers.py``).
Used by ``notebooks/06_quantization.ipynb``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from labkit import _args
from labkit.quantize.maths import _check_axis, check_bits, qparams_from_minmax, qrange

OBSERVERS = ("minmax", "moving_average", "percentile", "mse")


class Observer(nn.Module):
    """Base: ``forward(x)`` records ``x`` and returns it unchanged; ``calculate_qparams`` decides."""

    def __init__(self, *, axis: int | None = None):
        super().__init__()
        if axis is not None:
            _args.integer("axis", axis)
        self.axis = axis
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.batches = 0

    def _extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.axis is None:
            return x.min(), x.max()
        axis = _check_axis(self.axis, x.dim())
        rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        return rows.amin(1), rows.amax(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _args.tensor("x", x, dtype="floating")
        if x.numel():
            self._record(x.detach().float())
            self.batches += 1
        return x

    def _record(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def observed(self) -> bool:
        """True once some data went through (also after loading a calibrated state dict)."""
        return bool(torch.isfinite(self.min_val).all())

    def range(self, bits: int = 8, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(min, max)`` the grid should cover."""
        if not self.observed():
            raise ValueError(f"{type(self).__name__} has seen no data yet: calibrate first")
        return self.min_val, self.max_val

    def calculate_qparams(self, *, bits: int = 8, symmetric: bool = False,
                          signed: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero-point for what was observed."""
        lo, hi = self.range(check_bits(bits), symmetric)
        return qparams_from_minmax(lo, hi, bits=bits, symmetric=symmetric, signed=signed)

    def reset(self) -> None:
        self.min_val, self.max_val = torch.tensor(float("inf")), torch.tensor(float("-inf"))
        self.batches = 0

    def extra_repr(self) -> str:
        return f"axis={self.axis}, batches={self.batches}"


class MinMaxObserver(Observer):
    """Running minimum and maximum (per tensor, or per channel along ``axis``)."""

    def _record(self, x):
        lo, hi = self._extremes(x)
        if not self.observed():
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)


class MovingAverageObserver(Observer):
    """Exponential moving average of per-batch extremes: ``m <- m + c (batch - m)``."""

    def __init__(self, *, averaging_constant: float = 0.01, axis: int | None = None):
        super().__init__(axis=axis)
        if not 0 < _args.real("averaging_constant", averaging_constant) <= 1:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def _record(self, x):
        lo, hi = self._extremes(x)
        if not self.observed():
            self.min_val, self.max_val = lo, hi
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)


class _SampleObserver(Observer):
    """Keeps a random sample of the values seen (at most ``max_samples``) besides min and max."""

    def __init__(self, *, max_samples: int = 200_000, per_batch: int = 8192, generator: torch.Generator | None = None):
        super().__init__(axis=None)
        for name, v in (("max_samples", max_samples), ("per_batch", per_batch)):
            _args.positive_int(name, v)
        self.max_samples, self.per_batch = max_samples, per_batch
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.register_buffer("sample", torch.empty(0))

    def _record(self, x):
        lo, hi = self._extremes(x)
        first = not self.observed()
        self.min_val = lo if first else torch.minimum(self.min_val, lo)
        self.max_val = hi if first else torch.maximum(self.max_val, hi)
        flat = x.reshape(-1).cpu()
        if flat.numel() > self.per_batch:
            flat = flat[torch.randint(flat.numel(), (self.per_batch,), generator=self.generator)]
        self.sample = torch.cat([self.sample, flat])
        if self.sample.numel() > self.max_samples:
            keep = torch.randperm(self.sample.numel(), generator=self.generator)[: self.max_samples]
            self.sample = self.sample[keep]

    def reset(self) -> None:
        super().reset()
        self.sample = torch.empty(0)


class PercentileObserver(_SampleObserver):
    """Range from the ``(100 - p)``-th to the ``p``-th percentile of the sampled values."""

    def __init__(self, percentile: float = 99.99, **kwargs):
        super().__init__(**kwargs)
        if not 50 < _args.real("percentile", percentile) <= 100:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def range(self, bits=8, symmetric=False):
        super().range(bits, symmetric)
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
        lo, hi = torch.quantile(self.sample.double(), q.double()).float()
        return lo, hi


class MSEObserver(_SampleObserver):
    """Range ``alpha * [min, max]`` with the ``alpha`` (of ``steps`` in ``[0.2, 1]``) of least MSE."""

    def __init__(self, steps: int = 40, **kwargs):
        super().__init__(**kwargs)
        _args.positive_int("steps", steps)
        self.steps = steps

    def range(self, bits=8, symmetric=False):
        lo, hi = super().range(bits, symmetric)
        x = self.sample
        qmin, qmax = qrange(bits, signed=symmetric)
        best, best_err = (lo, hi), float("inf")
        for alpha in torch.linspace(1.0, 0.2, self.steps).tolist():
            s, z = qparams_from_minmax(lo * alpha, hi * alpha, bits=bits, symmetric=symmetric)
            x_hat = (torch.clamp(torch.round(x * (1.0 / s)) + z, qmin, qmax) - z) * s
            err = float(((x - x_hat) ** 2).mean())
            if err < best_err:
                best, best_err = (lo * alpha, hi * alpha), err
        return best


def make_observer(kind: str = "minmax", **kwargs) -> Observer:
    """An observer by name: ``minmax``, ``moving_average``, ``percentile`` or ``mse``."""
    classes = {"minmax": MinMaxObserver, "moving_average": MovingAverageObserver,
               "percentile": PercentileObserver, "mse": MSEObserver}
    _args.choice("kind", kind, OBSERVERS)
    return classes[kind](**kwargs)


@torch.no_grad()
def calibrate(model: nn.Module, data: Iterable, *, batches: int | None = None, device=None) -> int:
    """Run ``model`` in eval mode over ``data`` (a loader of ``(x, y)`` or of ``x``) so that its
    observers record activations; returns the number of examples seen.

    ``batches`` stops early. The model must hold observers (see ``labkit.quantize.prepare_``).
    """
    _args.module("model", model)
    _args.iterable("data", data, "an iterable of batches (a DataLoader)")
    if batches is not None:
        _args.positive_int("batches", batches)
    if not any(isinstance(m, Observer) for m in model.modules()):
        raise ValueError("model has no observers to calibrate: prepare it first (labkit.quantize.prepare_)")
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    model.eval()
    seen = 0
    for i, batch in enumerate(data):
        if batches is not None and i >= batches:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        model(x.to(device))
        seen += len(x)
    if seen == 0:
        raise ValueError("data yielded no batches")
    return seen
