"""How good is a language model? Cross-entropy, perplexity and bits per byte on held-out text.

For targets ``y_1 .. y_N`` (every validation token after the first, each predicted once from
non-overlapping windows of ``block_size``):

    loss        = -(1/N) * sum_i log p(y_i | the tokens before it in its window)   (nats per token)
    perplexity  = exp(loss)            (the "effective number of choices" per token)
    bits/byte   = loss / ln 2          (tokens are bytes here, so this is a compression rate)

A model that knows nothing (uniform over 256 bytes) scores ``ln 256`` nats, perplexity 256 and
8 bits per byte: every number below that is something learned. The windows do not overlap, so
the first positions of a window see little context; the figure is deterministic, comparable
between models of one ``block_size`` and slightly pessimistic. Used by lesson 09.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from labkit import _args
from labkit.devices import get_device
from labkit.lm.corpus import SequentialWindows, course_text, encode, split_ids


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate_lm(model: nn.Module, ids: torch.Tensor, *, block_size: int | None = None, batch_size: int = 16,
                max_batches: int | None = None, device=None) -> dict[str, float]:
    """Mean next-token cross-entropy of ``model`` over ``ids`` -> ``{"loss", "perplexity",
    "bits_per_byte", "tokens"}``.

    ``model(x)`` must return logits ``(B, T, V)``. ``block_size`` defaults to
    ``model.config.block_size``; ``max_batches`` stops early for a quick estimate. The model is
    put in eval mode.
    """
    _args.module("model", model)
    if block_size is None:
        config = getattr(model, "config", None)
        if config is None:
            raise ValueError("block_size is needed for a model without a .config")
        block_size = config.block_size
    windows = SequentialWindows(ids, block_size, batch_size, max_batches=max_batches)
    dev = _model_device(model) if device is None else get_device(device)
    model.eval()
    total, count = 0.0, 0
    for x, y in windows:
        logits = model(x.to(dev))
        if logits.dim() != 3 or logits.shape[:2] != x.shape:
            raise ValueError(f"model must return logits (B, T, V) for input {tuple(x.shape)}, got {tuple(logits.shape)}")
        # float64 for the sum: over ~50k tokens a float32 total drifts in the 4th digit
        total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)).double(), y.to(dev).reshape(-1),
                                       reduction="sum"))
        count += y.numel()
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_byte": loss / math.log(2), "tokens": count}


def val_ids(text: str | None = None, *, val_fraction: float = 0.1) -> torch.Tensor:
    """The validation tokens: the last ``val_fraction`` of ``text`` (the course corpus by default)."""
    text = course_text() if text is None else _args.instance("text", text, str, "a str")
    return split_ids(encode(text), val_fraction=val_fraction)[1]
