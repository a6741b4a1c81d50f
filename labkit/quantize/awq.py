"""AWQ-style activation-aware scaling (Lin et al., 2023): protect the weights that meet large inputs.

A weight column that multiplies a large input channel matters more. AWQ scales column ``j`` up by
``s_j`` before rounding and the input down by ``s_j`` (:mod:`labkit.quantize.migration`: exact in
float), so its relative rounding error shrinks. The published ``auto_scale`` searches one exponent::

    s(α) = mean_t |x_tj| ^ α,   normalised:  s / sqrt(max(s) min(s))      α in {0, 1/n, .., (n-1)/n}
    W_hat(α) = Q(W diag(s)) diag(s)^-1        keep the α with the least  ||X W^T - X W_hat^T||^2

``α = 0`` gives ``s = 1``, plain RTN, so the search is never worse than RTN on its objective.
Here the objective is each Linear's own output on its calibration inputs (llm-awq measures the
enclosing attention or MLP block's output; for the course GPT's fused QKV and single MLP input the
layers are the same, the nonlinearity after them is not included), and its weight clipping search
(``auto_clip``) is left out.

:func:`awq_quantize_` folds ``1/s`` into the LayerNorm before a Linear where there is one (so the
stored weight is on the quantization grid) and otherwise keeps it as the Linear's input scaling,
writing the equivalent ``Q(W diag(s)) diag(s)^-1`` into the float weight. Used by lesson 06 §7.
"""

from __future__ import annotations

import torch
from torch import nn

from labkit import _args
from labkit.quantize.calibration import capture_inputs, channel_stats, layer_error
from labkit.quantize.groupwise import linear_names, quantize_linears_, rtn_weight
from labkit.quantize.migration import layernorm_pairs, migrate_scale_


def awq_scales(absmean: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = absmean^α`` (clamped at 1e-4), divided by ``sqrt(max(s) min(s))`` as in llm-awq."""
    _args.tensor("absmean", absmean, dtype="floating", ndim=1, finite=True, non_empty=True)
    alpha = _args.fraction("alpha", alpha)
    s = absmean.float().pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def awq_search(weight: torch.Tensor, x: torch.Tensor, *, bits: int = 4, group_size: int = 128,
               symmetric: bool = False, n_grid: int = 20) -> dict:
    """Grid search of AWQ's exponent for one Linear weight ``(N, K)`` and its inputs ``x`` ``(rows, K)``.

    Returns ``{"alpha", "scale", "w_hat", "error", "rtn_error", "errors"}`` - the best exponent,
    its scales ``(K,)``, the equivalent float weight ``Q(W s) / s``, its layer error, RTN's
    (``α = 0``) and the error at every grid point.
    """
    _args.tensor("weight", weight, dtype="floating", ndim=2, finite=True, non_empty=True)
    _args.tensor("x", x, dtype="floating", ndim=2)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"calibration inputs x have width {x.shape[1]}, the weight takes {weight.shape[1]}")
    n_grid = _args.positive_int("n_grid", n_grid)
    absmean = channel_stats(x)["absmean"]
    w = weight.detach().float()
    best, errors = None, []
    for i in range(n_grid):
        s = awq_scales(absmean, i / n_grid)
        w_hat = rtn_weight(w * s, bits=bits, group_size=group_size, symmetric=symmetric) / s
        err = layer_error(w, w_hat, x)
        errors.append(err)
        if best is None or err < best["error"]:
            best = {"alpha": i / n_grid, "scale": s, "w_hat": w_hat, "error": err}
    return {**best, "rtn_error": errors[0], "errors": errors}


@torch.no_grad()
def awq_quantize_(model: nn.Module, batches, *, bits: int = 4, group_size: int = 128, symmetric: bool = False,
                  n_grid: int = 20, skip: tuple[str, ...] = ("head",)) -> dict[str, dict]:
    """AWQ + RTN every Linear of ``model`` in place, with inputs from ``batches``.

    Returns ``{layer: {"alpha", "scale", "folded_into"}}``: the chosen exponent, the scales and the
    LayerNorm that took ``1/s`` (``None`` where the Linear's weight holds ``Q(W s) / s`` instead).
    """
    _args.module("model", model)
    names = linear_names(model, skip=skip)
    inputs = capture_inputs(model, batches, names)
    modules = dict(model.named_modules())
    prev_ln = {lin: ln for ln, lin in layernorm_pairs(model, missing_ok=True)}
    chosen = {}

    def quantizer(name, linear):
        found = awq_search(linear.weight, inputs[name], bits=bits, group_size=group_size, symmetric=symmetric,
                           n_grid=n_grid)
        chosen[name] = {"alpha": found["alpha"], "scale": found["scale"], "folded_into": prev_ln.get(name)}
        if name not in prev_ln:
            return found["w_hat"]
        migrate_scale_(modules[prev_ln[name]], linear, found["scale"])  # 1/s into the LayerNorm, W s here
        return rtn_weight(linear.weight, bits=bits, group_size=group_size, symmetric=symmetric)

    quantize_linears_(model, quantizer, skip=skip)
    return chosen
