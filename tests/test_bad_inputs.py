"""Issue 11: each of these was wrong for a new user (a hang, a silent wrong answer, or another
library's error); each now raises ValueError/TypeError naming the argument."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from labkit.quantize import QuantizedConv2d, QuantizedLinear, WeightSpec

NAN_INF = [math.nan, math.inf, -math.inf]


def test_quantized_linear_refuses_a_convolution():
    with pytest.raises(TypeError, match=r"layer must be nn.Linear, got Conv2d"):
        QuantizedLinear(nn.Conv2d(1, 2, 3), WeightSpec())
    with pytest.raises(TypeError, match=r"layer must be nn.Conv2d, got Linear"):
        QuantizedConv2d(nn.Linear(4, 2), WeightSpec())
    with pytest.raises(TypeError, match="spec must be a labkit.quantize.WeightSpec"):
        QuantizedLinear(nn.Linear(4, 2), {"bits": 8})
    assert isinstance(QuantizedLinear(nn.Linear(4, 2), WeightSpec())(torch.ones(1, 4)), torch.Tensor)


@pytest.mark.parametrize("fractions, exc, word", [
    ((math.nan,), ValueError, r"fractions\[0\] must be a finite number"),
    ((0.5, math.inf), ValueError, r"fractions\[1\]"),
    ((0.5, 0.4), ValueError, "fractions must sum to 1"),
    ((0.0, 1.0), ValueError, r"fractions\[0\] must be > 0"),
    (0.5, TypeError, "fractions must be a tuple"),
    (("0.5", "0.5"), TypeError, r"fractions\[0\] must be a number"),
])
def test_stratified_split_fractions(fractions, exc, word):
    from labkit.data import stratified_split

    with pytest.raises(exc, match=word):
        stratified_split(torch.tensor([0, 1] * 5), fractions)


@pytest.mark.parametrize("y, exc, word", [
    (torch.tensor([0.0, 1.0, 1.0, 0.0]), TypeError, "y must be an integer tensor"),
    (torch.zeros(4, 2, dtype=torch.long), ValueError, "y must have 1 dimensions"),
    (torch.zeros(0, dtype=torch.long), ValueError, "y must not be empty"),
    ([0, 1, 0, 1], TypeError, "y must be a torch.Tensor"),
])
def test_stratified_split_labels(y, exc, word):
    from labkit.data import stratified_split

    with pytest.raises(exc, match=word):
        stratified_split(y, (0.5, 0.5))


@pytest.mark.parametrize("raw, static", [("on", True), ("YES", True), ("1", True), ("off", False), ("0", False)])
def test_static_widgets_flag_reads_like_every_other_flag(monkeypatch, raw, static):
    from labkit import widgets

    monkeypatch.setenv(widgets.STATIC_ENV, raw)
    if static:
        assert widgets.widgets_available() is False
    monkeypatch.setenv(widgets.STATIC_ENV, "maybe")
    with pytest.raises(ValueError, match="LABKIT_STATIC_WIDGETS.*'maybe'"):
        widgets.widgets_available()


@pytest.mark.parametrize("threshold, exc", [(math.nan, ValueError), (math.inf, ValueError), (-0.1, ValueError),
                                            ("0.1", TypeError), (None, TypeError)])
def test_soft_threshold_refuses_nan_instead_of_wiping_the_weights(threshold, exc):
    from labkit.prune import soft_threshold_

    model = nn.Sequential(nn.Linear(4, 4))
    before = model[0].weight.detach().clone()
    with pytest.raises(exc, match="threshold"):
        soft_threshold_(model, threshold)
    assert torch.equal(model[0].weight, before)  # untouched, not NaN


# --- training, distillation --------------------------------------------------------------------


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    return model, [(x, y)]


def test_fit_refuses_an_optimizer_over_another_models_parameters():
    from labkit.train import fit, train_epoch

    model, loader = _tiny()
    other = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    before = model[1].weight.detach().clone()
    for call in (lambda: fit(model, loader, optimizer=opt, progress=False),
                 lambda: train_epoch(model, loader, opt, progress=False)):
        with pytest.raises(ValueError, match="optimizer does not hold this model's parameters"):
            call()
    assert torch.equal(model[1].weight, before)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        train_epoch(model, loader, "sgd", progress=False)


@pytest.mark.parametrize("lr", NAN_INF + [0.0, -1e-3])
def test_learning_rates_must_be_finite_and_positive(lr):
    from labkit.distill import distill
    from labkit.train import fit, make_train_step

    model, loader = _tiny()
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = loader[0]
    for call in (lambda: fit(model, loader, lr=lr, progress=False),
                 lambda: distill(model, teacher, loader, lr=lr, progress=False),
                 lambda: make_train_step(model, x, y, lr=lr)):
        with pytest.raises(ValueError, match="lr must be a"):
            call()
    with pytest.raises(ValueError, match="optimizer's lr"):
        fit(model, loader, optimizer=_sgd_with_lr(model, lr), progress=False)


def _sgd_with_lr(model, lr):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["lr"] = lr  # torch checks lr only at construction (and lets nan through)
    return opt


@pytest.mark.parametrize("labels, exc, word", [
    (torch.tensor([0.0, 1.0, 2.0, 0.5]), TypeError, "labels must be an integer tensor"),
    (None, TypeError, "labels must be a torch.Tensor"),
    (torch.tensor([0, 1, 2, 7]), ValueError, r"labels must be in \[0, 3\)"),
    (torch.tensor([0, 1, 2]), ValueError, r"labels must have shape \(4,\)"),
])
def test_hard_label_loss_checks_its_labels(labels, exc, word):
    from labkit.distill import hard_label_loss

    with pytest.raises(exc, match=word):
        hard_label_loss(torch.randn(4, 3), labels)


def test_pseudo_labels_refuses_a_label_past_the_classes():
    from labkit.distill.transfer_set import pseudo_labels

    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        pseudo_labels(logits, labels=torch.tensor([0, 99, -100, 1]))
    assert pseudo_labels(logits, labels=torch.tensor([2, -100, -100, 1]))[0] == 2


@pytest.mark.parametrize("lr", NAN_INF)
def test_reference_runs_refuse_a_non_finite_lr(lr):
    from labkit.parallel.data_parallel import train_single_process
    from labkit.parallel.problem import reference_run

    with pytest.raises(ValueError, match="lr must be a finite number"):
        train_single_process(lr=lr)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        reference_run(lr=lr)


def test_compare_compiled_refuses_zero_rounds_before_compiling():
    from labkit.efficiency.compiling import compare_compiled

    calls = []
    for rounds, exc in ((0, ValueError), (1.5, TypeError)):
        with pytest.raises(exc, match="rounds"):
            compare_compiled(lambda: None, lambda: calls.append(1), rounds=rounds)
    assert calls == []  # nothing ran (no ZeroDivisionError after compiling)


@pytest.mark.parametrize("value", NAN_INF)
def test_timing_never_hangs_on_a_non_finite_run_time(value):
    from labkit.metrics import latency
    from labkit.timing import time_fn

    with pytest.raises(ValueError, match="min_run_time must be a finite number"):
        time_fn(lambda: None, min_run_time=value)
    with pytest.raises(ValueError, match="min_run_time must be a finite number"):
        latency(nn.Linear(2, 2), torch.ones(1, 2), min_run_time=value)


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", ""])
def test_write_memmap_stays_in_its_folder(tmp_path, name):
    from labkit.efficiency.loading import write_memmap

    inner = tmp_path / "inner"
    inner.mkdir()
    with pytest.raises(ValueError, match="name must be a plain file name"):
        write_memmap(torch.zeros(2, 3), torch.zeros(2), inner, name=name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["inner"]
