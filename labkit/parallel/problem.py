"""The lesson's training problem, shared by every parallel strategy (lesson 04).

:func:`make_problem` builds the same MLP, inputs and targets on every rank; :func:`reference_run`
trains it in one process, unsplit, which is what the pipeline and tensor-parallel workers must
reproduce (:func:`differences` measures how close they come). :class:`LiveActivationMeter`
counts the bytes autograd keeps for backward, live, so each strategy's activation memory can be
compared with :func:`labkit.parallel.strategies.strategy_table`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from labkit import _args
from labkit.devices import check_device
from labkit.models import MLP


def check_training(*, steps, lr, seed, batch_size=None) -> None:
    """The arguments every lesson-03/04 training run shares (single process, workers and the
    reference): checked here, once, before any process group is touched."""
    _args.positive_int("steps", steps)
    _args.positive_float("lr", lr)
    _args.non_negative_int("seed", seed)
    if batch_size is not None:
        _args.positive_int("batch_size", batch_size)


def make_problem(width: int = 64, depth: int = 4, batch: int = 32, *, seed: int = 0, device=None):
    """The lesson's model and data, identical on every rank: ``labkit.models.MLP`` with ``depth``
    equal ``width x width`` layers (equal-cost stages), inputs ``x`` and regression targets ``y``
    (drawn on the CPU, then moved to ``device``)."""
    for name, v in (("width", width), ("depth", depth), ("batch", batch)):
        _args.positive_int(name, v)
    _args.non_negative_int("seed", seed)
    torch.manual_seed(seed)  # layer initialisation uses the default generator
    model = MLP(input_shape=(width,), hidden=(width,) * (depth - 1), num_classes=width)
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randn(batch, width, generator=g), torch.randn(batch, width, generator=g)
    if device is None:
        return model, x, y
    dev = check_device(device)
    return model.to(dev), x.to(dev), y.to(dev)


class _Held:
    """What the pack hook stores: the tensor, plus a release of its bytes when autograd drops it."""

    __slots__ = ("meter", "key", "tensor")

    def __init__(self, meter, key, tensor):
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self):
        self.meter._release(self.key)


class LiveActivationMeter:
    """Bytes autograd keeps for backward *right now* (``current``) and at most (``peak``).

    Unlike :class:`labkit.efficiency.memory.SavedTensorMeter` (everything saved inside one ``with`` block,
    lesson 02), this one also sees bytes released when backward frees a micro-batch's graph,
    which is what a pipeline's peak depends on when forwards and backwards interleave (1F1B).
    Each saved tensor counts its own bytes (a micro-batch that is a view of the batch counts
    as the micro-batch); tensors at the same address and size count once; ``exclude`` (the
    parameters, held anyway) is not counted. Enter it around forwards.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._skip = {t.untyped_storage().data_ptr() for t in exclude}
        self._live: dict[tuple[int, int], list[int]] = {}
        self.current = self.peak = 0
        self._ctx = None

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    def _pack(self, t):
        if t.untyped_storage().data_ptr() in self._skip:
            return t
        key = (t.data_ptr(), t.numel() * t.element_size())
        entry = self._live.setdefault(key, [0, key[1]])
        if entry[0] == 0:
            self.current += key[1]
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        return _Held(self, key, t)

    @staticmethod
    def _unpack(held):
        return held.tensor if isinstance(held, _Held) else held

    def _release(self, key):
        entry = self._live[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self._live[key]


def reference_run(width: int = 64, depth: int = 4, batch: int = 32, *, steps: int = 1, lr: float = 0.1,
                  seed: int = 0) -> dict:
    """The same training in one process, unsplit: outputs and gradients of the first step, and
    the parameters after ``steps`` SGD steps (what :func:`pipeline_worker` must reproduce)."""
    check_training(steps=steps, lr=lr, seed=seed)
    model, x, y = make_problem(width, depth, batch, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    report = {}
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        out = model.layers(x)
        F.mse_loss(out, y).backward()
        if step == 0:
            report["output"] = out.detach()
            report["grads"] = {n: p.grad.clone() for n, p in model.layers.named_parameters()}
        opt.step()
    report["params"] = {n: p.detach().clone() for n, p in model.layers.named_parameters()}
    return report


def differences(results: Sequence[dict], reference: dict) -> dict:
    """Largest absolute differences between ranks' reports and a single-process reference:
    ``output`` (ranks that hold one), ``grads`` and ``params`` (each parameter from the rank
    that holds it; None when not reported) and ``missing`` (reference parameters no rank held)."""
    _args.rows("results", results)
    _args.mapping("reference", reference, what="a dict (from reference_run)")
    missing = [k for k in ("output", "grads", "params") if k not in reference]
    if missing:
        raise ValueError(f"reference lacks {missing}: pass reference_run()'s result")

    def worst(key):
        seen, diff = set(), 0.0
        for r in results:
            for name, t in (r.get(key) or {}).items():
                seen.add(name)
                diff = max(diff, float((t.cpu() - reference[key][name]).abs().max()))
        return (diff if seen else None), seen

    outs = [r["output"] for r in results if r.get("output") is not None]
    grads, held = worst("grads")
    params, _ = worst("params")
    return {"output": max(float((o - reference["output"]).abs().max()) for o in outs) if outs else None,
            "grads": grads, "params": params, "missing": sorted(set(reference["grads"]) - held)}
