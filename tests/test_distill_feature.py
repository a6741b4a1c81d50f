"""labkit.distill.feature: hooks capture the right layers, the regressor fits, the hint loss is MSE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.distill.feature import FeatureHint, make_regressor
from labkit.models import MLP, SmallCNN, tiny_student


def test_make_regressor_shapes():
    conv = make_regressor((8, 7, 7), (16, 7, 7))
    assert isinstance(conv[0], nn.Conv2d) and len(conv) == 1
    assert conv(torch.zeros(2, 8, 7, 7)).shape == (2, 16, 7, 7)
    pooled = make_regressor((8, 14, 14), (16, 7, 7))
    assert pooled(torch.zeros(2, 8, 14, 14)).shape == (2, 16, 7, 7)
    lin = make_regressor((32,), (64, 7, 7))
    assert lin(torch.zeros(2, 32)).shape == (2, 64 * 7 * 7)
    with pytest.raises(ValueError, match="student_shape"):
        make_regressor((), (4,))
    with pytest.raises(ValueError, match="teacher_shape"):
        make_regressor((4,), (0,))


def test_hint_captures_layers_and_loss_is_mse(gen):
    student, teacher = tiny_student(), SmallCNN()
    with FeatureHint(student, teacher, student_layer="layers.2", teacher_layer="features") as hint:
        assert hint.student_shape == (32,) and hint.teacher_shape == (64, 7, 7)
        x = torch.rand(3, 1, 28, 28, generator=gen)
        student(x)
        with torch.no_grad():
            teacher(x)
        s, t = hint.features()
        assert torch.equal(s, student.layers[:3](x))  # Flatten, Linear, ReLU
        assert torch.allclose(t, teacher.features(x))
        expected = F.mse_loss(hint.regressor(s), t.flatten(1))
        assert torch.allclose(hint.loss(), expected)
        hint.loss().backward()
        assert student.layers[1].weight.grad is not None  # gradient reaches the student
        assert all(p.grad is None for p in teacher.parameters())  # never the teacher
    assert not student.layers[2]._forward_hooks and not teacher.features._forward_hooks  # removed


def test_hint_zero_when_regressor_maps_exactly(gen):
    """An identity regressor between two identical layers gives a zero loss."""
    student = MLP((4,), hidden=(6,), num_classes=2)
    teacher = MLP((4,), hidden=(6,), num_classes=2)
    teacher.load_state_dict(student.state_dict())
    hint = FeatureHint(student, teacher, student_layer="layers.2", teacher_layer="layers.2",
                       example_inputs=(torch.zeros(2, 4),), regressor=nn.Identity())
    x = torch.randn(5, 4, generator=gen)
    student(x), teacher(x)
    assert hint.loss().item() == 0.0
    hint.remove()


def test_parameters_are_only_the_regressor():
    hint = FeatureHint(tiny_student(), SmallCNN(), student_layer="layers.2", teacher_layer="features")
    assert {n for n, _ in hint.named_parameters()} == {"regressor.1.weight", "regressor.1.bias"}
    hint.remove()


def test_training_mode_is_restored_after_dry_run():
    student, teacher = tiny_student(), SmallCNN()
    student.train(), teacher.eval()
    FeatureHint(student, teacher, student_layer="layers.2", teacher_layer="features").remove()
    assert student.training and not teacher.training


def test_bad_input():
    student, teacher = tiny_student(), SmallCNN()
    with pytest.raises(ValueError, match="student_layer 'nope'"):
        FeatureHint(student, teacher, student_layer="nope", teacher_layer="features")
    with pytest.raises(ValueError, match="teacher_layer"):
        FeatureHint(student, teacher, student_layer="layers.2", teacher_layer="features.99")
    with pytest.raises(TypeError, match="student_layer"):
        FeatureHint(student, teacher, student_layer=2, teacher_layer="features")
    with pytest.raises(TypeError, match="teacher"):
        FeatureHint(student, "cnn", student_layer="layers.2", teacher_layer="features")
    with pytest.raises(TypeError, match="regressor"):
        FeatureHint(student, teacher, student_layer="layers.2", teacher_layer="features", regressor=3)
    with pytest.raises(ValueError, match="example_inputs"):
        FeatureHint(nn.Sequential(nn.Linear(4, 4)), teacher, student_layer="0", teacher_layer="features")
    hint = FeatureHint(student, teacher, student_layer="layers.2", teacher_layer="features")
    hint._features.clear()
    with pytest.raises(RuntimeError, match="run both models"):
        hint.loss()
    student(torch.zeros(2, 1, 28, 28))
    with torch.no_grad():
        teacher(torch.zeros(3, 1, 28, 28))
    with pytest.raises(RuntimeError, match="same batch"):
        hint.loss()
    hint.remove()
