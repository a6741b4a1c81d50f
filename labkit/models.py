"""The small reference models every lesson reuses.

* :class:`MLP` - flatten, then Linear/ReLU layers (the quantization and parallelism lessons).
* :class:`SmallCNN` - conv/BN/ReLU/pool blocks, then a linear classifier: the "teacher"
  (pruning, distillation, the capstone).
* :func:`tiny_student` - a ~25k-parameter MLP: the distillation "student".

Each model knows its ``input_shape`` and has ``example_inputs(batch_size)`` so profilers, FLOP
counters, exporters and pruners can trace it without a dataset. All layers live in plain
``nn.Sequential`` containers (``features`` / ``classifier`` or ``layers``) so pruning code can
walk them in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MODELS = ("mlp", "cnn", "teacher", "student")


def _check_shape(input_shape) -> tuple[int, ...]:
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise TypeError(f"input_shape must be a non-empty tuple like (1, 28, 28), got {input_shape!r}")
    if any(not isinstance(d, int) or d <= 0 for d in input_shape):
        raise ValueError(f"input_shape must hold positive ints, got {input_shape!r}")
    return tuple(input_shape)


def _check_widths(name: str, widths) -> tuple[int, ...]:
    widths = tuple(widths)
    if any(isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in widths):
        raise ValueError(f"{name} must be positive ints, got {widths!r}")
    return widths


class ExampleInputs:
    """Mixin: ``example_inputs(batch_size)`` -> a tuple of random inputs of the right shape."""

    input_shape: tuple[int, ...]

    def example_inputs(self, batch_size: int = 1, *, device=None, generator: torch.Generator | None = None) -> tuple[torch.Tensor]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        x = torch.rand((batch_size, *self.input_shape), generator=generator)
        return (x.to(device) if device is not None else x,)


class MLP(ExampleInputs, nn.Module):
    """``Flatten -> [Linear -> ReLU] x len(hidden) -> Linear(num_classes)``."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), hidden: Sequence[int] = (256, 128), num_classes: int = 10):
        super().__init__()
        self.input_shape = _check_shape(input_shape)
        hidden = _check_widths("hidden", hidden)
        _check_widths("num_classes", (num_classes,))
        in_features = 1
        for d in self.input_shape:
            in_features *= d
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(in_features, h), nn.ReLU()]
            in_features = h
        layers.append(nn.Linear(in_features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SmallCNN(ExampleInputs, nn.Module):
    """``[Conv3x3 -> BatchNorm -> ReLU -> MaxPool2]`` per width, then ``Flatten -> Linear``.

    The spatial size halves after each block (while it is at least 2), so on 28x28 MNIST two
    blocks leave 7x7 feature maps. Width (channels per block) is what structured pruning cuts.
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), widths: Sequence[int] = (32, 64), num_classes: int = 10):
        super().__init__()
        self.input_shape = _check_shape(input_shape)
        if len(self.input_shape) != 3:
            raise ValueError(f"SmallCNN needs input_shape (C, H, W), got {self.input_shape}")
        widths = _check_widths("widths", widths)
        if not widths:
            raise ValueError("SmallCNN needs at least one conv block")
        _check_widths("num_classes", (num_classes,))
        c, h, w = self.input_shape
        blocks: list[nn.Module] = []
        for width in widths:
            blocks += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            if min(h, w) >= 2:
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = width
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def tiny_student(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, hidden: int = 32) -> MLP:
    """The distillation student: one hidden layer of 32 (~25k parameters on MNIST)."""
    return MLP(input_shape, hidden=(hidden,), num_classes=num_classes)


def build_model(name: str, *, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a reference model by name: ``mlp``, ``cnn`` / ``teacher`` (SmallCNN), ``student``."""
    if name == "mlp":
        return MLP(input_shape, num_classes=num_classes, **kwargs)
    if name in ("cnn", "teacher"):
        return SmallCNN(input_shape, num_classes=num_classes, **kwargs)
    if name == "student":
        return tiny_student(input_shape, num_classes=num_classes, **kwargs)
    raise ValueError(f"unknown model {name!r}: expected one of {MODELS}")


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (elements, not bytes)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
