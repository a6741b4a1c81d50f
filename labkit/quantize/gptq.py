"""GPTQ (Frantar et al., 2022): quantize a weight one column at a time, pushing each column's error
onto the columns not yet quantized, through the inverse Hessian of the layer's output error.

For a Linear with calibration inputs ``X`` the objective is ``||X W^T - X W_hat^T||^2``; each row
of ``W`` is an independent least-squares problem with Hessian ``H = 2 X^T X`` (``(K, K)``). The
Optimal Brain Surgeon step quantizes column ``i`` and corrects the rest of the row::

    err   = (w_i - q(w_i)) / [H^-1]_ii
    w_j  -= err * [H^-1]_ij          for the columns j > i not yet quantized
    H^-1  = H^-1 - H^-1[:, i] H^-1[i, :] / [H^-1]_ii     (remove column i: Gaussian elimination)

:func:`obs_reference` does exactly that (the oracle). GPTQ's insight is that the rows of the
*upper Cholesky factor* ``U`` of ``H^-1`` are these eliminated inverses, all at once, so
:func:`gptq_weight` (the published ``fasterquant``) computes ``U`` once:

1. dead inputs (``H_ii = 0``) get ``H_ii = 1`` and zero weight; damping ``H += λ I`` with
   ``λ = damp * mean(diag H)`` (1%) keeps ``H`` invertible;
2. ``U = cholesky(H^-1, upper=True)``;
3. columns go in blocks of ``block_size``: inside a block, column by column, ``err = (w_i - q_i) /
   U_ii``, ``W[:, i:] -= err U[i, i:]`` (the exercise of lesson 06); after a block, one matrix
   product carries the block's errors to all later columns ("lazy batch" updates);
4. each group's scale and zero-point are chosen (min-max, fp16 scale) when the group's first
   column is reached, from the weights as updated so far.

With a diagonal ``H`` nothing is carried over and GPTQ is RTN exactly. GPTQ is greedy, not optimal:
on random correlated layers (``tests/test_quantize_llm.py``) it never lost to RTN with the 1% damping,
but undamped it did on a few percent of them. Used by lesson 06 §7.
"""

from __future__ import annotations

import torch
from torch import nn

from labkit import _args
from labkit.quantize.calibration import capture_inputs, hessian
from labkit.quantize.groupwise import (
    check_group,
    fake_quant_columns,
    group_qparams,
    linear_names,
    quantize_linears_,
)
from labkit.quantize.maths import check_bits


def _check_hessian(h, k: int) -> torch.Tensor:
    _args.tensor("H", h, dtype="floating", shape=(k, k), finite=True)
    return h.double().clone()


def _prepare(weight, h, damp) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 copies of ``W`` and of the damped ``H`` (dead inputs fixed as in the paper's code)."""
    _args.tensor("weight", weight, dtype="floating", ndim=2, finite=True, non_empty=True)
    damp = _args.non_negative_float("damp", damp)
    w = weight.detach().double().clone()
    h = _check_hessian(h, w.shape[1])
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(len(h), dtype=h.dtype)
    return w, h


def _quantizer(bits: int, symmetric: bool):
    """``fit(cols) -> (scale, zero)`` for one group of columns; ``apply(col, scale, zero) -> col_hat``."""
    def fit(cols):
        return group_qparams(cols.amin(1).float(), cols.amax(1).float(), bits=bits, symmetric=symmetric)

    def apply(col, scale, zero):
        return fake_quant_columns(col.float(), scale, zero, bits=bits, symmetric=symmetric).double()
    return fit, apply


def column_update(w: torch.Tensor, i: int, q: torch.Tensor, h_inv_row: torch.Tensor) -> torch.Tensor:
    """One step of OBS / GPTQ, in place: column ``i`` of ``w`` has been rounded to ``q``; spread its
    error over the columns from ``i`` on, through row ``i`` of the (eliminated or Cholesky) inverse
    Hessian, and return the scaled error ``(w_i - q) / h_inv_row[i]``::

        err = (w[:, i] - q) / h_inv_row[i]        w[:, i:] -= err h_inv_row[i:]

    (Column ``i`` itself becomes ``q``.) The exercise of lesson 06 §7.
    """
    _args.tensor("w", w, dtype="floating", ndim=2)
    i = _args.integer("i", i, minimum=0, maximum=w.shape[1] - 1)
    _args.tensor("q", q, dtype="floating", shape=(w.shape[0],))
    _args.tensor("h_inv_row", h_inv_row, dtype="floating", shape=(w.shape[1],))
    err = (w[:, i] - q.to(w.dtype)) / h_inv_row[i]
    w[:, i:] -= err[:, None] * h_inv_row[None, i:].to(w.dtype)
    return err


def obs_reference(weight: torch.Tensor, h: torch.Tensor, *, bits: int = 4, group_size: int | None = None,
                  symmetric: bool = False, damp: float = 0.01) -> torch.Tensor:
    """The straightforward OBS loop (no Cholesky, no blocks): quantize column ``i``, update the
    remaining columns with the current inverse Hessian, eliminate ``i`` from it. The test oracle."""
    bits = check_bits(bits)
    w, h = _prepare(weight, h, damp)
    k = w.shape[1]
    g = k if group_size is None else check_group(group_size, k)
    fit, apply = _quantizer(bits, symmetric)
    hinv = torch.linalg.inv(h)
    q = torch.zeros_like(w)
    for i in range(k):
        if i % g == 0:
            scale, zero = fit(w[:, i:i + g])
        q[:, i] = apply(w[:, i], scale, zero)
        column_update(w, i, q[:, i], hinv[i])
        hinv = hinv - hinv[:, i:i + 1] @ hinv[i:i + 1, :] / hinv[i, i]
    return q.float()


def gptq_weight(weight: torch.Tensor, h: torch.Tensor, *, bits: int = 4, group_size: int | None = 128,
                symmetric: bool = False, damp: float = 0.01, block_size: int = 128,
                act_order: bool = False) -> torch.Tensor:
    """GPTQ-quantized ``W_hat`` (float32, ``(N, K)``) of ``weight`` given the Hessian ``h`` (``(K, K)``).

    ``group_size=None`` uses one grid per row. ``block_size`` changes only the speed, not the result.
    ``act_order=True`` (the reference code's ``actorder``, "desc_act") quantizes the columns in
    order of decreasing ``H_jj`` - the inputs with the most energy first, while there are many
    columns left to absorb their error; groups are then ``group_size`` consecutive columns *in that
    order*, so a checkpoint also stores each column's group index (``log2(K / g)`` bits per input
    column, ``log2(K / g) / N`` per weight; nothing when ``g = K``).
    """
    if _args.boolean("act_order", act_order):
        _args.tensor("weight", weight, dtype="floating", ndim=2)
        perm = torch.argsort(torch.diag(_check_hessian(h, weight.shape[1])), descending=True)
        q = gptq_weight(weight[:, perm], h[perm][:, perm], bits=bits, group_size=group_size,
                        symmetric=symmetric, damp=damp, block_size=block_size)
        return q[:, torch.argsort(perm)]
    bits = check_bits(bits)
    _args.boolean("symmetric", symmetric)
    block_size = _args.positive_int("block_size", block_size)
    w, h = _prepare(weight, h, damp)
    k = w.shape[1]
    g = k if group_size is None else check_group(group_size, k)
    fit, apply = _quantizer(bits, symmetric)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1, err1 = w[:, i1:i2].clone(), torch.zeros_like(w[:, i1:i2])
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:  # the group's weights as updated so far: this block's, then the later ones
                later = w[:, i2:col + g] - err1[:, :i] @ u[i1:col, i2:col + g]
                scale, zero = fit(torch.cat([w1[:, i:], later], dim=1)[:, :g])
            q[:, col] = apply(w1[:, i], scale, zero)
            err1[:, i] = column_update(w1, i, q[:, col], u[col, i1:i2])
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return q.float()


def gptq_quantize_(model: nn.Module, batches, *, bits: int = 4, group_size: int | None = 128,
                   symmetric: bool = False, damp: float = 0.01, block_size: int = 128, act_order: bool = False,
                   skip: tuple[str, ...] = ("head",)) -> nn.Module:
    """GPTQ every Linear of ``model`` in place, with Hessians from its inputs on ``batches``."""
    _args.module("model", model)
    inputs = capture_inputs(model, batches, linear_names(model, skip=skip))
    return quantize_linears_(model, lambda name, lin: gptq_weight(
        lin.weight, hessian(inputs[name], in_features=lin.in_features), bits=bits, group_size=group_size,
        symmetric=symmetric, damp=damp, block_size=block_size, act_order=act_order), skip=skip)
