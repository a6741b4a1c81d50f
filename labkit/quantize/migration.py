"""Moving a per-channel scale between two layers without changing what the model computes.

A Linear multiplies its input channel ``j`` by column ``j`` of its weight. Divide that channel by
``s_j`` in the op that produces it and multiply the column by ``s_j``, and nothing changes::

    y = W x = (W diag(s)) (diag(s)^-1 x)

The producing op can be a LayerNorm (divide its weight and bias: ``LN(x)_j / s_j = (g_j / s_j)
x̂_j + b_j / s_j``) or a Linear's output rows (divide those rows and their bias). Three
techniques of lesson 06 §7-§8 are this one identity with different ``s``:

* **AWQ** (:mod:`labkit.quantize.awq`): ``s = mean|x|^α``: salient input channels get larger
  weights, so rounding hurts them relatively less;
* **SmoothQuant** (:mod:`labkit.quantize.smoothquant`): ``s_j = max|X_j|^α / max|W_j|^(1-α)``:
  activation outliers migrate into the weights, which take them better;
* **outlier injection**: ``s_j = 1 / c`` on a few channels makes a model with ``c`` times larger
  activations there and the same outputs - outliers like large LLMs have, on a small model.

:func:`layernorm_pairs` lists the (LayerNorm, Linear) pairs of a pre-norm transformer (the course
GPT: ``ln_1 -> attn.c_attn`` and ``ln_2 -> mlp.0`` in each block).
"""

from __future__ import annotations

import torch
from torch import nn

from labkit import _args


def _check_scale(s, k: int) -> torch.Tensor:
    _args.tensor("s", s, dtype="floating", shape=(k,), finite=True)
    if not bool((s > 0).all()):
        raise ValueError("s must be > 0 in every channel")
    return s.detach().float()


@torch.no_grad()
def migrate_scale_(prev: nn.Module, linear: nn.Linear, s: torch.Tensor, *, rows: slice | None = None) -> None:
    """In place: divide ``prev``'s output channels by ``s`` and multiply ``linear``'s input columns by ``s``.

    ``prev`` is an ``nn.LayerNorm`` (with an elementwise affine) or an ``nn.Linear``, whose output
    rows ``rows`` (all by default) feed ``linear`` - e.g. the value rows of a fused QKV projection,
    since attention is linear in the values.
    """
    _args.module("prev", prev, (nn.LayerNorm, nn.Linear))
    _args.module("linear", linear, nn.Linear)
    s = _check_scale(s, linear.in_features)
    if isinstance(prev, nn.LayerNorm):
        if prev.weight is None or prev.normalized_shape != (linear.in_features,):
            raise ValueError(f"prev must be a LayerNorm with a weight over {linear.in_features} channels")
        params = [prev.weight, prev.bias]
    else:
        rows = slice(None) if rows is None else _args.instance("rows", rows, slice)
        params = [prev.weight[rows], None if prev.bias is None else prev.bias[rows]]
        if params[0].shape[0] != linear.in_features:
            raise ValueError(f"prev's output rows {rows} give {params[0].shape[0]} channels, linear takes {linear.in_features}")
    for p in params:
        if p is not None:
            p.div_(s.to(p.dtype).reshape(-1, *([1] * (p.dim() - 1))))
    linear.weight.mul_(s.to(linear.weight.dtype))


def layernorm_pairs(model: nn.Module, *, missing_ok: bool = False) -> list[tuple[str, str]]:
    """``(layernorm, linear)`` names of each pre-norm block: ``ln_1 -> attn.c_attn``, ``ln_2 -> mlp.0``.
    A model without such blocks is an error, or ``[]`` with ``missing_ok``."""
    _args.module("model", model)
    _args.boolean("missing_ok", missing_ok)
    pairs = []
    for name, m in model.named_modules():
        if all(hasattr(m, a) for a in ("ln_1", "attn", "ln_2", "mlp")):
            pre = f"{name}." if name else ""
            pairs += [(f"{pre}ln_1", f"{pre}attn.c_attn"), (f"{pre}ln_2", f"{pre}mlp.0")]
    if not pairs and not missing_ok:
        raise ValueError("model has no pre-norm blocks (modules with ln_1, attn, ln_2 and mlp)")
    return pairs


def inject_outliers_(model: nn.Module, channels, factor: float) -> nn.Module:
    """Make the activations after every block's LayerNorms ``factor`` times larger in ``channels``
    (the LayerNorm's weight and bias up, the next Linear's columns down): same outputs, new outliers."""
    _args.module("model", model)
    factor = _args.positive_float("factor", factor)
    chans = torch.as_tensor(_args.sequence("channels", channels, of=int, non_empty=True))
    modules = dict(model.named_modules())
    for ln_name, lin_name in layernorm_pairs(model):
        linear = modules[lin_name]
        if int(chans.min()) < 0 or int(chans.max()) >= linear.in_features:
            raise ValueError(f"channels must lie in [0, {linear.in_features}), got {chans.tolist()}")
        s = torch.ones(linear.in_features)
        s[chans] = 1.0 / factor
        migrate_scale_(modules[ln_name], linear, s)
    return model
