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

from labkit import _args

MODELS = ("mlp", "cnn", "teacher", "student")


def _positive_ints(name: str, values, what: str) -> tuple[int, ...]:
    values = _args.sequence(name, values, what=what)
    return tuple(_args.positive_int(f"{name}[{i}]", v) for i, v in enumerate(values))


def _check_shape(input_shape) -> tuple[int, ...]:
    _args.sequence("input_shape", input_shape, non_empty=True, what="a tuple like (1, 28, 28)")
    return _positive_ints("input_shape", input_shape, "a tuple like (1, 28, 28)")


def _check_widths(name: str, widths) -> tuple[int, ...]:
    return _positive_ints(name, widths, "a tuple of layer widths like (256, 128)")


class ExampleInputs:
    """Mixin: ``example_inputs(batch_size)`` -> a tuple of random inputs of the right shape."""

    input_shape: tuple[int, ...]

    def example_inputs(self, batch_size: int = 1, *, device=None, generator: torch.Generator | None = None) -> tuple[torch.Tensor]:
        _args.positive_int("batch_size", batch_size)
        x = torch.rand((batch_size, *self.input_shape), generator=generator)
        return (x.to(device) if device is not None else x,)


class MLP(ExampleInputs, nn.Module):
    """``Flatten -> [Linear -> ReLU] x len(hidden) -> Linear(num_classes)``."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), hidden: Sequence[int] = (256, 128), num_classes: int = 10):
        super().__init__()
        self.input_shape = _check_shape(input_shape)
        hidden = _check_widths("hidden", hidden)
        _args.positive_int("num_classes", num_classes)
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
        _args.positive_int("num_classes", num_classes)
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
    _args.choice("name", name, MODELS)
    if name == "mlp":
        return MLP(input_shape, num_classes=num_classes, **kwargs)
    if name in ("cnn", "teacher"):
        return SmallCNN(input_shape, num_classes=num_classes, **kwargs)
    if name == "student":
        return tiny_student(input_shape, num_classes=num_classes, **kwargs)
    raise AssertionError(name)  # unreachable: name was checked against MODELS


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (elements, not bytes)."""
    _args.module("model", model)
    _args.boolean("trainable_only", trainable_only)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
