"""Unstructured magnitude pruning: masks, how they are applied and kept, and sparsity reports.

Magnitude pruning keeps the weights with the largest ``|w|`` and zeroes the rest. For a tensor
of ``n`` weights it removes the ``k`` smallest, where ``amount`` means what it means to
``torch.nn.utils.prune``: a float in [0, 1] is a *fraction*, ``k = round(amount * n)`` (Python's
``round``, half to even), and an int is a *count*, ``k = amount`` (``amount=1`` prunes one
weight, not all of them)::

    mask[i] = 0  if  |w_i| is among the k smallest |w|,  else 1        w_pruned = w * mask

*Layer-wise* pruning does this in every layer separately (each loses ``amount`` of its weights);
*global* pruning ranks the weights of all layers together, so big layers with many small weights
lose more than small, important ones such as the first conv (in ``SmallCNN`` the classifier is
the *biggest* layer, 31k of its 50k weights, and global pruning takes most from it).

A mask is applied as a parametrization (``torch.nn.utils.parametrize``): the layer keeps its
dense ``original`` weight and ``module.weight`` is recomputed as ``original * mask`` at each use.
The optimizer sees a zero gradient where the mask is 0, and whatever it does to ``original``
there never reaches the output, so the mask holds through training with no extra hook.
:func:`make_permanent_` bakes ``original * mask`` into a plain weight again. Pruning an already
masked layer combines the masks (a weight once pruned stays pruned).

**Pruning twice differs from torch.** ``amount`` here is the *total* left at zero after the call,
counting weights pruned before (already-pruned weights rank as zeros, the smallest of all).
``torch.nn.utils.prune`` applies ``amount`` to the weights that *remain*: ``l1_unstructured(m,
"weight", 0.5)`` twice leaves 75% zeros, ``magnitude_prune_(m, 0.5)`` twice leaves 50%. So the
two agree on the first call only; to reach a total of ``s`` after ``s0``, torch needs
``(s - s0) / (1 - s0)``.

Checked against ``torch.nn.utils.prune.l1_unstructured`` / ``global_unstructured`` (first call,
fraction and count; and the second-call difference) in ``tests/test_prune_masks.py``; taught in
``notebooks/05_pruning.ipynb``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from labkit import _args

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SCOPES = ("layer", "global")


def check_amount(amount, name: str = "amount") -> float:
    """``amount`` as a float in [0, 1] (a fraction, never a count), or a clear error."""
    return _args.fraction(name, amount)


def prunable_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """``{name: module}`` of the Linear / Conv layers whose ``weight`` can be pruned.

    ``layers`` restricts the choice to those names (each must be a prunable layer).
    """
    _args.module("model", model)
    found = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE)}
    if not found:
        raise ValueError(f"model has nothing to prune: {type(model).__name__} has no Linear or Conv layer")
    if layers is None:
        return found
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    unknown = [n for n in layers if n not in found]
    if unknown:
        raise ValueError(f"layers {unknown} are not prunable layers of the model; choose from {list(found)}")
    if not layers:
        raise ValueError("layers is empty: nothing to prune")
    return {n: found[n] for n in layers}


def _prune_count(amount, n: int, name: str = "amount") -> int:
    """How many of ``n`` weights ``amount`` prunes, with torch.nn.utils.prune's meaning:
    an int is a count (``0 <= amount <= n``), a float a fraction (``round(amount * n)``)."""
    if isinstance(amount, numbers.Integral) and not isinstance(amount, bool):
        if not 0 <= int(amount) <= n:
            raise ValueError(f"{name}={amount} is a count of weights (an int) and must be in [0, {n}]; "
                             f"pass a float such as {amount}.0 or 0.5 for a fraction")
        return int(amount)
    return round(check_amount(amount, name) * n)


def magnitude_mask(weight: torch.Tensor, amount: float | int) -> torch.Tensor:
    """Boolean mask (same shape as ``weight``) that is False on the ``k`` weights of smallest
    ``|w|`` and True elsewhere: ``k = round(amount * n)`` for a float, ``k = amount`` for an int."""
    _args.tensor("weight", weight, dtype="floating")
    return _smallest_k_mask(weight, _prune_count(amount, weight.numel()))


def _smallest_k_mask(weight: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    if k > 0:
        smallest = torch.topk(weight.detach().abs().flatten(), k, largest=False).indices
        mask.view(-1)[smallest] = False
    return mask


def compute_masks(model: nn.Module, amount: float | int | Mapping[str, float | int], *, scope: str = "layer",
                  layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Magnitude masks ``{layer name: bool mask}`` for the prunable layers, without applying them.

    ``scope="layer"``: each layer loses ``amount`` of its own weights (``amount`` may be a dict
    ``{layer: amount}`` for per-layer amounts). ``scope="global"``: the ``round(amount * N)``
    (float) or ``amount`` (int) smallest of all ``N`` weights together are removed. Ranks the
    *current* weights, so pruned (masked) weights count as zeros.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    _args.instance("amount", amount, (numbers.Real, Mapping), "a fraction in [0, 1] or a dict of them per layer")
    if isinstance(amount, Mapping):
        if scope != "layer":
            raise ValueError("a per-layer amount dict needs scope='layer'")
        chosen = prunable_layers(model, layers if layers is not None else list(amount))
        return {name: _smallest_k_mask(m.weight, _prune_count(amount[name], m.weight.numel(), f"amount[{name!r}]"))
                for name, m in chosen.items()}
    chosen = prunable_layers(model, layers)
    if scope == "layer":
        return {name: magnitude_mask(m.weight, amount) for name, m in chosen.items()}
    weights = [m.weight.detach() for m in chosen.values()]
    flat_mask = magnitude_mask(torch.cat([w.flatten() for w in weights]), amount)
    masks, start = {}, 0
    for name, w in zip(chosen, weights):
        masks[name] = flat_mask[start:start + w.numel()].view_as(w).clone()
        start += w.numel()
    return masks


class WeightMask(nn.Module):
    """The parametrization ``weight = original * mask`` (``mask`` is a bool buffer)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        _args.tensor("mask", mask)
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _mask_of(module: nn.Module) -> WeightMask | None:
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, WeightMask):
                return p
    return None


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach ``masks`` (``{layer name: mask}``) to the layers, in place; returns ``model``.

    A layer that already has a mask gets ``old_mask & new_mask``: pruning never revives weights.
    """
    _args.module("model", model)
    _args.mapping("masks", masks, what="a dict of layer name -> mask")
    layers = prunable_layers(model, list(masks))
    for name, module in layers.items():
        mask = torch.as_tensor(masks[name]).to(device=module.weight.device, dtype=torch.bool)
        if mask.shape != module.weight.shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight has {tuple(module.weight.shape)}")
        existing = _mask_of(module)
        if existing is None:
            parametrize.register_parametrization(module, "weight", WeightMask(mask))
        else:
            existing.mask &= mask
    return model


def magnitude_prune_(model: nn.Module, amount: float | int | Mapping[str, float | int], *, scope: str = "layer",
                     layers: Iterable[str] | None = None) -> nn.Module:
    """Prune ``model`` in place by weight magnitude (layer-wise or global); returns ``model``.

    ``amount`` (float: a fraction; int: a count) of each layer's (or of all layers') weights is
    zero after the call, counting weights pruned before. On a model pruned for the first time this
    equals ``torch.nn.utils.prune.l1_unstructured`` on each layer (``scope="layer"``) or
    ``global_unstructured`` (``scope="global"``); on a second call torch prunes ``amount`` of what
    *remains* instead (see the module docstring).
    """
    return apply_masks_(model, compute_masks(model, amount, scope=scope, layers=layers))


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer name: mask}`` of every masked layer (empty when nothing is masked)."""
    _args.module("model", model)
    return {name: p.mask for name, m in model.named_modules() if (p := _mask_of(m)) is not None}


def make_permanent_(model: nn.Module) -> nn.Module:
    """Replace each masked weight by the plain tensor ``original * mask`` (drops the masks).

    After this the zeros are ordinary weights: training would move them again.
    """
    _args.module("model", model)
    for module in model.modules():
        if _mask_of(module) is not None:
            if len(module.parametrizations.weight) != 1:
                raise ValueError(f"{type(module).__name__} has other weight parametrizations besides the mask")
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


@dataclass(frozen=True)
class SparsityReport:
    """Per-layer and overall sparsity (fraction of zero weights) of the prunable layers."""

    rows: tuple[dict, ...]  # layer, type, shape, params, zeros, sparsity
    overall: float
    params: int
    zeros: int

    def __post_init__(self):
        _args.fields(self)

    def as_dict(self) -> dict[str, float]:
        return {r["layer"]: r["sparsity"] for r in self.rows}

    def __str__(self) -> str:
        width = max(len("overall"), *(len(r["layer"]) for r in self.rows))
        lines = [f"{'layer':<{width}}  {'type':<7} {'params':>9} {'zeros':>9} {'sparsity':>8}"]
        for r in self.rows:
            lines.append(f"{r['layer']:<{width}}  {r['type']:<7} {r['params']:>9} {r['zeros']:>9} {r['sparsity']:>8.1%}")
        lines.append(f"{'overall':<{width}}  {'':<7} {self.params:>9} {self.zeros:>9} {self.overall:>8.1%}")
        return "\n".join(lines)


def sparsity_report(model: nn.Module, layers: Iterable[str] | None = None) -> SparsityReport:
    """Zeros in the (effective, masked) weights of each prunable layer and over all of them.

    Biases and BatchNorm parameters are not counted: pruning here only touches weights.
    """
    rows = []
    for name, module in prunable_layers(model, layers).items():
        w = module.weight.detach()
        zeros = int((w == 0).sum())
        kind = type(module).__name__.removeprefix("Parametrized")  # masked layers get a generated class
        rows.append({"layer": name, "type": kind, "shape": tuple(w.shape), "params": w.numel(),
                     "zeros": zeros, "sparsity": zeros / w.numel()})
    params = sum(r["params"] for r in rows)
    zeros = sum(r["zeros"] for r in rows)
    return SparsityReport(tuple(rows), zeros / params, params, zeros)


def sparsity(model: nn.Module, layers: Iterable[str] | None = None) -> float:
    """Overall fraction of zero weights in the prunable layers (see :func:`sparsity_report`)."""
    return sparsity_report(model, layers).overall
