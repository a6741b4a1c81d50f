"""Lesson 07, knowledge distillation: the loss, the training loop, transfer sets and feature hints.

* :mod:`labkit.distill.loss` - soft targets at a temperature and Hinton's distillation loss;
* :mod:`labkit.distill.loop` - ``distill(student, teacher, loader, ...)`` and ``gap_closed``;
* :mod:`labkit.distill.transfer_set` - few labels, teacher logits, pseudo-labels, shifted copies;
* :mod:`labkit.distill.feature` - FitNets feature hints (``FeatureHint``);
* :mod:`labkit.distill.tokens` - token-level KD for language models: forward and reverse KL over
  ``(B, T, V)`` logits, mixed with the next-byte loss, and a ``loss_fn(model, batch)`` for loops;
* :mod:`labkit.distill.lm` - distil the course GPT into a smaller student, scratch vs forward vs
  reverse KL over seeds (``train_student``, ``compare_students``).

The public names are re-exported here, so ``from labkit import distill`` then
``distill.distillation_loss(...)`` or ``distill.distill(...)`` works.
"""

from labkit.distill.feature import FeatureHint, make_regressor
from labkit.distill.lm import compare_students, train_student
from labkit.distill.loop import distill, gap_closed
from labkit.distill.loss import (
    IGNORE_INDEX,
    distillation_loss,
    hard_label_loss,
    soft_target_loss,
    soft_targets,
)
from labkit.distill.tokens import batch_loss, token_distillation_loss, token_kl
from labkit.distill.transfer_set import few_labels, pseudo_labels, shifted_copies, teacher_logits

__all__ = ["IGNORE_INDEX", "FeatureHint", "distill", "distillation_loss", "few_labels", "gap_closed",
           "hard_label_loss", "make_regressor", "pseudo_labels", "shifted_copies", "soft_target_loss",
           "soft_targets", "teacher_logits",
           "batch_loss", "compare_students", "token_distillation_loss", "token_kl",
           "train_student"]
