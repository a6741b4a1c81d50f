"""The transfer set: the images a teacher labels for its student, and the few-labels regime.

Hinton et al. call the data a student learns from the *transfer set*. It need not carry
labels: the teacher supplies soft targets for every image. That is where distillation pays
most - you own a handful of labelled images, many unlabelled ones, and a good teacher.
This module builds such a set:

* :func:`few_labels` hides all but ``n`` labels (``ignore_index`` marks the rest);
* :func:`teacher_logits` runs the teacher once (eval mode, no grad) so its answers can be
  cached and reused for every epoch and every seed;
* :func:`pseudo_labels` turns the teacher's answers into hard labels (self-training, the
  baseline that keeps only the argmax and throws the soft information away);
* :func:`shifted_copies` makes more unlabelled images by moving each digit a few pixels -
  images nobody labelled, which the teacher can label for free.

Used by ``07_distillation`` (the few-labels regime) and ``08_compression_capstone``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labkit import _args
from labkit.devices import get_device
from labkit.distill.loss import IGNORE_INDEX


def _check_labels(labels) -> None:
    _args.tensor("labels", labels, dtype="integer", ndim=1)


def few_labels(labels: torch.Tensor, n_labelled: int, *, generator: torch.Generator | None = None,
               stratified: bool = True, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """A copy of ``labels`` with all but ``n_labelled`` entries replaced by ``ignore_index``.

    ``stratified`` keeps (as nearly as possible) the same number per class, the kept entries
    drawn with ``generator``: the same generator seed always hides the same labels.
    """
    _check_labels(labels)
    _args.integer("n_labelled", n_labelled, minimum=1, maximum=len(labels))
    if generator is not None:
        _args.instance("generator", generator, torch.Generator)
    _args.boolean("stratified", stratified)
    perm = torch.randperm(len(labels), generator=generator)
    if stratified:
        classes = torch.unique(labels)
        # rank of each shuffled example within its class: keep the first n/C of every class,
        # then top up (in shuffled order) to exactly n_labelled
        shuffled = labels[perm]
        rank = torch.zeros(len(labels), dtype=torch.long)
        for c in classes:
            where = shuffled == c
            rank[where] = torch.arange(int(where.sum()))
        order = perm[torch.argsort(rank, stable=True)]
    else:
        order = perm
    out = torch.full_like(labels, ignore_index)
    keep = order[:n_labelled]
    out[keep] = labels[keep]
    return out


@torch.no_grad()
def teacher_logits(teacher: nn.Module, inputs: torch.Tensor, *, batch_size: int = 512, device=None) -> torch.Tensor:
    """The teacher's logits for every row of ``inputs`` (eval mode, no grad), on the CPU.

    The teacher's train/eval mode is restored afterwards. Cache these when the inputs do not
    change between epochs: one teacher pass instead of one per epoch per student.
    """
    _args.module("teacher", teacher)
    _args.tensor("inputs", inputs, non_empty=True)
    if inputs.ndim < 2:
        raise ValueError(f"inputs must be shaped (N, ...), got shape {tuple(inputs.shape)}")
    _args.positive_int("batch_size", batch_size)
    dev = get_device(device) if device is not None else next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    try:
        return torch.cat([teacher(chunk.to(dev)).float().cpu() for chunk in inputs.split(batch_size)])
    finally:
        teacher.train(was_training)


def pseudo_labels(logits: torch.Tensor, *, labels: torch.Tensor | None = None, threshold: float = 0.0,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Hard labels from the teacher: ``argmax(logits)`` where ``max softmax >= threshold``.

    Rows below the threshold get ``ignore_index``. Given ``labels``, known labels (not
    ``ignore_index``) are kept and only the missing ones are filled in.
    """
    _args.tensor("logits", logits, dtype="floating", ndim=2)
    _args.fraction("threshold", threshold)
    _args.integer("ignore_index", ignore_index)
    conf, guess = F.softmax(logits.float(), dim=1).max(dim=1)
    out = torch.where(conf >= threshold, guess, torch.full_like(guess, ignore_index))
    if labels is not None:
        _check_labels(labels)
        if len(labels) != len(logits):
            raise ValueError(f"labels has {len(labels)} rows but logits has {len(logits)}")
        known = labels[labels != ignore_index]
        classes = logits.shape[1]
        if known.numel() and (int(known.min()) < 0 or int(known.max()) >= classes):
            raise ValueError(f"labels must be in [0, {classes}) or ignore_index={ignore_index}, "
                             f"got values from {int(known.min())} to {int(known.max())}")
        out = torch.where(labels != ignore_index, labels.long(), out)
    return out


def shifted_copies(images: torch.Tensor, copies: int, *, max_shift: int = 2,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``copies`` randomly translated versions of each image (zero fill), stacked: ``(copies*N, C, H, W)``.

    Each copy of each image moves by ``(dy, dx)`` drawn uniformly from ``[-max_shift, max_shift]``.
    """
    _args.tensor("images", images, ndim=4)
    _args.positive_int("copies", copies)
    h, w = images.shape[-2:]
    _args.integer("max_shift", max_shift, minimum=0, maximum=min(h, w) - 1)
    s = max_shift
    padded = F.pad(images, (s, s, s, s))
    out = []
    for _ in range(copies):
        dy, dx = torch.randint(-s, s + 1, (2, len(images)), generator=generator)
        moved = torch.empty_like(images)
        for a in range(-s, s + 1):  # group images by shift: at most (2s+1)^2 slices
            for b in range(-s, s + 1):
                rows = torch.nonzero((dy == a) & (dx == b)).flatten()
                if len(rows):
                    moved[rows] = padded[rows, :, s - a : s - a + h, s - b : s - b + w]
        out.append(moved)
    return torch.cat(out)
