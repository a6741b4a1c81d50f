"""Wanda: prune by weight times activation (Sun, Liu, Bair & Kolter 2023), next to plain magnitude.

A Linear layer computes ``y_i = sum_j W_ij x_j``. Removing ``W_ij`` changes ``y_i`` by
``W_ij x_j``, so a small weight on an input that is always large can matter more than a big
weight on an input that is nearly zero. Wanda scores each weight by

    S_ij = |W_ij| * ||X_j||_2          ||X_j||_2 = the norm of input feature j over calibration tokens

and, unlike magnitude pruning, compares scores *within each output row* (each neuron keeps the
same share; :func:`labkit.prune.nm.row_mask`) or within each N:M group
(:func:`labkit.prune.nm.nm_mask`). No gradients, no weight update, one calibration pass.

The statistics come from forward hooks (:func:`input_sq_norms`): for every token ``t`` reaching
the layer, ``scaler_j += x_tj^2``, kept as the running mean over tokens. Wanda's published code
(``lib/layerwrapper.py``, ``add_batch``) divides the same running sum by the number of
*sequences* instead of tokens; a constant factor per layer, so every mask is the same. Its
``prune_wanda`` then takes ``|W| * sqrt(scaler_row)``, as :func:`wanda_scores` does. One
difference, said plainly: the published code prunes block by block and feeds each block the
outputs of the blocks already pruned; here all statistics come from one pass of the dense model
(what lesson 05 asks for, and equal for the first block).

:func:`prune_linear_` applies magnitude or Wanda masks, unstructured or N:M, to the chosen
Linear layers through :func:`labkit.prune.masks.apply_masks_` (parametrizations, so
``make_permanent_`` and ``sparsity_report`` work as for the CNNs). Used by lesson
``05_pruning``'s language-model section via :mod:`labkit.prune.llm`; checked against a naive
loop over the published formula in ``tests/test_prune_llm_wanda.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from labkit import _args
from labkit.devices import get_device
from labkit.prune.masks import apply_masks_, magnitude_mask
from labkit.prune.nm import check_nm, nm_mask, row_mask

METHODS = ("magnitude", "wanda")
GROUPS = ("layer", "row")
DEFAULT_GROUP = {"magnitude": "layer", "wanda": "row"}  # as each method was published


def linear_layers(model: nn.Module, *, exclude: Iterable[str] = ("head",)) -> dict[str, nn.Linear]:
    """``{name: layer}`` of every ``nn.Linear`` in ``model`` except those named in ``exclude``
    (for the course GPT: the attention and MLP matrices, not the output head; embeddings are
    not Linear layers)."""
    _args.module("model", model)
    skip = set(_args.sequence("exclude", list(exclude), of=str))
    found = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in skip}
    if not found:
        raise ValueError(f"model has no nn.Linear to prune outside {sorted(skip)}")
    return found


@torch.no_grad()
def input_sq_norms(model: nn.Module, batches: Iterable, *, layers: Mapping[str, nn.Linear] | None = None,
                   device=None) -> dict[str, torch.Tensor]:
    """Mean squared input feature of each Linear layer over the calibration tokens.

    Runs ``model(x)`` on every ``x`` (or ``(x, y)``) in ``batches`` with a forward pre-hook on each
    layer and returns ``{name: s}`` with ``s_j = (1/N) sum_t x_tj^2`` over the ``N`` tokens that
    reached it (``sqrt(s_j)`` is ``||X_j||_2 / sqrt(N)``). The model runs in eval mode and is left
    in the mode it had.
    """
    _args.module("model", model)
    _args.iterable("batches", batches, "an iterable of input batches (or (x, y) pairs)")
    layers = linear_layers(model) if layers is None else dict(_args.mapping("layers", layers, non_empty=True))
    sums = {name: torch.zeros(layer.in_features, dtype=torch.float64) for name, layer in layers.items()}
    counts = dict.fromkeys(layers, 0)

    def hook_for(name: str, width: int):
        def hook(_module, args):
            if args[0].shape[-1] != width:
                raise ValueError(f"calibration data of the wrong width: layer {name!r} takes {width} input "
                                 f"features, got shape {tuple(args[0].shape)}")
            x = args[0].detach().reshape(-1, width).double()
            sums[name] += x.pow(2).sum(0).cpu()
            counts[name] += x.shape[0]
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(name, layer.in_features)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device if device is None else get_device(device)
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            _args.tensor("batches' inputs", x)
            model(x.to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not any(counts.values()):
        raise ValueError("batches yielded no data: the calibration pass saw no tokens")
    return {name: (sums[name] / max(counts[name], 1)).float() for name in layers}


def wanda_scores(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * sqrt(s_j)``: Wanda's importance for a ``(out, in)`` weight and the mean squared
    inputs ``s`` (length ``in``) from :func:`input_sq_norms`."""
    _args.tensor("weight", weight, dtype="floating", ndim=2, non_empty=True)
    _args.tensor("sq_norms", sq_norms, dtype="floating", ndim=1)
    if sq_norms.numel() != weight.shape[1]:
        raise ValueError(f"sq_norms has {sq_norms.numel()} entries but the weight has {weight.shape[1]} input "
                         f"columns: calibration data of the wrong width (or the wrong layer)")
    if bool((sq_norms < 0).any()):
        raise ValueError("sq_norms must be >= 0 (they are mean squares)")
    return weight.detach().abs() * sq_norms.to(weight.device, weight.dtype).sqrt()[None, :]


def _check_nm_pair(nm) -> tuple[int, int]:
    pair = _args.sequence("nm", nm, of=int)
    if len(pair) != 2:
        raise ValueError(f"nm must be a pair (n, m) such as (2, 4), got {nm!r}")
    return check_nm(*pair)


def compute_linear_masks(layers: Mapping[str, nn.Linear], *, method: str = "wanda", sparsity: float = 0.5,
                         nm: tuple[int, int] | None = None, sq_norms: Mapping[str, torch.Tensor] | None = None,
                         group: str | None = None) -> dict[str, torch.Tensor]:
    """Masks ``{name: bool mask}`` for ``layers`` by ``method`` (``"magnitude"`` or ``"wanda"``).

    With ``nm=(n, m)`` every group of ``m`` input weights keeps its ``n`` best (``sparsity`` is
    then ``1 - n/m`` and ignored). Without it, ``sparsity`` of each layer is removed: magnitude
    ranks the whole layer (``|W|``, like :func:`labkit.prune.masks.magnitude_mask`), Wanda each
    output row (``|W| * sqrt(s)``). Wanda needs ``sq_norms`` from :func:`input_sq_norms`.
    ``group`` (``"layer"`` or ``"row"``) overrides where unstructured scores are compared - an
    ablation that separates Wanda's two changes, the activation weighting and the per-row ranking.
    """
    _args.mapping("layers", layers, non_empty=True)
    method = _args.choice("method", method, METHODS)
    sparsity = _args.fraction("sparsity", sparsity)
    group = DEFAULT_GROUP[method] if group is None else _args.choice("group", group, GROUPS)
    if nm is not None:
        n, m = _check_nm_pair(nm)
    if method == "wanda":
        if sq_norms is None:
            raise ValueError("method='wanda' needs sq_norms from input_sq_norms(model, calibration batches)")
        missing = [name for name in layers if name not in sq_norms]
        if missing:
            raise ValueError(f"sq_norms has no statistics for layers {missing}")
    masks = {}
    for name, layer in layers.items():
        _args.module(f"layers[{name!r}]", layer, nn.Linear)
        scores = wanda_scores(layer.weight, sq_norms[name]) if method == "wanda" else layer.weight.detach().abs()
        if nm is not None:
            masks[name] = nm_mask(scores, n, m)
        else:
            masks[name] = row_mask(scores, sparsity) if group == "row" else magnitude_mask(scores, sparsity)
    return masks


def prune_linear_(model: nn.Module, *, method: str = "wanda", sparsity: float = 0.5, nm: tuple[int, int] | None = None,
                  calibration: Iterable | None = None, exclude: Iterable[str] = ("head",),
                  sq_norms: Mapping[str, torch.Tensor] | None = None, group: str | None = None) -> nn.Module:
    """Prune ``model``'s Linear layers (except ``exclude``) in place; returns ``model``.

    ``method="wanda"`` needs ``calibration`` batches (statistics gathered here) or precomputed
    ``sq_norms``. See :func:`compute_linear_masks` for ``sparsity``, ``nm`` and ``group``.
    """
    layers = linear_layers(model, exclude=exclude)
    if _args.choice("method", method, METHODS) == "wanda" and sq_norms is None:
        if calibration is None:
            raise ValueError("method='wanda' needs calibration batches (or sq_norms)")
        sq_norms = input_sq_norms(model, calibration, layers=layers)
    masks = compute_linear_masks(layers, method=method, sparsity=sparsity, nm=nm, sq_norms=sq_norms, group=group)
    return apply_masks_(model, masks)
