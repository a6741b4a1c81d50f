"""labkit.lm.evaluate: a uniform model scores exactly ln 256 (perplexity 256, 8 bits per byte)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.lm import corpus as C
from labkit.lm import evaluate as E
from labkit.lm import model as M


class Uniform(nn.Module):
    """Equal logits for every byte: knows nothing."""

    def forward(self, idx):
        return torch.zeros(*idx.shape, 256)


class Oracle(nn.Module):
    """Puts all its mass on ``x + 1`` (right for the text 0, 1, 2, ...)."""

    def forward(self, idx):
        return F.one_hot((idx + 1) % 256, 256).float() * 1000.0


def test_uniform_model_scores_256():
    ids = C.encode(C.course_text()[:5000])
    r = E.evaluate_lm(Uniform(), ids, block_size=64)
    assert r["tokens"] == len(ids) - 1
    assert r["loss"] == pytest.approx(math.log(256), rel=1e-12)
    assert r["perplexity"] == pytest.approx(256.0, rel=1e-12)
    assert r["bits_per_byte"] == pytest.approx(8.0, rel=1e-12)


def test_perfect_model_scores_zero_and_max_batches():
    ids = torch.arange(200) % 256
    r = E.evaluate_lm(Oracle(), ids, block_size=16, batch_size=2)
    assert r["loss"] == pytest.approx(0.0, abs=1e-6) and r["perplexity"] == pytest.approx(1.0)
    assert E.evaluate_lm(Oracle(), ids, block_size=16, batch_size=2, max_batches=1)["tokens"] == 32


def test_matches_cross_entropy_by_hand(gen):
    torch.manual_seed(0)
    model = M.GPT(M.get_config("tiny"))
    ids = torch.randint(0, 256, (150,), generator=gen)
    with torch.no_grad():
        a = F.cross_entropy(model(ids[None, :64])[0], ids[1:65], reduction="sum")
        b = F.cross_entropy(model(ids[None, 64:128])[0], ids[65:129], reduction="sum")
        c = F.cross_entropy(model(ids[None, 128:149])[0], ids[129:150], reduction="sum")
    r = E.evaluate_lm(model, ids)  # block_size from the config (64)
    assert r["tokens"] == 149
    assert r["loss"] == pytest.approx(float(a + b + c) / 149, rel=1e-5)


def test_val_ids_are_the_last_tenth():
    text = "abcdefghij" * 10
    assert C.decode(E.val_ids(text)) == "abcdefghij"
    assert len(E.val_ids()) == round(len(C.encode(C.course_text())) * 0.1)


def test_bad_input():
    with pytest.raises(ValueError, match="block_size"):
        E.evaluate_lm(Uniform(), torch.arange(10))
    with pytest.raises(TypeError, match="model"):
        E.evaluate_lm("model", torch.arange(10), block_size=4)
    with pytest.raises(ValueError, match="logits"):
        E.evaluate_lm(nn.Identity(), torch.arange(10), block_size=4)
