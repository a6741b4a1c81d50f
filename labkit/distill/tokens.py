"""Token-level distillation for language models: match the teacher's next-token distribution.

A language model makes one prediction per position, so distillation happens per token. With
logits ``(B, T, V)`` from a teacher and a student, at temperature ``tau``::

    p_t = softmax(z_t / tau)        p_s = softmax(z_s / tau)        (over the V tokens, per position)

    forward KL   KL(p_t || p_s) = sum_v p_t (log p_t - log p_s)    "cover every token the teacher likes"
    reverse KL   KL(p_s || p_t) = sum_v p_s (log p_s - log p_t)    "put mass only where the teacher does"

    loss = (1 - alpha) * CE(z_s, next byte)  +  alpha * tau^2 * mean over the B*T positions of the KL

Forward KL (Hinton's loss, per token) is *mass-covering*: where the teacher spreads its
probability over several next bytes, the student is punished for missing any of them. Reverse KL
(used by MiniLLM, Gu et al. 2024) is *mode-seeking*: the student is punished for putting mass
where the teacher has little, so a small student may commit to the teacher's main choices
instead of smearing over all of them. ``tau^2`` keeps the soft term's gradient comparable across
temperatures, and ``alpha`` weights it as in :func:`labkit.distill.loss.distillation_loss`.

:func:`batch_loss` wraps this as ``loss_fn(model, batch)``, the shape of a batch-loss hook for a
training loop; the training itself is :mod:`labkit.distill.lm`. Checked against
``torch.nn.functional.kl_div`` and a hand-worked two-token example in
``tests/test_distill_tokens.py``; used by lesson ``07_distillation``'s language-model section.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from labkit import _args

DIRECTIONS = ("forward", "reverse")


def _check_logits(student_logits, teacher_logits) -> None:
    _args.tensor("student_logits", student_logits, dtype="floating", ndim=3, non_empty=True)
    _args.tensor("teacher_logits", teacher_logits, dtype="floating", ndim=3, non_empty=True)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same (batch, positions, vocabulary) shape")


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
             direction: str = "forward") -> torch.Tensor:
    """``tau^2`` times the KL divergence per position, averaged over all ``B * T`` positions.

    ``direction="forward"`` is ``KL(p_teacher || p_student)``, ``"reverse"`` is
    ``KL(p_student || p_teacher)``. The teacher's logits are detached (it is never trained).
    """
    _check_logits(student_logits, teacher_logits)
    tau = _args.positive_float("temperature", temperature)
    direction = _args.choice("direction", direction, DIRECTIONS)
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / tau, dim=-1)
    if direction == "forward":
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    else:
        kl = (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)
    return kl.mean() * tau * tau


def token_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None, *,
                            temperature: float = 1.0, alpha: float = 0.5, direction: str = "forward") -> torch.Tensor:
    """``(1 - alpha) * CE(student, targets) + alpha * token_kl(...)`` over ``(B, T, V)`` logits.

    ``targets`` are the next tokens ``(B, T)``; they may be None only with ``alpha = 1`` (the
    teacher alone).
    """
    alpha = _args.fraction("alpha", alpha)
    soft = token_kl(student_logits, teacher_logits, temperature=temperature, direction=direction)
    if targets is None:
        if alpha < 1.0:
            raise ValueError(f"targets is None but alpha={alpha} < 1 gives the next-token loss weight {1 - alpha}")
        return soft
    _args.tensor("targets", targets, dtype="integer", shape=tuple(student_logits.shape[:2]))
    hard = F.cross_entropy(student_logits.reshape(-1, student_logits.size(-1)).float(), targets.reshape(-1))
    return (1.0 - alpha) * hard + alpha * soft


def batch_loss(teacher: nn.Module | None, *, temperature: float = 1.0, alpha: float = 0.5,
               direction: str = "forward") -> Callable[[nn.Module, tuple], torch.Tensor]:
    """``loss_fn(model, batch)`` for a training loop: run the student ``model`` and (under
    ``torch.no_grad``, in eval mode) the ``teacher`` on ``batch = (x, y)`` and return
    :func:`token_distillation_loss`. ``teacher=None`` (or ``alpha=0``) is plain next-token
    cross-entropy: the student trained from scratch, with the same loop.
    """
    if teacher is not None:
        _args.module("teacher", teacher)
    _args.positive_float("temperature", temperature)
    _args.fraction("alpha", alpha)
    _args.choice("direction", direction, DIRECTIONS)
    if teacher is None and alpha > 0:
        raise ValueError(f"alpha={alpha} weights the teacher's term but teacher is None: pass a teacher or alpha=0")

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        logits = model(x)
        if teacher is None or alpha == 0:
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        teacher.eval()
        with torch.no_grad():
            teacher_logits = teacher(x)
        return token_distillation_loss(logits, teacher_logits, y, temperature=temperature, alpha=alpha,
                                       direction=direction)

    return loss_fn
