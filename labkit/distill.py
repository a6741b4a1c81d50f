"""Knowledge distillation: Hinton's soft-target loss and a ``distill`` training loop.

A trained *teacher* tells a small *student* not only which class is right but how wrong the
others are: "this 7 looks a bit like a 1, not at all like a 0". Softening the teacher's
softmax with a temperature ``T`` makes those small probabilities visible::

    p_i(T) = exp(z_i / T) / sum_j exp(z_j / T)

    loss = (1 - alpha) * CE(z_s, y)  +  alpha * T^2 * KL( p_teacher(T) || p_student(T) )

``alpha`` weights the **soft** (teacher) term: ``alpha = 0`` is plain cross-entropy on the
labels, ``alpha = 1`` learns from the teacher alone. The ``T^2`` keeps the soft term's gradient
(which scales as ``1/T^2``) comparable across temperatures (Hinton, Vinyals & Dean 2015).

Rows whose label is ``ignore_index`` (-100, as in ``F.cross_entropy``) count only in the soft
term: that is how a few labels and many teacher-labelled images mix in one batch. The
transfer-set helpers (few labels, pseudo-labels, shifted copies) live in
:mod:`labkit.transfer_set`, feature (FitNets) hints in :mod:`labkit.feature_distill`.
Used by ``07_distillation`` and ``08_compression_capstone``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from labkit.devices import get_device
from labkit.train import History, evaluate

IGNORE_INDEX = -100


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return float(temperature)


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number in [0, 1], got {type(alpha).__name__}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (it weights the soft-target term), got {alpha}")
    return float(alpha)


def _check_logits(name: str, logits) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {logits.dtype}")
    if logits.ndim != 2:
        raise ValueError(f"{name} must be 2-D (batch, classes), got shape {tuple(logits.shape)}")


def _check_pair(student_logits, teacher_logits) -> None:
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    (ns, cs), (nt, ct) = student_logits.shape, teacher_logits.shape
    if cs != ct:
        raise ValueError(f"teacher and student have different numbers of classes: student_logits has {cs}, "
                         f"teacher_logits has {ct}")
    if ns != nt:
        raise ValueError(f"mismatched logits shapes: student_logits {tuple(student_logits.shape)} vs "
                         f"teacher_logits {tuple(teacher_logits.shape)} (different batch sizes)")


def soft_targets(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / T)``: the teacher's probabilities softened by temperature ``T``.

    ``T = 1`` is the ordinary softmax; larger ``T`` flattens it towards uniform and lifts the
    small probabilities that say which wrong classes look alike (07_distillation plots this).
    """
    _check_logits("logits", logits)
    return F.softmax(logits / _check_temperature(temperature), dim=-1)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """``T^2 * KL(p_teacher(T) || p_student(T))``, averaged over the batch.

    The teacher's logits are detached: the teacher never receives a gradient. The gradient with
    respect to the student's logits is ``T * (p_student(T) - p_teacher(T)) / N``.
    """
    _check_pair(student_logits, teacher_logits)
    t = _check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def _check_labels(labels, n: int, classes: int, ignore_index: int) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"labels must hold integer class indices, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the logits, got {tuple(labels.shape)}")
    known = labels[labels != ignore_index]
    if known.numel() and (int(known.min()) < 0 or int(known.max()) >= classes):
        raise ValueError(f"labels must be in [0, {classes}) or ignore_index={ignore_index}, "
                         f"got values from {int(known.min())} to {int(known.max())}")


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over the labelled rows (``labels != ignore_index``); 0 when none is labelled."""
    labelled = labels != ignore_index
    if not bool(labelled.any()):
        return student_logits.sum() * 0.0  # keeps the graph (and the dtype) without a NaN
    return F.cross_entropy(student_logits[labelled], labels[labelled].long())


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
                      temperature: float, alpha: float, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Hinton's distillation loss ``(1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(p_t(T) || p_s(T))``.

    ``alpha`` weights the soft-target term: 0 gives plain cross-entropy, 1 the teacher alone
    (then ``labels`` may be None). Labels equal to ``ignore_index`` are left out of the hard
    term only. Raises ValueError for ``temperature <= 0``, ``alpha`` outside [0, 1], logits of
    different shapes or class counts, and labels that do not fit the logits.
    """
    t = _check_temperature(temperature)
    a = _check_alpha(alpha)
    _check_pair(student_logits, teacher_logits)
    soft = soft_target_loss(student_logits, teacher_logits, temperature=t)
    if labels is None:
        if a < 1.0:
            raise ValueError(f"labels is None but alpha={a} < 1 gives the hard-label term weight {1 - a}")
        return soft
    _check_labels(labels, student_logits.shape[0], student_logits.shape[1], ignore_index)
    hard = hard_label_loss(student_logits, labels, ignore_index=ignore_index)
    return (1.0 - a) * hard + a * soft


# --- the training loop ------------------------------------------------------------------------


def _check_module(name: str, model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be an nn.Module, got {type(model).__name__}")


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
    :class:`labkit.feature_distill.FeatureHint`) adds ``hint_weight * ||r(student feature) -
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
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    t, a = _check_temperature(temperature), _check_alpha(alpha)
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if hint is not None and teacher is None:
        raise ValueError("hint needs the teacher to run on every batch: pass teacher=")
    if isinstance(hint_weight, bool) or not isinstance(hint_weight, (int, float)) or not hint_weight >= 0:
        raise ValueError(f"hint_weight must be a number >= 0, got {hint_weight!r}")
    if not hasattr(loader, "__iter__"):
        raise TypeError(f"loader must be iterable (a DataLoader), got {type(loader).__name__}")
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
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise TypeError(f"{name} must be a finite number (an accuracy), got {v!r}")
    if teacher <= scratch:
        raise ValueError(f"teacher ({teacher}) must beat scratch ({scratch}) for a gap to close")
    return (distilled - scratch) / (teacher - scratch)
