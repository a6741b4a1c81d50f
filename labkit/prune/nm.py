"""Masks from any importance score: N:M groups (2:4 sparsity) and a fixed share per output row.

Both take a score per weight (``|W|`` for magnitude pruning, ``|W| * ||X_j||`` for Wanda, see
:mod:`labkit.prune.wanda`) shaped like a Linear weight ``(out_features, in_features)`` and
return a boolean mask (True = keep):

* **N:M** (:func:`nm_mask`): cut every row into groups of ``M`` consecutive *input* weights and
  keep the ``N`` highest-scoring ones of each group. 2:4 is what NVIDIA's sparse tensor cores run
  (Ampere and later): exactly half the weights, in a pattern the hardware can skip. The input
  dimension must be a multiple of ``M``.
* **Per row** (:func:`row_mask`): in each output row, drop the ``round(sparsity * in_features)``
  lowest scores. Wanda compares scores within a row this way (every output neuron keeps the same
  share), where plain magnitude pruning ranks a whole layer at once
  (:func:`labkit.prune.masks.magnitude_mask`).

Masks are deterministic on ties (stable sorts): :func:`row_mask` sorts ascending and drops the
first ``k``, as Wanda's published code does, so among equal scores the *lower* index is dropped;
:func:`nm_mask` sorts each group descending and keeps the first ``n``, so there the lower index
is *kept* (the published N:M code uses ``torch.topk``, whose order on ties is unspecified). Checked in ``tests/test_prune_llm_nm.py``; used by lesson ``05_pruning``'s
language-model section through :mod:`labkit.prune.llm`.
"""

from __future__ import annotations

import torch

from labkit import _args


def _check_scores(scores) -> torch.Tensor:
    return _args.tensor("scores", scores, dtype="floating", ndim=2, non_empty=True)


def check_nm(n, m) -> tuple[int, int]:
    """``(n, m)`` as ints with ``1 <= n <= m``, or a clear error (N > M keeps more than a group holds)."""
    n, m = _args.positive_int("n", n), _args.positive_int("m", m)
    if n > m:
        raise ValueError(f"n={n} must be <= m={m}: a group of {m} weights cannot keep {n}")
    return n, m


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the ``n`` highest scores of every ``m`` consecutive entries along the input dimension.

    ``scores``: ``(out_features, in_features)`` with ``in_features % m == 0``. Returns a bool mask
    of the same shape with exactly ``n`` True in each group (sparsity ``1 - n/m``).
    """
    scores = _check_scores(scores)
    n, m = check_nm(n, m)
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"scores has {cols} input columns, not a multiple of m={m}: N:M groups need whole groups")
    groups = scores.detach().float().reshape(rows, cols // m, m)
    # stable descending sort: among equal scores the lower index is kept first
    keep = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, cols)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Drop the ``round(sparsity * in_features)`` lowest scores in every output row (True = keep)."""
    scores = _check_scores(scores)
    sparsity = _args.fraction("sparsity", sparsity)
    rows, cols = scores.shape
    k = round(sparsity * cols)
    order = torch.sort(scores.detach().float(), dim=1, stable=True).indices
    mask = torch.ones(rows, cols, dtype=torch.bool, device=scores.device)
    return mask.scatter_(1, order[:, :k], False)


def is_nm_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True when every group of ``m`` consecutive input weights holds at most ``n`` non-zeros
    (the pattern a 2:4 sparse kernel accepts)."""
    _args.tensor("weight", weight, ndim=2, non_empty=True)
    n, m = check_nm(n, m)
    rows, cols = weight.shape
    if cols % m:
        raise ValueError(f"weight has {cols} input columns, not a multiple of m={m}")
    nonzero = (weight.detach() != 0).reshape(rows, cols // m, m).sum(-1)
    return bool((nonzero <= n).all())
