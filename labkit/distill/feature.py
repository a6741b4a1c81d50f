"""Feature (hint) distillation, FitNets style: match a teacher's *inner* layer, not only its output.

Romero et al. (2015, "FitNets") let a thin student learn from a teacher's intermediate
features: a small trainable *regressor* ``r`` maps the student's "guided" layer to the shape
of the teacher's "hint" layer, and the student is trained to make

    hint_loss = mean( (r(student_feature) - teacher_feature)^2 )

small. The regressor is needed because the two layers rarely have the same width; it is thrown
away after training. :class:`FeatureHint` captures both layers with forward hooks (no change to
either model), builds the regressor from one dry run, and gives :meth:`FeatureHint.loss` after
each forward pass. :func:`labkit.distill.distill` adds it to the soft-target loss with
``hint=..., hint_weight=...`` (a one-stage variant; FitNets trained the hint first, then KD).
Used by ``07_distillation``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def make_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """A regressor from features shaped ``student_shape`` to ``teacher_shape`` (batch dim excluded).

    Both 3-D ``(C, H, W)``: a 1x1 convolution ``C_s -> C_t``, then adaptive average pooling
    when the spatial sizes differ. Otherwise: flatten, then ``Linear(prod(student), prod(teacher))``.
    """
    for name, shape in (("student_shape", student_shape), ("teacher_shape", teacher_shape)):
        if not isinstance(shape, (tuple, list)) or not shape or any(not isinstance(d, int) or d <= 0 for d in shape):
            raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {shape!r}")
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        layers: list[nn.Module] = [nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1)]
        if tuple(student_shape[1:]) != tuple(teacher_shape[1:]):
            layers.append(nn.AdaptiveAvgPool2d(tuple(teacher_shape[1:])))
        return nn.Sequential(*layers)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(student_shape), math.prod(teacher_shape)))


def _layer(model: nn.Module, name: str, which: str) -> nn.Module:
    if not isinstance(name, str):
        raise TypeError(f"{which}_layer must be a module name like 'layers.2', got {type(name).__name__}")
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"{which}_layer {name!r} is not a submodule of the {which}; it has {names}") from None


class FeatureHint(nn.Module):
    """Hooks on ``student_layer`` and ``teacher_layer`` plus a trainable regressor between them.

    ``FeatureHint(student, teacher, student_layer="layers.2", teacher_layer="features")`` runs
    both models once on ``example_inputs`` (default: the student's ``example_inputs(2)``) to
    learn the feature shapes and build :func:`make_regressor` (unless ``regressor`` is given).
    After any forward pass of both models, :meth:`loss` is the mean squared error between the
    regressed student feature and the (detached) teacher feature. Call :meth:`remove` (or use
    ``with``) to take the hooks off. Only the regressor's parameters belong to this module.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, student_layer: str, teacher_layer: str,
                 example_inputs: tuple | None = None, regressor: nn.Module | None = None):
        super().__init__()
        for name, m in (("student", student), ("teacher", teacher)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(m).__name__}")
        if regressor is not None and not isinstance(regressor, nn.Module):
            raise TypeError(f"regressor must be an nn.Module, got {type(regressor).__name__}")
        s_mod, t_mod = _layer(student, student_layer, "student"), _layer(teacher, teacher_layer, "teacher")
        self._features: dict[str, torch.Tensor] = {}
        self._handles = [
            s_mod.register_forward_hook(self._keep("student", detach=False)),
            t_mod.register_forward_hook(self._keep("teacher", detach=True)),
        ]
        if example_inputs is None:
            if not hasattr(student, "example_inputs"):
                self.remove()
                raise ValueError("pass example_inputs=: the student has no example_inputs()")
            example_inputs = student.example_inputs(2)
        example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        modes = student.training, teacher.training
        student.eval(), teacher.eval()
        with torch.no_grad():
            student(*example_inputs)
            teacher(*example_inputs)
        student.train(modes[0]), teacher.train(modes[1])
        self.student_shape = tuple(self._features["student"].shape[1:])
        self.teacher_shape = tuple(self._features["teacher"].shape[1:])
        self.regressor = regressor if regressor is not None else make_regressor(self.student_shape, self.teacher_shape)
        self._features.clear()

    def _keep(self, key: str, *, detach: bool):
        def hook(module, inputs, output):
            self._features[key] = output.detach() if detach else output
        return hook

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The last captured ``(student_feature, teacher_feature)``."""
        missing = [k for k in ("student", "teacher") if k not in self._features]
        if missing:
            raise RuntimeError(f"no {' or '.join(missing)} feature captured yet: run both models forward first")
        return self._features["student"], self._features["teacher"]

    def loss(self) -> torch.Tensor:
        """``mean((regressor(student_feature) - teacher_feature)^2)`` for the last forward passes."""
        s, t = self.features()
        if s.shape[0] != t.shape[0]:
            raise RuntimeError(f"student saw a batch of {s.shape[0]} but the teacher {t.shape[0]}: run both on the same batch")
        pred = self.regressor(s)
        return F.mse_loss(pred.reshape(t.shape[0], -1), t.reshape(t.shape[0], -1))

    def remove(self) -> None:
        """Take both hooks off (the models behave exactly as before)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._features.clear()

    def __enter__(self) -> FeatureHint:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
