"""labkit.lm.train: the course model trained once and cached; labkit.train's loops on sequences."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labkit import train as loop
from labkit.lm import corpus as C
from labkit.lm import model as M


def test_train_loops_score_sequences_per_token():
    """labkit.train.evaluate / train_epoch on (B, T, V) logits: the mean over every token."""
    torch.manual_seed(0)
    model = M.GPT(M.get_config("tiny")).eval()
    ids = C.encode(C.course_text()[:3000])
    windows = C.SequentialWindows(ids, 64, 8)
    got = loop.evaluate(model, windows)
    with torch.no_grad():
        logits = torch.cat([model(x).reshape(-1, 256) for x, _ in windows])
    targets = torch.cat([y.flatten() for _, y in windows])
    assert abs(got["loss"] - float(F.cross_entropy(logits, targets))) < 1e-5
    assert got["accuracy"] == int((logits.argmax(1) == targets).sum()) / len(targets)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = got["loss"]
    for _ in range(3):
        tr = loop.train_epoch(model, C.RandomWindows(ids, 64, 8, 5, generator=torch.Generator().manual_seed(0)),
                              opt, progress=False)
    assert 0.0 <= tr["accuracy"] <= 1.0 and loop.evaluate(model, windows)["loss"] < before
