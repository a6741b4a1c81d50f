"""N:M and per-row masks (labkit.prune.nm) against hand-worked examples and a naive oracle."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.prune.nm import is_nm_sparse, nm_mask, row_mask


def naive_nm(scores, n, m):
    """Group by group, keep the n largest (lower index first among ties)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for r in range(scores.shape[0]):
        for g in range(0, scores.shape[1], m):
            group = scores[r, g:g + m].tolist()
            order = sorted(range(m), key=lambda i: (-group[i], i))
            for i in order[:n]:
                mask[r, g + i] = True
    return mask


def test_nm_mask_hand_worked_2_4():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2, 3.0, 1.0, 2.0, 0.0],
                           [4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 5.0]])
    expected = torch.tensor([[0, 1, 1, 0, 1, 0, 1, 0],
                             [1, 1, 0, 0, 1, 0, 0, 1]], dtype=torch.bool)  # tie of zeros: lowest index kept
    assert torch.equal(nm_mask(scores, 2, 4), expected)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), groups=st.integers(1, 5), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8)]),
       seed=st.integers(0, 10_000), ties=st.booleans())
def test_nm_mask_property(rows, groups, nm, seed, ties):
    n, m = nm
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, groups * m, generator=g).abs()
    if ties:
        scores = scores.round()  # many equal scores
    mask = nm_mask(scores, n, m)
    assert torch.equal(mask, naive_nm(scores, n, m))
    per_group = mask.reshape(rows, groups, m).sum(-1)
    assert bool((per_group == n).all())
    # every kept score is >= every dropped score of its group
    s = scores.reshape(rows, groups, m)
    k = mask.reshape(rows, groups, m)
    kept_min = torch.where(k, s, torch.inf).amin(-1)
    dropped_max = torch.where(~k, s, -torch.inf).amax(-1)
    assert bool((kept_min >= dropped_max).all())
    assert is_nm_sparse(scores * mask, n, m)


def test_row_mask_keeps_the_largest_per_row():
    scores = torch.tensor([[1.0, 5.0, 3.0, 2.0], [9.0, 8.0, 0.5, 7.0]])
    expected = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(row_mask(scores, 0.5), expected)
    assert torch.equal(row_mask(scores, 0.25).sum(1), torch.tensor([3, 3]))
    assert bool(row_mask(scores, 0.0).all()) and not bool(row_mask(scores, 1.0).any())


def test_is_nm_sparse_detects_a_full_group():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 1.0, 0.0]])
    assert is_nm_sparse(w, 3, 4) and not is_nm_sparse(w, 2, 4)


@pytest.mark.parametrize("call, err, words", [
    (lambda: nm_mask(torch.ones(2, 8), 3, 2), ValueError, "n=3 must be <= m=2"),
    (lambda: nm_mask(torch.ones(2, 6), 2, 4), ValueError, "multiple of m=4"),
    (lambda: nm_mask(torch.ones(8), 2, 4), ValueError, "scores"),
    (lambda: nm_mask(torch.ones(2, 8), 2.0, 4), TypeError, "n"),
    (lambda: nm_mask(torch.ones(2, 8, dtype=torch.long), 2, 4), TypeError, "scores"),
    (lambda: row_mask(torch.ones(2, 8), 1.5), ValueError, "sparsity"),
    (lambda: is_nm_sparse(torch.ones(2, 6), 2, 4), ValueError, "multiple of m=4"),
])
def test_bad_input(call, err, words):
    with pytest.raises(err, match=words):
        call()
