"""The distillation training loop: ``distill(student, teacher, loader, ...)``.

Each step runs the teacher (eval mode, no gradients) or takes its logits precomputed in the batch,
then trains the student on :func:`labkit.distill.loss.distillation_loss`, optionally plus a FitNets
feature hint (:class:`labkit.distill.feature.FeatureHint`). Returns a :class:`labkit.train.History`
like ``labkit.train.fit``. ``gap_closed`` scores a distilled student between scratch and teacher.
Used by ``07_distillation`` and ``08_compression_capstone``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from labkit import _args
from labkit.devices import get_device
from labkit.distill.loss import IGNORE_INDEX, hard_label_loss, soft_target_loss
from labkit.train import BatchLoss, History, fit


def distill(student: nn.Module, teacher: nn.Module | None, loader: Iterable, *, epochs: int = 1,
            temperature: float = 4.0, alpha: float = 0.9, lr: float = 1e-3,
            optimizer: torch.optim.Optimizer | None = None, val_loader: Iterable | None = None,
            hint=None, hint_weight: float = 1.0, ignore_index: int = IGNORE_INDEX, device=None,
            progress: bool = True) -> History:
    """Train ``student`` to match ``teacher`` with :func:`distillation_loss`; return a History.

    ``loader`` yields ``(x, y)`` batches - the teacher then runs on each batch in eval mode under
    ``torch.no_grad()`` - or ``(x, y, teacher_logits)`` with the teacher's answers computed once
    beforehand (``teacher`` may then be None; valid only while the inputs stay the same from
    epoch to epoch). ``y`` may hold ``ignore_index`` for unlabelled images. ``hint`` (a
    :class:`labkit.distill.feature.FeatureHint`) adds ``hint_weight * ||r(student feature) -
    teacher feature||^2`` (FitNets). History keys: ``train_loss``, ``soft_loss``, ``hard_loss``,
    ``hint_loss`` (with a hint), ``agreement`` (student argmax == teacher argmax), and
    ``val_loss`` / ``val_acc`` given ``val_loader``. Student, teacher and hint are moved to
    ``device``; the default optimizer (Adam, ``lr``) covers the student's and the hint regressor's
    parameters - a custom ``optimizer`` must include the regressor itself. The epochs, progress
    bars and history are :func:`labkit.train.fit`'s, with :func:`distill_batch_loss` as the
    batch loss. Used by 07_distillation and the capstone (08).
    """
    _args.module("student", student)
    if teacher is not None:
        _args.module("teacher", teacher)
    if teacher is student:
        raise ValueError("teacher and student must be different modules")
    _args.iterable("loader", loader, "an iterable of (x, y) or (x, y, teacher_logits) batches")
    _args.positive_int("epochs", epochs)
    batch_loss = distill_batch_loss(teacher, temperature=temperature, alpha=alpha, hint=hint,
                                    hint_weight=hint_weight, ignore_index=ignore_index)
    _args.positive_float("lr", lr)
    if val_loader is not None:
        _args.iterable("val_loader", val_loader, "an iterable of (x, y) batches")
    _args.boolean("progress", progress)
    dev = get_device(device)
    student.to(dev)
    params = list(student.parameters())
    if hint is not None:
        hint.to(dev)
        params += list(hint.parameters())
    optimizer = optimizer or torch.optim.Adam(params, lr=lr)
    was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.to(dev).eval()
    try:
        return fit(student, loader, epochs=epochs, val_loader=val_loader, optimizer=optimizer, device=dev,
                   progress=progress, batch_loss=batch_loss, desc="distill")
    finally:
        if teacher is not None:
            teacher.train(was_training)


def distill_batch_loss(teacher: nn.Module | None, *, temperature: float = 4.0, alpha: float = 0.9, hint=None,
                       hint_weight: float = 1.0, ignore_index: int = IGNORE_INDEX):
    """The batch loss :func:`distill` trains with (a ``batch_loss`` for :func:`labkit.train.fit`):
    ``(1 - alpha) * hard + alpha * soft (+ hint_weight * hint)`` on an ``(x, y)`` batch (the
    teacher's logits computed under ``torch.no_grad()``) or an ``(x, y, teacher_logits)`` one,
    reporting the soft, hard and hint losses and the agreement with the teacher as totals."""
    if teacher is not None:
        _args.module("teacher", teacher)
    t = _args.positive_float("temperature", temperature)
    a = _args.fraction("alpha", alpha)
    _args.integer("ignore_index", ignore_index)
    if hint is not None and teacher is None:
        raise ValueError("hint needs the teacher to run on every batch: pass teacher=")
    hint_weight = _args.non_negative_float("hint_weight", hint_weight)

    def batch_loss(student: nn.Module, batch) -> BatchLoss:
        x, y, z_t = _teacher_logits(teacher, batch, hint)
        z_s = student(x)
        soft = soft_target_loss(z_s, z_t, temperature=t)
        hard = hard_label_loss(z_s, y, ignore_index=ignore_index)
        loss = (1.0 - a) * hard + a * soft
        n = len(x)
        totals = {"soft_loss": float(soft.detach()) * n, "hard_loss": float(hard.detach()) * n}
        if hint is not None:
            h = hint.loss()
            loss = loss + hint_weight * h
            totals["hint_loss"] = float(h.detach()) * n
        totals["agreement"] = float((z_s.detach().argmax(1) == z_t.argmax(1)).sum())
        return BatchLoss(loss, n, totals)

    return batch_loss


def _teacher_logits(teacher, batch, hint) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, teacher logits)`` of a batch: cached in it, or the teacher run on ``x`` now."""
    if len(batch) == 3:
        if hint is not None:
            raise ValueError("hint needs the teacher's features: give (x, y) batches, not cached logits")
        return tuple(batch)
    if len(batch) != 2:
        raise ValueError(f"loader must yield (x, y) or (x, y, teacher_logits), got {len(batch)} items")
    if teacher is None:
        raise ValueError("loader yields (x, y) but teacher is None: pass the teacher or cached logits")
    x, y = batch
    with torch.no_grad():
        return x, y, teacher(x)


def gap_closed(scratch: float, distilled: float, teacher: float) -> float:
    """Fraction of the scratch-to-teacher accuracy gap the distilled student closes.

    ``(distilled - scratch) / (teacher - scratch)``: 0 = no better than training from scratch,
    1 = as good as the teacher, negative = worse than scratch. Needs ``teacher > scratch``.
    """
    for name, v in (("scratch", scratch), ("distilled", distilled), ("teacher", teacher)):
        _args.real(name, v)
    if teacher <= scratch:
        raise ValueError(f"teacher ({teacher}) must beat scratch ({scratch}) for a gap to close")
    return (distilled - scratch) / (teacher - scratch)
