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
from tqdm.auto import tqdm

from labkit import _args
from labkit.devices import get_device
from labkit.distill.loss import (
    IGNORE_INDEX,
    _check_alpha,
    _check_labels,
    _check_temperature,
    hard_label_loss,
    soft_target_loss,
)
from labkit.train import History, evaluate


def _check_module(name: str, model) -> None:
    _args.module(name, model)


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
    parameters - a custom ``optimizer`` must include the regressor itself. Used by
    07_distillation and the capstone (08).
    """
    _check_module("student", student)
    if teacher is not None:
        _check_module("teacher", teacher)
    if teacher is student:
        raise ValueError("teacher and student must be different modules")
    _args.iterable("loader", loader, "an iterable of (x, y) or (x, y, teacher_logits) batches")
    _args.positive_int("epochs", epochs)
    t, a = _check_temperature(temperature), _check_alpha(alpha)
    _args.positive_float("lr", lr)
    if val_loader is not None:
        _args.iterable("val_loader", val_loader, "an iterable of (x, y) batches")
    _args.integer("ignore_index", ignore_index)
    _args.boolean("progress", progress)
    if hint is not None and teacher is None:
        raise ValueError("hint needs the teacher to run on every batch: pass teacher=")
    _args.non_negative_float("hint_weight", hint_weight)
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
    history = History()
    bar = tqdm(range(epochs), desc="distill", disable=not progress)
    try:
        for _ in bar:
            student.train()
            sums = {"train_loss": 0.0, "soft_loss": 0.0, "hard_loss": 0.0, "hint_loss": 0.0, "agreement": 0.0}
            seen = 0
            for batch in tqdm(loader, desc="batches", leave=False, disable=not progress):
                if len(batch) == 3:
                    if hint is not None:
                        raise ValueError("hint needs the teacher's features: give (x, y) batches, not cached logits")
                    x, y, z_t = (b.to(dev) for b in batch)
                elif len(batch) == 2:
                    if teacher is None:
                        raise ValueError("loader yields (x, y) but teacher is None: pass the teacher or cached logits")
                    x, y = batch[0].to(dev), batch[1].to(dev)
                    with torch.no_grad():
                        z_t = teacher(x)
                else:
                    raise ValueError(f"loader must yield (x, y) or (x, y, teacher_logits), got {len(batch)} items")
                z_s = student(x)
                soft = soft_target_loss(z_s, z_t, temperature=t)
                _check_labels(y, z_s.shape[0], z_s.shape[1], ignore_index)
                hard = hard_label_loss(z_s, y, ignore_index=ignore_index)
                loss = (1.0 - a) * hard + a * soft
                if hint is not None:
                    h = hint.loss()
                    loss = loss + hint_weight * h
                    sums["hint_loss"] += float(h.detach()) * len(x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                n = len(x)
                seen += n
                sums["train_loss"] += float(loss.detach()) * n
                sums["soft_loss"] += float(soft.detach()) * n
                sums["hard_loss"] += float(hard.detach()) * n
                sums["agreement"] += float((z_s.detach().argmax(1) == z_t.argmax(1)).sum())
            if seen == 0:
                raise ValueError("loader yielded no data")
            if hint is None:
                sums.pop("hint_loss")
            history.log(**{k: v / seen for k, v in sums.items()})
            if val_loader is not None:
                va = evaluate(student, val_loader, device=dev)
                history.log(val_loss=va["loss"], val_acc=va["accuracy"])
                bar.set_postfix(loss=f"{history.last('train_loss'):.3f}", val_acc=f"{va['accuracy']:.3f}")
            else:
                bar.set_postfix(loss=f"{history.last('train_loss'):.3f}")
    finally:
        if teacher is not None:
            teacher.train(was_training)
    return history


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
