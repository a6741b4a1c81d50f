"""Pruning the course language model: a perplexity table, the activation norms that explain it,
and what 2:4 sparsity buys on a GPU.

:func:`pruning_table` prunes copies of a trained GPT's Linear layers (attention and MLP; not the
embeddings or the head) without any retraining, four ways:

    magnitude, 50% unstructured     |W| ranked over each layer
    wanda,     50% unstructured     |W| * ||X_j|| ranked within each output row
    magnitude, 2:4                  |W|, 2 kept of every 4 consecutive inputs
    wanda,     2:4                  |W| * ||X_j||, 2 kept of every 4

and returns one row per model (the dense model first) with its validation perplexity. The
calibration tokens for Wanda come from the *training* split (random windows drawn with the
``generator``), so the perplexity is measured on text the pruning never saw.

Wanda helps when the inputs of a layer differ a lot in size: a weight on an input that is 30x
larger than its neighbours matters 30x more than ``|W|`` alone says. :func:`norm_spread` reports
that spread per layer (``max / median`` of ``||X_j||``): if it is near 1 everywhere, Wanda and
magnitude rank nearly alike and the table shows no gain.

:func:`time_semi_structured` times ``torch.sparse.to_sparse_semi_structured`` (NVIDIA's 2:4
sparse tensor cores, Ampere or newer) against the dense fp16 matmul - on CUDA only. Elsewhere it
returns a result saying so instead of raising: a CPU has no 2:4 kernels, so there 2:4 sparsity
saves memory only after compression (``labkit.prune.sparse``) and gives no speed-up. Used by
lesson ``05_pruning``'s language-model section; tested in ``tests/test_prune_llm_table.py``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from labkit import _args
from labkit.devices import get_device
from labkit.lm.corpus import RandomWindows, course_text, encode, split_ids
from labkit.lm.evaluate import evaluate_lm
from labkit.prune.masks import sparsity_report
from labkit.prune.nm import nm_mask
from labkit.prune.wanda import input_sq_norms, linear_layers, prune_linear_
from labkit.timing import time_fn

SETTINGS = (("magnitude", "50%", None), ("wanda", "50%", None), ("magnitude", "2:4", (2, 4)), ("wanda", "2:4", (2, 4)))
ABLATION = (("magnitude", "50% per row", "row"), ("wanda", "50% per layer", "layer"))


def calibration_batches(block_size: int, *, batches: int = 8, batch_size: int = 16,
                        generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """``batches`` inputs ``(batch_size, block_size)`` at random offsets of the course corpus's
    training split (never the validation text the table is measured on)."""
    train_ids = split_ids(encode(course_text()))[0]
    windows = RandomWindows(train_ids, block_size, batch_size, batches, generator=generator)
    return [x for x, _ in windows]


def norm_spread(sq_norms: dict[str, torch.Tensor]) -> list[dict]:
    """Per layer: the input norms ``||X_j|| ~ sqrt(s_j)`` summarised as min, median, max and
    ``max / median`` (how much Wanda's weighting can reorder ``|W|``)."""
    _args.mapping("sq_norms", sq_norms, non_empty=True)
    rows = []
    for name, s in sq_norms.items():
        _args.tensor(f"sq_norms[{name!r}]", s, dtype="floating", ndim=1, non_empty=True)
        norms = s.clamp_min(0).sqrt()
        med = float(norms.median())
        rows.append({"layer": name, "min": float(norms.min()), "median": med, "max": float(norms.max()),
                     "max/median": float(norms.max()) / med if med > 0 else float("inf")})
    return rows


def pruning_table(model: nn.Module, *, calibration: list[torch.Tensor] | None = None, val: torch.Tensor | None = None,
                  max_batches: int | None = None, ablation: bool = False, generator: torch.Generator | None = None,
                  device=None) -> list[dict]:
    """Rows ``{"method", "pattern", "sparsity", "val_loss", "perplexity"}``: the dense ``model``
    then magnitude / Wanda at 50% unstructured and at 2:4, on copies (``model`` is unchanged).

    ``calibration`` defaults to :func:`calibration_batches` (8 x 16 windows of the training split,
    drawn with ``generator``); ``val`` to the course corpus's validation tokens; ``max_batches``
    shortens the evaluation (fast mode). ``sparsity`` is measured over the pruned layers.
    ``ablation=True`` adds magnitude ranked per row and Wanda ranked per layer at 50%: with the
    ranking group held equal, the rows isolate what the activation weighting alone does.
    """
    _args.module("model", model)
    _args.boolean("ablation", ablation)
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("model must be a labkit.lm GPT (it needs a .config with block_size)")
    dev = get_device(device)
    model = copy.deepcopy(model).to(dev).eval()
    calibration = calibration_batches(config.block_size, generator=generator) if calibration is None else calibration
    val = split_ids(encode(course_text()))[1] if val is None else val
    names = list(linear_layers(model))
    sq_norms = input_sq_norms(model, calibration, device=dev)

    def row(method: str, pattern: str, m: nn.Module) -> dict:
        ev = evaluate_lm(m, val, max_batches=max_batches, device=dev)
        return {"method": method, "pattern": pattern, "sparsity": sparsity_report(m, names).overall,
                "val_loss": ev["loss"], "perplexity": ev["perplexity"]}

    rows = [row("dense", "-", model)]
    for method, pattern, nm in SETTINGS:
        pruned = prune_linear_(copy.deepcopy(model), method=method, sparsity=0.5, nm=nm, sq_norms=sq_norms)
        rows.append(row(method, pattern, pruned))
    for method, pattern, group in ABLATION if ablation else ():
        pruned = prune_linear_(copy.deepcopy(model), method=method, sparsity=0.5, sq_norms=sq_norms, group=group)
        rows.append(row(method, pattern, pruned))
    return rows


def time_semi_structured(*, in_features: int = 4096, out_features: int = 4096, tokens: int = 256, device=None,
                         generator: torch.Generator | None = None) -> dict:
    """Time ``x @ W^T`` with a dense fp16 ``W`` and with the same 2:4-pruned ``W`` stored by
    ``torch.sparse.to_sparse_semi_structured`` - on a CUDA GPU only.

    Returns ``{"available": True, "dense_ms", "sparse_ms", "speedup", "device"}`` (medians of
    :func:`labkit.timing.time_fn`), or ``{"available": False, "reason": ...}`` on any other device
    or where the GPU lacks 2:4 kernels: never raises for want of hardware.
    """
    in_features, out_features = _args.positive_int("in_features", in_features), _args.positive_int("out_features", out_features)
    tokens = _args.positive_int("tokens", tokens)
    dev = get_device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return {"available": False, "device": str(dev),
                "reason": f"needs CUDA: 2:4 semi-structured sparse kernels run on NVIDIA GPUs (Ampere or newer); "
                          f"this is {dev.type}, where 2:4 sparsity gives no speed-up"}
    if torch.cuda.get_device_capability(dev) < (8, 0):
        return {"available": False, "device": str(dev),
                "reason": f"needs an Ampere or newer GPU (compute capability 8.0+), got {torch.cuda.get_device_capability(dev)}"}
    w = torch.randn(out_features, in_features, generator=generator).to(dev, torch.float16)
    w = w * nm_mask(w.float().abs(), 2, 4)
    x = torch.randn(tokens, in_features, generator=generator).to(dev, torch.float16)
    try:
        w_sparse = torch.sparse.to_sparse_semi_structured(w)
        torch.testing.assert_close(F.linear(x, w_sparse), F.linear(x, w), rtol=1e-2, atol=1e-1)
    except (RuntimeError, NotImplementedError) as err:
        return {"available": False, "device": str(dev), "reason": f"to_sparse_semi_structured failed here: {err}"}
    dense = time_fn(lambda: F.linear(x, w), device=dev, label="dense fp16").median
    sparse = time_fn(lambda: F.linear(x, w_sparse), device=dev, label="2:4 fp16").median
    return {"available": True, "device": str(dev), "dense_ms": dense * 1e3, "sparse_ms": sparse * 1e3,
            "speedup": dense / sparse}
