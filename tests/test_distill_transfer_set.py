"""labkit.distill.transfer_set: hiding labels, caching the teacher, pseudo-labels and shifted copies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.distill.transfer_set import (
    IGNORE_INDEX,
    few_labels,
    pseudo_labels,
    shifted_copies,
    teacher_logits,
)
from labkit.models import MLP, SmallCNN


def test_few_labels_stratified_and_repeatable():
    y = torch.arange(10).repeat(35)  # 350 labels, 35 per class
    part = few_labels(y, 50, generator=torch.Generator().manual_seed(0))
    kept = part != IGNORE_INDEX
    assert int(kept.sum()) == 50
    assert torch.equal(part[kept], y[kept])  # the kept labels are the true ones
    assert torch.bincount(part[kept], minlength=10).tolist() == [5] * 10
    again = few_labels(y, 50, generator=torch.Generator().manual_seed(0))
    other = few_labels(y, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(part, again) and not torch.equal(part, other)
    assert y.tolist() == torch.arange(10).repeat(35).tolist()  # input untouched


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), seed=st.integers(0, 100), stratified=st.booleans())
def test_few_labels_keeps_exactly_n(n, seed, stratified):
    y = torch.randint(0, 4, (60,), generator=torch.Generator().manual_seed(seed))
    part = few_labels(y, n, generator=torch.Generator().manual_seed(seed), stratified=stratified)
    assert int((part != IGNORE_INDEX).sum()) == n
    if stratified:
        counts = torch.bincount(part[part != IGNORE_INDEX], minlength=4)
        avail = torch.bincount(y, minlength=4)
        # no class is short-changed while another gets more than its share + 1
        fair = torch.minimum(avail, torch.full_like(avail, n // 4))
        assert bool((counts >= fair).all())


def test_few_labels_bad_input():
    y = torch.arange(10)
    with pytest.raises(ValueError, match="n_labelled"):
        few_labels(y, 0)
    with pytest.raises(ValueError, match="n_labelled"):
        few_labels(y, 11)
    with pytest.raises(TypeError, match="labels"):
        few_labels(y.float(), 3)
    with pytest.raises(ValueError, match="labels must have 1 dimensions"):
        few_labels(y.reshape(2, 5), 3)
    with pytest.raises(TypeError, match="generator"):
        few_labels(y, 3, generator=0)


def test_teacher_logits_match_a_direct_eval_pass(gen):
    teacher = SmallCNN((1, 8, 8), widths=(4,), num_classes=3)
    x = torch.rand(10, 1, 8, 8, generator=gen)
    teacher.train()
    z = teacher_logits(teacher, x, batch_size=3)
    assert teacher.training  # mode restored
    teacher.eval()
    with torch.no_grad():
        assert torch.allclose(z, teacher(x), atol=1e-6)  # eval-mode BN, batched the same
    assert not z.requires_grad
    with pytest.raises(TypeError, match="teacher"):
        teacher_logits("t", x)
    with pytest.raises(ValueError, match="inputs"):
        teacher_logits(teacher, torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match="batch_size"):
        teacher_logits(teacher, x, batch_size=0)


def test_pseudo_labels():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.1, 0.0, 0.2], [0.0, 4.0, 0.0]])
    assert pseudo_labels(logits).tolist() == [0, 2, 1]
    assert pseudo_labels(logits, threshold=0.9).tolist() == [0, IGNORE_INDEX, 1]
    known = torch.tensor([2, IGNORE_INDEX, IGNORE_INDEX])
    assert pseudo_labels(logits, labels=known, threshold=0.9).tolist() == [2, IGNORE_INDEX, 1]
    with pytest.raises(ValueError, match="threshold"):
        pseudo_labels(logits, threshold=1.5)
    with pytest.raises(TypeError, match="logits"):
        pseudo_labels(logits.long())
    with pytest.raises(ValueError, match="rows"):
        pseudo_labels(logits, labels=torch.tensor([0, 1]))


def test_shifted_copies_hand_worked():
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 2] = 1.0  # one bright pixel in the middle
    out = shifted_copies(img, 40, max_shift=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (40, 1, 5, 5)
    assert torch.equal(out.sum((1, 2, 3)), torch.ones(40))  # the pixel is moved, never lost
    where = [tuple(torch.nonzero(o[0])[0].tolist()) for o in out]
    assert all(abs(r - 2) <= 2 and abs(c - 2) <= 2 for r, c in where)
    assert len(set(where)) > 5  # really random shifts
    same = shifted_copies(img, 3, max_shift=0)
    assert torch.equal(same, img.repeat(3, 1, 1, 1))


def test_shifted_copies_match_roll_inside_the_frame(gen):
    x = F.pad(torch.rand(6, 1, 4, 4, generator=gen), (2, 2, 2, 2))  # zero border: roll == shift
    out = shifted_copies(x, 1, max_shift=2, generator=torch.Generator().manual_seed(3))
    for a in range(6):
        assert any(torch.equal(out[a], torch.roll(x[a], (dy, dx), dims=(1, 2)))
                   for dy in range(-2, 3) for dx in range(-2, 3))


def test_shifted_copies_bad_input():
    with pytest.raises(ValueError, match="images"):
        shifted_copies(torch.zeros(3, 5, 5), 1)
    with pytest.raises(ValueError, match="copies"):
        shifted_copies(torch.zeros(1, 1, 5, 5), 0)
    with pytest.raises(ValueError, match="max_shift"):
        shifted_copies(torch.zeros(1, 1, 5, 5), 1, max_shift=5)


def test_pseudo_labels_from_a_teacher_agree_with_its_argmax(gen):
    teacher = MLP((4,), hidden=(8,), num_classes=3)
    x = torch.randn(20, 4, generator=gen)
    z = teacher_logits(teacher, x)
    assert torch.equal(pseudo_labels(z), z.argmax(1))
