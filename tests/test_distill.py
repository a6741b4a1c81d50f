"""labkit.distill: the KD loss against a hand-written formula, its gradient, and the distill loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from labkit import train
from labkit.distill import (
    IGNORE_INDEX,
    distill,
    distillation_loss,
    gap_closed,
    hard_label_loss,
    soft_target_loss,
    soft_targets,
)
from labkit.distill.feature import FeatureHint
from labkit.distill.loop import distill_batch_loss
from labkit.models import MLP, SmallCNN, tiny_student


def reference_kd(zs, zt, y, T, alpha):
    """Hinton's loss written out by hand, element by element, in float64."""
    zs, zt = zs.double(), zt.double()
    n, c = zs.shape
    kl = 0.0
    for i in range(n):
        pt = [math.exp(zt[i, k] / T) for k in range(c)]
        ps = [math.exp(zs[i, k] / T) for k in range(c)]
        st_, ss = sum(pt), sum(ps)
        kl += sum((pt[k] / st_) * math.log((pt[k] / st_) / (ps[k] / ss)) for k in range(c))
    soft = T * T * kl / n
    ce = -sum(math.log(math.exp(zs[i, y[i]]) / sum(math.exp(zs[i, k]) for k in range(c))) for i in range(n)) / n
    return (1 - alpha) * ce + alpha * soft


@pytest.fixture
def logits(gen):
    zs = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    zt = 2 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=gen)
    return zs, zt, y


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 0.0), (8.0, 1.0)])
def test_loss_matches_hand_written_formula(logits, T, alpha):
    zs, zt, y = logits
    got = distillation_loss(zs, zt, y, temperature=T, alpha=alpha)
    assert got.item() == pytest.approx(reference_kd(zs, zt, y, T, alpha), rel=1e-10)


def test_alpha_zero_is_cross_entropy(logits):
    zs, zt, y = logits
    assert torch.allclose(distillation_loss(zs, zt, y, temperature=3.0, alpha=0.0), F.cross_entropy(zs, y))


def test_alpha_one_is_soft_term_and_needs_no_labels(logits):
    zs, zt, _ = logits
    soft = soft_target_loss(zs, zt, temperature=2.0)
    assert torch.allclose(distillation_loss(zs, zt, None, temperature=2.0, alpha=1.0), soft)
    with pytest.raises(ValueError, match="labels is None"):
        distillation_loss(zs, zt, None, temperature=2.0, alpha=0.5)


def test_soft_loss_is_zero_when_student_equals_teacher(logits):
    _, zt, _ = logits
    for T in (0.5, 1.0, 4.0, 20.0):
        assert soft_target_loss(zt.clone(), zt, temperature=T).abs().item() < 1e-12
    assert soft_target_loss(zt + 3.0, zt, temperature=2.0).abs().item() < 1e-12  # softmax ignores shifts


def test_soft_loss_positive_when_they_differ(logits):
    zs, zt, _ = logits
    assert soft_target_loss(zs, zt, temperature=2.0).item() > 0


def test_gradcheck_of_student_logits(logits):
    zs, zt, y = logits
    zs = zs.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: distillation_loss(z, zt, y, temperature=3.0, alpha=0.7), (zs,))


def test_gradient_matches_closed_form(logits):
    """d/dz_s [T^2 KL] = T (p_s(T) - p_t(T)) / N  and  d/dz_s CE = (p_s - onehot) / N."""
    zs, zt, y = logits
    T, alpha, n = 4.0, 0.6, zs.shape[0]
    zs = zs.clone().requires_grad_(True)
    distillation_loss(zs, zt, y, temperature=T, alpha=alpha).backward()
    ps_t, pt_t = F.softmax(zs.detach() / T, 1), F.softmax(zt / T, 1)
    expected = alpha * T * (ps_t - pt_t) / n + (1 - alpha) * (F.softmax(zs.detach(), 1) - F.one_hot(y, 5)) / n
    assert torch.allclose(zs.grad, expected, atol=1e-12)


def test_high_temperature_limit_is_logit_matching(gen):
    """Hinton sec. 2.1: for large T (zero-mean logits) the soft gradient -> (z_s - z_t) / (N C)."""
    zs = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    zt = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    zs, zt = zs - zs.mean(1, keepdim=True), zt - zt.mean(1, keepdim=True)
    zs.requires_grad_(True)
    soft_target_loss(zs, zt, temperature=1e5).backward()
    assert torch.allclose(zs.grad, (zs.detach() - zt) / (4 * 10), rtol=1e-3, atol=1e-6)


def test_teacher_gets_no_gradient(logits):
    zs, zt, y = logits
    zs = zs.clone().requires_grad_(True)
    zt = zt.clone().requires_grad_(True)
    distillation_loss(zs, zt, y, temperature=2.0, alpha=0.5).backward()
    assert zt.grad is None and zs.grad is not None


def test_ignored_labels_leave_only_the_soft_term(logits):
    zs, zt, y = logits
    y_part = y.clone()
    y_part[3:] = IGNORE_INDEX
    got = distillation_loss(zs, zt, y_part, temperature=2.0, alpha=0.3)
    expected = 0.7 * F.cross_entropy(zs[:3], y[:3]) + 0.3 * soft_target_loss(zs, zt, temperature=2.0)
    assert torch.allclose(got, expected)
    none = torch.full_like(y, IGNORE_INDEX)
    assert hard_label_loss(zs, none).item() == 0.0
    assert torch.allclose(distillation_loss(zs, zt, none, temperature=2.0, alpha=0.3),
                          0.3 * soft_target_loss(zs, zt, temperature=2.0))


@settings(max_examples=30, deadline=None)
@given(T=st.floats(0.1, 50.0), seed=st.integers(0, 1000))
def test_soft_targets_are_distributions_flattening_with_T(T, seed):
    z = torch.randn(3, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    p, p_hotter = soft_targets(z, T), soft_targets(z, 2 * T)
    assert torch.allclose(p.sum(1), torch.ones(3, dtype=torch.float64))
    assert torch.equal(p.argmax(1), p_hotter.argmax(1))
    entropy = lambda q: -(q * q.clamp_min(1e-300).log()).sum(1)  # noqa: E731
    assert bool((entropy(p_hotter) >= entropy(p) - 1e-9).all())


def test_soft_targets_at_T1_is_softmax(logits):
    _, zt, _ = logits
    assert torch.allclose(soft_targets(zt), F.softmax(zt, 1))


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": 0.0, "alpha": 0.5}, "temperature"),
    ({"temperature": -1.0, "alpha": 0.5}, "temperature"),
    ({"temperature": float("inf"), "alpha": 0.5}, "temperature"),
    ({"temperature": 2.0, "alpha": -0.1}, "alpha"),
    ({"temperature": 2.0, "alpha": 1.5}, "alpha"),
])
def test_bad_hyperparameters(logits, kwargs, match):
    zs, zt, y = logits
    with pytest.raises(ValueError, match=match):
        distillation_loss(zs, zt, y, **kwargs)


def test_bad_types(logits):
    zs, zt, y = logits
    with pytest.raises(TypeError, match="temperature"):
        distillation_loss(zs, zt, y, temperature="4", alpha=0.5)
    with pytest.raises(TypeError, match="alpha"):
        distillation_loss(zs, zt, y, temperature=4.0, alpha=True)
    with pytest.raises(TypeError, match="student_logits"):
        distillation_loss(zs.numpy(), zt, y, temperature=4.0, alpha=0.5)
    with pytest.raises(TypeError, match="teacher_logits"):
        distillation_loss(zs, zt.long(), y, temperature=4.0, alpha=0.5)
    with pytest.raises(TypeError, match="labels"):
        distillation_loss(zs, zt, y.double(), temperature=4.0, alpha=0.5)


def test_mismatched_shapes_and_class_counts(logits):
    zs, zt, y = logits
    with pytest.raises(ValueError, match="different numbers of classes"):
        distillation_loss(zs, zt[:, :4], y, temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match="mismatched logits shapes"):
        distillation_loss(zs, zt[:4], y, temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match="student_logits must have 2 dimensions"):
        distillation_loss(zs.flatten(), zt.flatten(), y, temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match="labels must have shape"):
        distillation_loss(zs, zt, y[:3], temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
        distillation_loss(zs, zt, torch.full_like(y, 5), temperature=2.0, alpha=0.5)


def test_gap_closed():
    assert gap_closed(0.8, 0.9, 1.0) == pytest.approx(0.5)
    assert gap_closed(0.8, 0.8, 0.9) == 0.0
    assert gap_closed(0.8, 0.75, 0.9) < 0
    with pytest.raises(ValueError, match="teacher"):
        gap_closed(0.9, 0.95, 0.9)
    with pytest.raises(TypeError, match="distilled"):
        gap_closed(0.8, None, 0.9)


# --- the loop -----------------------------------------------------------------------------------


def _toy(gen, n=64, classes=3):
    x = torch.randn(n, 1, 4, 4, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x, y


def test_distill_teacher_in_eval_without_gradients_and_mode_restored(gen):
    x, y = _toy(gen)
    teacher = SmallCNN((1, 4, 4), widths=(4,), num_classes=3)
    student = MLP((1, 4, 4), hidden=(8,), num_classes=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes = []
    teacher.register_forward_hook(lambda m, i, o: modes.append((m.training, torch.is_grad_enabled())))
    teacher.train()
    hist = distill(student, teacher, DataLoader(TensorDataset(x, y), batch_size=16), epochs=2,
                   temperature=2.0, alpha=0.5, progress=False)
    assert modes and all(m == (False, False) for m in modes)
    assert teacher.training  # put back as it was
    assert all(p.grad is None for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched too
    assert hist.epochs == 2 and {"train_loss", "soft_loss", "hard_loss", "agreement"} <= set(hist.metrics)


def test_distill_lowers_the_loss_and_student_learns_teacher(gen):
    torch.manual_seed(0)  # both models' initial weights: the test must not depend on earlier tests
    x, _ = _toy(gen, n=256)
    teacher = MLP((1, 4, 4), hidden=(16,), num_classes=3)
    y = teacher(x).argmax(1).detach()
    student = MLP((1, 4, 4), hidden=(32,), num_classes=3)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    hist = distill(student, teacher, loader, epochs=15, temperature=2.0, alpha=1.0, lr=1e-2, progress=False)
    assert hist["train_loss"][-1] < 0.5 * hist["train_loss"][0]
    assert hist["agreement"][-1] > 0.9


def test_cached_logits_equal_live_teacher(gen):
    """(x, y, teacher_logits) batches give exactly the run the live teacher gives."""
    x, y = _toy(gen)
    teacher = SmallCNN((1, 4, 4), widths=(4,), num_classes=3).eval()
    with torch.no_grad():
        z = teacher(x)
    runs = []
    for batches in (TensorDataset(x, y), TensorDataset(x, y, z)):
        torch.manual_seed(0)
        student = MLP((1, 4, 4), hidden=(8,), num_classes=3)
        h = distill(student, teacher if len(batches.tensors) == 2 else None, DataLoader(batches, batch_size=16),
                    epochs=2, temperature=3.0, alpha=0.5, progress=False)
        runs.append((h["train_loss"], student.state_dict()))
    assert runs[0][0] == pytest.approx(runs[1][0])
    assert all(torch.allclose(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_distill_val_loader_and_partial_labels(gen):
    x, y = _toy(gen)
    y_part = y.clone()
    y_part[::2] = IGNORE_INDEX
    teacher = MLP((1, 4, 4), hidden=(8,), num_classes=3)
    student = MLP((1, 4, 4), hidden=(8,), num_classes=3)
    hist = distill(student, teacher, DataLoader(TensorDataset(x, y_part), batch_size=16), epochs=1,
                   val_loader=DataLoader(TensorDataset(x, y), batch_size=32), progress=False)
    assert 0.0 <= hist.last("val_acc") <= 1.0 and "val_loss" in hist.metrics


def test_distill_with_feature_hint_trains_the_regressor(gen):
    x, y = _toy(gen, n=32)
    teacher = SmallCNN((1, 4, 4), widths=(4,), num_classes=3)
    student = MLP((1, 4, 4), hidden=(8,), num_classes=3)
    hint = FeatureHint(student, teacher, student_layer="layers.2", teacher_layer="features")
    w0 = hint.regressor[1].weight.detach().clone()
    hist = distill(student, teacher, DataLoader(TensorDataset(x, y), batch_size=16), epochs=3, hint=hint,
                   hint_weight=1.0, progress=False)
    assert "hint_loss" in hist.metrics and hist["hint_loss"][-1] < hist["hint_loss"][0]
    assert not torch.equal(w0, hint.regressor[1].weight)
    assert all(p.grad is None for p in teacher.parameters())


def test_distill_bad_input(gen):
    x, y = _toy(gen)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    student, teacher = MLP((1, 4, 4), hidden=(8,), num_classes=3), MLP((1, 4, 4), hidden=(8,), num_classes=3)
    with pytest.raises(TypeError, match="student"):
        distill("model", teacher, loader, progress=False)
    with pytest.raises(TypeError, match="teacher"):
        distill(student, "teacher", loader, progress=False)
    with pytest.raises(ValueError, match="different modules"):
        distill(student, student, loader, progress=False)
    with pytest.raises(ValueError, match="temperature"):
        distill(student, teacher, loader, temperature=0, progress=False)
    with pytest.raises(ValueError, match="alpha"):
        distill(student, teacher, loader, alpha=2, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        distill(student, teacher, loader, epochs=0, progress=False)
    with pytest.raises(ValueError, match="teacher is None"):
        distill(student, None, loader, progress=False)
    with pytest.raises(TypeError, match="loader"):
        distill(student, teacher, 3, progress=False)
    five = MLP((1, 4, 4), hidden=(8,), num_classes=5)
    with pytest.raises(ValueError, match="different numbers of classes"):
        distill(student, five, loader, progress=False)
    with pytest.raises(ValueError, match="hint"):
        distill(student, None, loader, hint=nn.Identity(), progress=False)
    with pytest.raises(ValueError, match="hint_weight"):
        distill(student, teacher, loader, hint=nn.Identity(), hint_weight=-1.0, progress=False)
    cached = DataLoader(TensorDataset(x, y, torch.zeros(len(y), 3)), batch_size=16)
    with pytest.raises(ValueError, match="cached logits"):
        distill(student, teacher, cached, hint=nn.Identity(), progress=False)
    with pytest.raises(ValueError, match=r"\(x, y\) or \(x, y, teacher_logits\)"):
        distill(student, teacher, DataLoader(TensorDataset(x), batch_size=16), progress=False)


def test_reference_models_distill_shapes():
    """The lesson's pair: SmallCNN teacher -> tiny_student, same 10 classes."""
    teacher, student = SmallCNN(), tiny_student()
    x = student.example_inputs(4)[0]
    loss = distillation_loss(student(x), teacher(x), torch.tensor([0, 1, 2, 3]), temperature=4.0, alpha=0.9)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_distill_trains_through_train_epoch_like_a_hand_written_kd_loop(gen, monkeypatch):
    """distill() runs labkit.train's epoch loop (train_epoch, with distill_batch_loss as the batch
    loss), and the result is exactly a hand-written loop over distillation_loss with SGD."""
    x, y = _toy(gen, n=48)
    teacher = SmallCNN((1, 4, 4), widths=(4,), num_classes=3).eval()
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]
    torch.manual_seed(0)
    student = MLP((1, 4, 4), hidden=(8,), num_classes=3)
    reference = copy.deepcopy(student)
    calls = []
    real = train.train_epoch
    monkeypatch.setattr(train, "train_epoch", lambda *a, **k: calls.append(k["batch_loss"]) or real(*a, **k))
    hist = distill(student, teacher, batches, epochs=1, temperature=3.0, alpha=0.7, progress=False,
                   optimizer=torch.optim.SGD(student.parameters(), lr=0.1))
    assert len(calls) == 1 and calls[0].__qualname__.startswith("distill_batch_loss")
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    losses = []
    for xb, yb in batches:
        with torch.no_grad():
            zt = teacher(xb)
        loss = distillation_loss(reference(xb), zt, yb, temperature=3.0, alpha=0.7)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert hist["train_loss"] == [pytest.approx(sum(losses) / 3)]  # equal batches: the plain mean
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(student.state_dict()[k], v)


def test_distill_batch_loss_checks_its_arguments():
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        distill_batch_loss(None, temperature=0.0)
    with pytest.raises(ValueError, match="alpha must be a number <= 1"):
        distill_batch_loss(None, alpha=1.5)
    with pytest.raises(ValueError, match="hint needs the teacher"):
        distill_batch_loss(None, hint=object())
