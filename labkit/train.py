"""Training and evaluation loops with progress bars, seeding, and a history for plots.

``fit`` shows a ``tqdm.auto`` bar (a widget in Jupyter, text in a terminal; ``progress=False``
keeps it quiet) and returns a :class:`History`. ``seed_everything`` returns a
``torch.Generator`` to pass to loaders and initialisers: re-seed before building each model
you compare, so every comparison starts equal. ``fast_mode()`` reads ``LABKIT_FAST`` so CI can
shrink epochs with one switch (``pick(full, fast)``). Used by every lesson that trains.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from labkit import _args
from labkit.devices import get_device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch's default generators and return a fresh ``torch.Generator``.

    The returned generator is the one to hand to DataLoaders and random draws; seeding the
    global ones as well makes layer initialisation (which uses torch's default generator)
    repeatable.
    """
    seed = _args.non_negative_int("seed", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def fast_mode() -> bool:
    """True when ``LABKIT_FAST`` is set to a true value (CI runs notebooks this way): ``1/true/yes/on``
    (any case); ``0/false/no/off`` or unset is off, anything else a ValueError (see ``_args.env_flag``)."""
    return _args.env_flag("LABKIT_FAST")


def pick(full, fast):
    """``fast`` under ``LABKIT_FAST=1`` (CI), ``full`` otherwise (what a learner runs)."""
    return fast if fast_mode() else full


@dataclass
class History:
    """Per-epoch metrics: ``history.metrics['train_loss'] -> [..]`` etc."""

    metrics: dict[str, list[float]] = field(default_factory=dict)

    def log(self, **values: float) -> None:
        for k, v in values.items():
            self.metrics.setdefault(k, []).append(float(v))

    def __getitem__(self, key: str) -> list[float]:
        return self.metrics[key]

    def last(self, key: str) -> float:
        return self.metrics[key][-1]

    @property
    def epochs(self) -> int:
        return max((len(v) for v in self.metrics.values()), default=0)


def _batches(loader: Iterable, name: str = "loader") -> Iterable:
    return _args.iterable(name, loader, "an iterable of (x, y) batches (a DataLoader)")


def _check_optimizer(optimizer, model: nn.Module) -> None:
    """``optimizer`` must be a torch optimizer over ``model``'s own parameters (an optimizer built
    on another model would step that model's weights while this one never changes)."""
    _args.instance("optimizer", optimizer, torch.optim.Optimizer, "a torch.optim.Optimizer")
    own = {id(p) for p in model.parameters()}
    theirs = [p for g in optimizer.param_groups for p in g["params"]]
    if not theirs or not any(id(p) in own for p in theirs):
        raise ValueError("optimizer does not hold this model's parameters (was it built on another model, "
                         "or on a copy?): build it from model.parameters()")
    for g in optimizer.param_groups:
        if "lr" in g and not isinstance(g["lr"], torch.Tensor):
            _args.positive_float("optimizer's lr", g["lr"])


def _per_token(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence logits ``(B, T, V)`` with targets ``(B, T)`` (a language model) -> one row per
    token, ``(B*T, V)`` and ``(B*T,)``, so the loss and accuracy are per token; else unchanged."""
    if out.dim() == 3 and y.dim() == 2:
        return out.reshape(-1, out.size(-1)), y.reshape(-1)
    return out, y


def _model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; the CPU for a model with neither
    (an ONNX Runtime wrapper, a layer holding only integer buffers)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device=None, loss_fn: Callable | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` over ``loader`` (model put in eval mode)."""
    _args.module("model", model)
    _batches(loader)
    if loss_fn is not None:
        _args.function("loss_fn", loss_fn)
    dev = get_device(device) if device is not None else _model_device(model)
    loss_fn = loss_fn or nn.functional.cross_entropy
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in _batches(loader):
        x, y = x.to(dev), y.to(dev)
        out, y = _per_token(model(x), y)
        loss_sum += float(loss_fn(out, y)) * len(y)
        correct += int((out.argmax(1) == y).sum())
        total += len(y)
    if total == 0:
        raise ValueError("loader yielded no data")
    return {"loss": loss_sum / total, "accuracy": correct / total}


def accuracy(model: nn.Module, loader: Iterable, *, device=None) -> float:
    """Fraction of correct predictions over ``loader``."""
    return evaluate(model, loader, device=device)["accuracy"]


@dataclass
class BatchLoss:
    """What a batch-loss hook (``batch_loss=`` of :func:`train_epoch` and :func:`fit`) returns.

    ``loss`` is the batch's mean loss, the tensor that is back-propagated; ``n`` the number of
    samples (or tokens) it averages over; ``totals`` other metrics summed over those samples
    (e.g. ``{"accuracy": correct predictions}``). The epoch reports ``sum(loss * n) / sum(n)``
    and ``sum(totals[k]) / sum(n)`` for each metric ``k``: exact per-sample means over the epoch.
    """

    loss: torch.Tensor
    n: int
    totals: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        _args.tensor("loss", self.loss, dtype="floating", shape=())
        _args.positive_int("n", self.n)
        _args.mapping("totals", self.totals)


def cross_entropy_batch(loss_fn: Callable | None = None) -> Callable[[nn.Module, tuple], BatchLoss]:
    """The default batch loss: ``loss_fn(model(x), y)`` (cross-entropy unless given) on an ``(x, y)``
    batch already on the model's device, with the number of correct predictions as ``accuracy``.
    Sequence logits ``(B, T, V)`` with ``(B, T)`` targets count per token."""
    loss_fn = nn.functional.cross_entropy if loss_fn is None else _args.function("loss_fn", loss_fn)

    def batch_loss(model: nn.Module, batch) -> BatchLoss:
        x, y = batch
        out, y = _per_token(model(x), y)
        loss = loss_fn(out, y)
        return BatchLoss(loss, len(y), {"accuracy": int((out.detach().argmax(1) == y).sum())})

    return batch_loss


def _to(batch, dev: torch.device):
    """Every tensor of a batch (a tuple/list of tensors, or one tensor) moved to ``dev``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(dev)
    return type(batch)(b.to(dev) if isinstance(b, torch.Tensor) else b for b in batch)


def _as_batch_loss(result, batch) -> BatchLoss:
    """A hook's result as a :class:`BatchLoss`: a bare loss tensor averages over ``len(batch[0])``."""
    if isinstance(result, BatchLoss):
        return result
    if isinstance(result, torch.Tensor):
        first = batch if isinstance(batch, torch.Tensor) else batch[0]
        return BatchLoss(result, len(first))
    raise TypeError(f"batch_loss must return a loss tensor or a labkit.train.BatchLoss, got {type(result).__name__}")


def train_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, *, device=None,
                loss_fn: Callable | None = None, progress: bool = True, desc: str = "train",
                after_step: Callable[[nn.Module], None] | None = None,
                batch_loss: Callable[[nn.Module, object], torch.Tensor | BatchLoss] | None = None) -> dict[str, float]:
    """One pass over ``loader``: per batch, zero the gradients, compute the loss, back-propagate,
    step the optimizer, then ``after_step(model)`` (pruning uses it to re-apply masks).

    The loss of a batch is ``batch_loss(model, batch)`` (the batch moved to the device): a loss
    tensor, or a :class:`BatchLoss` carrying the number of samples and other metrics' totals.
    By default it is :func:`cross_entropy_batch` with ``loss_fn(model(x), y)``; give one of
    ``loss_fn`` and ``batch_loss``, not both. Returns the epoch's mean ``loss`` and the mean of
    every metric the batches reported (``accuracy`` by default). Distillation
    (:func:`labkit.distill.distill`) trains through this loop with its own ``batch_loss``.
    """
    _args.module("model", model)
    _batches(loader)
    _check_optimizer(optimizer, model)
    step_loss = _batch_loss_hook(loss_fn, batch_loss)
    if after_step is not None:
        _args.function("after_step", after_step)
    dev = get_device(device) if device is not None else next(model.parameters()).device
    model.train()
    total, sums = 0, {"loss": 0.0}
    for batch in tqdm(_batches(loader), desc=desc, leave=False, disable=not progress):
        batch = _to(batch, dev)
        optimizer.zero_grad(set_to_none=True)
        result = _as_batch_loss(step_loss(model, batch), batch)
        result.loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(model)
        total += result.n
        sums["loss"] += float(result.loss.detach()) * result.n
        for k, v in result.totals.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    if total == 0:
        raise ValueError("loader yielded no data")
    return {k: v / total for k, v in sums.items()}


def _batch_loss_hook(loss_fn, batch_loss):
    """The batch-loss hook ``train_epoch`` and ``fit`` use: ``batch_loss`` or the default built on ``loss_fn``."""
    if batch_loss is None:
        return cross_entropy_batch(loss_fn)
    _args.function("batch_loss", batch_loss)
    if loss_fn is not None:
        raise ValueError("give loss_fn (of logits and targets) or batch_loss (of the model and a batch), not both")
    return batch_loss


def fit(model: nn.Module, train_loader: Iterable, *, epochs: int = 1, val_loader: Iterable | None = None,
        optimizer: torch.optim.Optimizer | None = None, lr: float = 1e-3, loss_fn: Callable | None = None,
        device=None, progress: bool = True, after_step: Callable[[nn.Module], None] | None = None,
        batch_loss: Callable[[nn.Module, object], torch.Tensor | BatchLoss] | None = None,
        desc: str = "epochs") -> History:
    """Train ``model`` for ``epochs`` epochs (Adam with ``lr`` unless an optimizer is given) with
    :func:`train_epoch` (``loss_fn`` / ``batch_loss`` / ``after_step`` are passed on to it).

    Returns a :class:`History` with ``train_loss`` and, per metric the batches report,
    ``train_acc`` for ``accuracy`` (the default) or the metric's own name (a custom
    ``batch_loss``'s totals), and, given ``val_loader``, ``val_loss`` and ``val_acc`` per epoch
    (:func:`evaluate` with ``loss_fn``). The model is moved to ``device`` first.
    """
    _args.module("model", model)
    _batches(train_loader, "train_loader")
    _args.positive_int("epochs", epochs)
    _args.positive_float("lr", lr)
    if val_loader is not None:
        _batches(val_loader, "val_loader")
    if optimizer is not None:
        _check_optimizer(optimizer, model)
    for name, fn in (("loss_fn", loss_fn), ("after_step", after_step)):
        if fn is not None:
            _args.function(name, fn)
    _batch_loss_hook(loss_fn, batch_loss)
    _args.boolean("progress", progress)
    _args.text("desc", desc)
    dev = get_device(device)
    model.to(dev)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    history = History()
    bar = tqdm(range(epochs), desc=desc, disable=not progress)
    for _ in bar:
        tr = train_epoch(model, train_loader, optimizer, device=dev, loss_fn=loss_fn, progress=progress,
                         after_step=after_step, batch_loss=batch_loss)
        history.log(train_loss=tr.pop("loss"), **{"train_acc" if k == "accuracy" else k: v for k, v in tr.items()})
        if val_loader is not None:
            va = evaluate(model, val_loader, device=dev, loss_fn=loss_fn)
            history.log(val_loss=va["loss"], val_acc=va["accuracy"])
            bar.set_postfix(loss=f"{history.last('train_loss'):.3f}", val_acc=f"{va['accuracy']:.3f}")
        else:
            bar.set_postfix(loss=f"{history.last('train_loss'):.3f}")
    return history


def _as_inputs(inputs) -> tuple[torch.Tensor, ...]:
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    if not isinstance(inputs, (tuple, list)) or not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError("inputs must be a tensor or a non-empty tuple of tensors (e.g. model.example_inputs())")
    return tuple(inputs)


def make_train_step(model: torch.nn.Module, inputs, targets: torch.Tensor, *, loss_fn: Callable | None = None,
                    device=None, lr: float = 0.01, autocast_dtype: torch.dtype | None = None,
                    copy_model: bool = True) -> Callable[[], torch.Tensor]:
    """Return ``step()``: one SGD training step of ``model`` (by default of a *copy*) on ``device``.

    One step = zero the gradients, forward, loss against ``targets``, backward,
    ``p -= lr * p.grad`` (``torch.optim.SGD``). ``loss_fn(outputs, targets)`` defaults to
    cross-entropy (on float32 logits; ``targets`` then int64 class indices). With ``copy_model``
    the caller's model is left untouched and the copy that trains is ``step.model``; without,
    ``model`` itself (e.g. a ``torch.compile`` wrapper) trains where it is. ``autocast_dtype``
    (e.g. ``torch.bfloat16``) runs forward and loss under ``torch.autocast`` for that device.
    ``step()`` returns the loss (a tensor, not synchronized). The one training step of the course:
    ``labkit.hardware.time_train_step`` (lesson 01), ``labkit.efficiency.precision`` and
    ``labkit.efficiency.compiling`` (lesson 02).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inputs = _as_inputs(inputs)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")
    if not isinstance(targets, torch.Tensor) or (loss_fn is None and targets.dtype != torch.int64):
        raise TypeError("targets must be an int64 tensor of class indices" if loss_fn is None else
                        f"targets must be a tensor, got {type(targets).__name__}")
    if len(targets) != len(inputs[0]):
        raise ValueError(f"targets has {len(targets)} labels but the batch has {len(inputs[0])} inputs")
    _args.positive_float("lr", lr)
    if autocast_dtype is not None and (not isinstance(autocast_dtype, torch.dtype) or not autocast_dtype.is_floating_point):
        raise TypeError(f"autocast_dtype must be None or a floating torch.dtype, got {autocast_dtype!r}")
    dev = get_device(device)
    net = copy.deepcopy(model).to(dev).train() if copy_model else model
    xs = tuple(x.to(dev) for x in inputs)
    ys = targets.to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=lr)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = net(*xs)
            loss = torch.nn.functional.cross_entropy(out.float(), ys) if loss_fn is None else loss_fn(out, ys)
        loss.backward()
        opt.step()
        return loss.detach()

    step.model = net
    return step
