"""Figures of lesson ``09_serving_a_language_model``: the decode roofline explorer (tokens/s
against batch size, for a weight width and a context length) and the KV cache's speed-up.

The explorer follows :mod:`labkit.widgets`: :func:`decode_curve` is a pure function of the
controls (tested headless), :func:`draw_decode` draws its result with the measured points, and
:func:`decode_explorer` wires sliders to them - one static figure where widgets cannot render.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt

from labkit import _args
from labkit.plots import _axes
from labkit.serving.decode import ridge_batch, roofline_tokens_per_s
from labkit.widgets import explorer

WEIGHT_BITS = (4, 8, 16, 32)


def decode_curve(*, bits: int, context: int, params: int, kv_bytes_per_position: int, bandwidth_gbs: float,
                 peak_gflops: float, max_batch: int = 64) -> dict:
    """Roofline tokens/s of decode for batches ``1..max_batch``, with ``params`` matmul weights
    stored at ``bits`` bits (``2 params`` FLOPs per token) and ``context`` cached positions of
    ``kv_bytes_per_position`` bytes per sequence. Also the memory-only line and the ridge batch."""
    bits = _args.choice("bits", _args.integer("bits", bits), WEIGHT_BITS)
    bandwidth_gbs = _args.positive_float("bandwidth_gbs", bandwidth_gbs)
    peak_gflops = _args.positive_float("peak_gflops", peak_gflops)
    context = _args.positive_int("context", context)
    params = _args.positive_int("params", params)
    max_batch = _args.positive_int("max_batch", max_batch)
    weight_bytes = params * bits // 8
    kv = context * _args.non_negative_int("kv_bytes_per_position", kv_bytes_per_position)
    batches = list(range(1, max_batch + 1))
    kw = dict(weight_bytes=weight_bytes, kv_bytes_per_sequence=kv, flops_per_token=2 * params,
              bandwidth_gbs=bandwidth_gbs, peak_gflops=peak_gflops)
    roofline = [roofline_tokens_per_s(b, **kw) for b in batches]
    memory = [b * bandwidth_gbs * 1e9 / (weight_bytes + b * kv) for b in batches]
    return {"batches": batches, "roofline": roofline, "memory_bound": memory, "bits": bits, "context": context,
            "compute_bound": peak_gflops * 1e9 / (2 * params),
            "ridge_batch": ridge_batch(peak_gflops, bandwidth_gbs, bytes_per_weight=bits / 8)}


def draw_decode(data: Mapping, *, measured: Sequence[Mapping] = (), ax=None):
    """Tokens/s against batch (log-log): the roofline, the memory-only line, the compute ceiling,
    the ridge batch, and ``measured`` rows (``batch``, ``tokens_per_s``) if given."""
    _args.mapping("data", data, what="the dict decode_curve() returns")
    measured = _args.rows("measured", measured, keys=("batch", "tokens_per_s"), non_empty=False)
    for key in ("batches", "roofline", "memory_bound", "ridge_batch"):
        if key not in data:
            raise ValueError(f"data lacks {key!r}: pass the result of decode_curve()")
    ax = _axes(ax, figsize=(7, 4.2))
    ax.loglog(data["batches"], data["roofline"], color="#c33", lw=2, label=f"roofline, {data['bits']}-bit weights")
    ax.loglog(data["batches"], data["memory_bound"], color="#c33", ls=":", lw=1, label="memory-bound only")
    ax.axhline(data["compute_bound"], color="#555", ls="--", lw=1, label="compute ceiling (peak / FLOPs per token)")
    ax.axvline(data["ridge_batch"], color="#3a3", ls="--", lw=1, label=f"ridge batch ~ {data['ridge_batch']:.0f}")
    if measured:
        ax.loglog([r["batch"] for r in measured], [r["tokens_per_s"] for r in measured], "o", color="#345",
                  label="measured (fp32)")
    ax.set(xlabel="batch size (sequences decoded together)", ylabel="tokens / s",
           title=f"decode at context {data['context']}")
    ax.legend(fontsize=8, loc="upper left")
    return ax


def decode_explorer(*, params: int, kv_bytes_per_position: int, bandwidth_gbs: float, peak_gflops: float,
                    measured: Sequence[Mapping] = (), bits: int = 32, context: int = 128, max_context: int = 256,
                    interactive: bool | None = None):
    """Sliders for the weight width and the context length redrawing :func:`draw_decode`."""
    kw = dict(params=params, kv_bytes_per_position=kv_bytes_per_position, bandwidth_gbs=bandwidth_gbs,
              peak_gflops=peak_gflops)
    decode_curve(bits=bits, context=context, **kw)  # validate before building sliders

    def show(bits, context):
        draw_decode(decode_curve(bits=bits, context=context, **kw), measured=measured if bits == 32 else ())
        plt.show()

    try:
        import ipywidgets as W

        controls = {"bits": W.SelectionSlider(options=list(WEIGHT_BITS), description="weight bits"),
                    "context": W.IntSlider(min=1, max=max_context, step=1, description="context")}
    except ImportError:  # no widgets: explorer draws the static figure and never reads these
        controls = dict.fromkeys(("bits", "context"))
    return explorer(show, controls, {"bits": bits, "context": context}, interactive=interactive)


def plot_kv_speedup(rows: Sequence[Mapping], *, ax=None):
    """Time of the next token with and without the KV cache against the sequence length."""
    rows = _args.rows("rows", rows, non_empty=False)
    if not rows:
        raise ValueError("rows is empty: pass labkit.serving.decode.kv_cache_speedup(...)")
    ax = _axes(ax, figsize=(6, 3.8))
    lengths = [r["length"] for r in rows]
    ax.plot(lengths, [r["recompute_ms"] for r in rows], "o-", label="recompute the whole sequence")
    ax.plot(lengths, [r["cached_ms"] for r in rows], "o-", label="KV cache: one new position")
    ax.set(xlabel="tokens already in the sequence", ylabel="ms for the next token", title="the KV cache")
    ax.legend(fontsize=8)
    return ax
