"""Lesson 07, knowledge distillation: the loss, the training loop, transfer sets and feature hints.

* :mod:`labkit.distill.loss` - soft targets at a temperature and Hinton's distillation loss;
* :mod:`labkit.distill.loop` - ``distill(student, teacher, loader, ...)`` and ``gap_closed``;
* :mod:`labkit.distill.transfer_set` - few labels, teacher logits, pseudo-labels, shifted copies;
* :mod:`labkit.distill.feature` - FitNets feature hints (``FeatureHint``).

The public names are re-exported here, so ``from labkit import distill`` then
``distill.distillation_loss(...)`` or ``distill.distill(...)`` works.
"""

from labkit.distill.feature import FeatureHint, make_regressor
from labkit.distill.loop import distill, gap_closed
from labkit.distill.loss import (
    IGNORE_INDEX,
    distillation_loss,
    hard_label_loss,
    soft_target_loss,
    soft_targets,
)
from labkit.distill.transfer_set import few_labels, pseudo_labels, shifted_copies, teacher_logits

__all__ = ["IGNORE_INDEX", "FeatureHint", "distill", "distillation_loss", "few_labels", "gap_closed",
           "hard_label_loss", "make_regressor", "pseudo_labels", "shifted_copies", "soft_target_loss",
           "soft_targets", "teacher_logits"]
