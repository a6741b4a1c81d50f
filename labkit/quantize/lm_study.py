"""The course language model quantized the LLM way: the perplexity tables of lesson 06 §7-§8.

Each function takes the float model, copies it for every variant (the original is never changed)
and returns rows a notebook prints or plots:

* :func:`weight_only_rows` - RTN, GPTQ and AWQ at each bit width and group size, with the honest
  bits per weight (:func:`~labkit.quantize.groupwise.bits_per_weight`) and validation perplexity;
* :func:`gap_closed` - the share of RTN's perplexity gap to fp32 that a method closes
  (``(ppl_rtn - ppl_method) / (ppl_rtn - ppl_fp32)``; 1 is fp32 quality, 0 no better than RTN);
* :func:`outlier_rows` - W8A8 (per tensor) on the model, on the model with injected outliers,
  and on that model after SmoothQuant.

Calibration batches are random windows of the *training* text (:func:`calibration_batches`); the
perplexity is :func:`labkit.lm.evaluate.evaluate_lm` on the validation text.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from labkit import _args
from labkit.lm.corpus import course_text, encode, random_batch, split_ids
from labkit.lm.evaluate import evaluate_lm
from labkit.quantize.awq import awq_quantize_
from labkit.quantize.gptq import gptq_quantize_
from labkit.quantize.groupwise import bits_per_weight, rtn_quantize_
from labkit.quantize.migration import inject_outliers_
from labkit.quantize.smoothquant import smooth_, w8a8_

METHODS = ("rtn", "gptq", "awq")


def calibration_batches(ids: torch.Tensor | None = None, *, n_batches: int = 8, batch_size: int = 8,
                        block_size: int = 128, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """``n_batches`` input batches ``(batch_size, block_size)`` at random offsets of ``ids``
    (the course corpus's training split by default)."""
    ids = split_ids(encode(course_text()))[0] if ids is None else ids
    n_batches = _args.positive_int("n_batches", n_batches)
    return [random_batch(ids, block_size, batch_size, generator=generator)[0] for _ in range(n_batches)]


def _ppl(model: nn.Module, val: torch.Tensor, max_batches: int | None) -> float:
    return evaluate_lm(model, val, max_batches=max_batches)["perplexity"]


def weight_only_rows(model: nn.Module, calib: Sequence[torch.Tensor], val: torch.Tensor, *,
                     methods: Sequence[str] = METHODS, bits: Sequence[int] = (3, 4),
                     group_sizes: Sequence[int] = (32, 64, 128), symmetric: bool = False, act_order: bool = False,
                     max_batches: int | None = None, progress: bool = True) -> list[dict]:
    """Rows ``{"method", "bits", "group_size", "bits_per_weight", "perplexity"}``: fp32 first, then
    each method at each bit width and group size (every Linear but the head quantized).
    ``act_order`` is passed to GPTQ (its group indices are not counted in ``bits_per_weight``)."""
    _args.module("model", model)
    calib = _args.sequence("calib", calib, of=torch.Tensor, non_empty=True)
    _args.tensor("val", val, dtype="integer", ndim=1, non_empty=True)
    for m in _args.sequence("methods", methods, of=str, non_empty=True):
        _args.choice("methods", m, METHODS)
    rows = [{"method": "fp32", "bits": 32, "group_size": None, "bits_per_weight": 32.0,
             "perplexity": _ppl(model, val, max_batches)}]
    jobs = [(m, b, g) for m in methods for b in bits for g in group_sizes]
    for method, b, g in tqdm(jobs, desc="weight-only", disable=not progress):
        q = copy.deepcopy(model)
        if method == "rtn":
            rtn_quantize_(q, bits=b, group_size=g, symmetric=symmetric)
        elif method == "gptq":
            gptq_quantize_(q, calib, bits=b, group_size=g, symmetric=symmetric, act_order=act_order)
        else:
            awq_quantize_(q, calib, bits=b, group_size=g, symmetric=symmetric)
        rows.append({"method": method, "bits": b, "group_size": g,
                     "bits_per_weight": bits_per_weight(b, g, symmetric=symmetric),
                     "perplexity": _ppl(q, val, max_batches)})
    return rows


def gap_closed(rows: Sequence[dict], method: str, *, bits: int = 3, group_size: int = 128) -> float:
    """``(ppl_rtn - ppl_method) / (ppl_rtn - ppl_fp32)`` from :func:`weight_only_rows`' rows."""
    rows = _args.rows("rows", rows, keys=("method", "bits", "group_size", "perplexity"))
    method = _args.choice("method", method, ("fp32", *METHODS))

    def ppl(m, b=bits, g=group_size):
        found = [r["perplexity"] for r in rows if r["method"] == m and (m == "fp32" or (r["bits"], r["group_size"]) == (b, g))]
        if not found:
            raise ValueError(f"rows hold no {m} result at {b} bits, group size {g}")
        return found[0]

    fp, rtn = ppl("fp32"), ppl("rtn")
    if rtn <= fp:
        raise ValueError(f"RTN's perplexity ({rtn:.3f}) is not above fp32's ({fp:.3f}): no gap to close")
    return (rtn - ppl(method)) / (rtn - fp)


def outlier_rows(model: nn.Module, calib: Sequence[torch.Tensor], val: torch.Tensor, *, channels=(5, 20, 40),
                 factor: float = 60.0, alpha: float = 0.5, max_batches: int | None = None) -> list[dict]:
    """Rows ``{"model", "quantization", "perplexity", "max_act"}``: the model and the model with
    ``factor``-times outliers in ``channels`` (after every LayerNorm), each in fp32, W8A8 and
    SmoothQuant(``alpha``) + W8A8. ``max_act``: the largest |input| of the first block's QKV."""
    _args.module("model", model)
    calib = _args.sequence("calib", calib, of=torch.Tensor, non_empty=True)
    _args.tensor("val", val, dtype="integer", ndim=1, non_empty=True)
    rows = []
    for label, outliers in (("as trained", False), (f"outliers x{factor:g}", True)):
        base = copy.deepcopy(model)
        if outliers:
            inject_outliers_(base, list(channels), factor)
        smoothed = copy.deepcopy(base)
        smooth_(smoothed, calib, alpha=alpha)
        for quant, m in (("fp32", base), ("W8A8", w8a8_(copy.deepcopy(base))),
                         (f"SmoothQuant a={alpha:g} + W8A8", w8a8_(smoothed))):
            rows.append({"model": label, "quantization": quant, "perplexity": _ppl(m, val, max_batches)})
    return rows
