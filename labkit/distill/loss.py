"""Knowledge distillation's loss: Hinton's soft targets at a temperature, mixed with the labels.

A trained *teacher* tells a small *student* not only which class is right but how wrong the
others are: "this 7 looks a bit like a 1, not at all like a 0". Softening the teacher's
softmax with a temperature ``T`` makes those small probabilities visible::

    p_i(T) = exp(z_i / T) / sum_j exp(z_j / T)

    loss = (1 - alpha) * CE(z_s, y)  +  alpha * T^2 * KL( p_teacher(T) || p_student(T) )

``alpha`` weights the **soft** (teacher) term: ``alpha = 0`` is plain cross-entropy on the
labels, ``alpha = 1`` learns from the teacher alone. The ``T^2`` keeps the soft term's gradient
(which scales as ``1/T^2``) comparable across temperatures (Hinton, Vinyals & Dean 2015).

Rows whose label is ``ignore_index`` (-100, as in ``F.cross_entropy``) count only in the soft
term: that is how a few labels and many teacher-labelled images mix in one batch. The training
loop is :mod:`labkit.distill.loop`, the transfer-set helpers (few labels, pseudo-labels, shifted
copies) :mod:`labkit.distill.transfer_set`, feature (FitNets) hints :mod:`labkit.distill.feature`.
Used by ``07_distillation`` and ``08_compression_capstone``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labkit import _args

IGNORE_INDEX = -100


def _check_temperature(temperature) -> float:
    return _args.positive_float("temperature", temperature)


def _check_alpha(alpha) -> float:
    return _args.fraction("alpha", alpha)


def _check_logits(name: str, logits) -> None:
    _args.tensor(name, logits, dtype="floating", ndim=2)


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
    _args.tensor("labels", labels, dtype="integer")
    _args.integer("ignore_index", ignore_index)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the logits, got {tuple(labels.shape)}")
    known = labels[labels != ignore_index]
    if known.numel() and (int(known.min()) < 0 or int(known.max()) >= classes):
        raise ValueError(f"labels must be in [0, {classes}) or ignore_index={ignore_index}, "
                         f"got values from {int(known.min())} to {int(known.max())}")


def hard_label_loss(student_logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over the labelled rows (``labels != ignore_index``); 0 when none is labelled.

    ``labels`` holds one integer class index per row of ``student_logits`` (float labels would be
    truncated, so they are refused)."""
    _check_logits("student_logits", student_logits)
    _check_labels(labels, student_logits.shape[0], student_logits.shape[1], ignore_index)
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
