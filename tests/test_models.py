"""labkit.models: shapes, example inputs, parameter counts by formula, bad input."""

from __future__ import annotations

import pytest
import torch

from labkit import models as M


def test_mlp_shapes_and_parameter_formula():
    m = M.MLP((1, 28, 28), hidden=(256, 128), num_classes=10)
    (x,) = m.example_inputs(5)
    assert x.shape == (5, 1, 28, 28) and m(x).shape == (5, 10)
    assert M.count_parameters(m) == (784 * 256 + 256) + (256 * 128 + 128) + (128 * 10 + 10)


def test_student_is_about_25k_parameters():
    s = M.tiny_student()
    assert M.count_parameters(s) == 784 * 32 + 32 + 32 * 10 + 10  # 25,450


def test_cnn_shapes_on_mnist_and_digits():
    cnn = M.SmallCNN((1, 28, 28), widths=(8, 16))
    assert cnn(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert cnn.classifier[1].in_features == 16 * 7 * 7
    small = M.SmallCNN((1, 8, 8), widths=(4, 4, 4, 4))  # pooling stops at 1x1
    assert small(*small.example_inputs(2)).shape == (2, 10)


def test_example_inputs_device_and_generator():
    m = M.MLP((4,), hidden=(3,))
    a = m.example_inputs(2, generator=torch.Generator().manual_seed(0))[0]
    b = m.example_inputs(2, generator=torch.Generator().manual_seed(0), device="cpu")[0]
    assert torch.equal(a, b) and a.shape == (2, 4)
    with pytest.raises(ValueError, match="batch_size"):
        m.example_inputs(0)


def test_build_model_by_name():
    assert isinstance(M.build_model("teacher"), M.SmallCNN)
    assert isinstance(M.build_model("mlp", input_shape=(1, 8, 8), hidden=(16,)), M.MLP)
    assert M.count_parameters(M.build_model("student")) == M.count_parameters(M.tiny_student())
    with pytest.raises(ValueError, match="name must be one of"):
        M.build_model("resnet")


@pytest.mark.parametrize("make, err, word", [
    (lambda: M.MLP((0, 28)), ValueError, r"input_shape\[0\] must be an int >= 1"),
    (lambda: M.MLP("28x28"), TypeError, "input_shape must be a tuple"),
    (lambda: M.MLP(hidden=(-1,)), ValueError, r"hidden\[0\]"),
    (lambda: M.MLP(hidden=None), TypeError, "hidden"),
    (lambda: M.MLP(num_classes=0), ValueError, "num_classes"),
    (lambda: M.MLP(num_classes=10.0), TypeError, "num_classes"),
    (lambda: M.SmallCNN((28, 28)), ValueError, "input_shape"),
    (lambda: M.SmallCNN(widths=()), ValueError, "conv block"),
    (lambda: M.SmallCNN(widths=(8.5,)), TypeError, r"widths\[0\] must be an int"),
])
def test_bad_configs(make, err, word):
    with pytest.raises(err, match=word):
        make()


def test_count_parameters_trainable_only():
    m = M.MLP((4,), hidden=(3,))
    m.layers[1].weight.requires_grad_(False)
    assert M.count_parameters(m) - M.count_parameters(m, trainable_only=True) == 12
    with pytest.raises(TypeError):
        M.count_parameters("model")
