"""labkit.lm.train: the course model trained once and cached; labkit.train's loops on sequences."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from labkit import train as loop
from labkit.lm import corpus as C
from labkit.lm import model as M
from labkit.lm import train as T
from labkit.lm.evaluate import evaluate_lm
from labkit.models import count_parameters


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
    tr = loop.train_epoch(model, C.RandomWindows(ids, 64, 8, 8, generator=torch.Generator().manual_seed(0)),
                          opt, progress=False)
    assert 0.0 <= tr["accuracy"] <= 1.0 and loop.evaluate(model, windows)["loss"] < before


SMALL = M.GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16)
QUICK = T.TrainSettings(steps=4, batch_size=4, warmup=1, eval_every=2, val_batches=1)
TEXT = C.course_text()[:20_000]


@pytest.fixture
def counted(monkeypatch):
    """Count calls to the trainer (the real one still runs)."""
    calls = []
    real = T.train_model

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "train_model", spy)
    return calls


def test_cold_start_trains_and_writes_then_loads(tmp_path, monkeypatch, counted):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    first = T.train_cached(SMALL, QUICK, name="t", text=TEXT, progress=False)
    assert len(counted) == 1
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".pt")  # no temp files left
    meta = json.loads((tmp_path / files[0]).read_text())
    assert meta["steps"] == 4 and meta["parameters"] == count_parameters(first)
    assert meta["val_bits_per_byte"] == pytest.approx(meta["val_loss"] / math.log(2))
    second = T.train_cached(SMALL, QUICK, name="t", text=TEXT, progress=False)
    assert len(counted) == 1  # loaded, not retrained
    assert not second.training and second.meta["key"] == first.meta["key"]
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k


def test_stale_key_retrains(tmp_path, counted):
    T.train_cached(SMALL, QUICK, name="t", text=TEXT, cache_dir=tmp_path, progress=False)
    T.train_cached(SMALL, dataclasses.replace(QUICK, steps=6), name="t", text=TEXT, cache_dir=tmp_path, progress=False)
    assert len(counted) == 2
    key = T.cache_key(SMALL, QUICK, text=TEXT)
    assert T.cache_key(SMALL, QUICK, text=TEXT + "x") != key  # another corpus
    assert T.cache_key(dataclasses.replace(SMALL, n_layer=2), QUICK, text=TEXT) != key


def test_code_change_retrains(tmp_path, monkeypatch, counted):
    T.train_cached(SMALL, QUICK, name="t", text=TEXT, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(T, "code_version", lambda: "edited")
    T.train_cached(SMALL, QUICK, name="t", text=TEXT, cache_dir=tmp_path, progress=False)
    assert len(counted) == 2


def test_corrupt_cache_file_retrains(tmp_path, counted):
    T.train_cached(SMALL, QUICK, name="t", text=TEXT, cache_dir=tmp_path, progress=False)
    (weights,) = tmp_path.glob("*.pt")
    weights.write_bytes(b"not a checkpoint")
    model = T.train_cached(SMALL, QUICK, name="t", text=TEXT, cache_dir=tmp_path, progress=False)
    assert len(counted) == 2 and model.meta["steps"] == 4


def test_training_is_deterministic_and_learns():
    a, meta = T.train_model(SMALL, QUICK, text=TEXT, progress=False)
    b, _ = T.train_model(SMALL, QUICK, text=TEXT, progress=False)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    loop.seed_everything(QUICK.seed)
    untrained = evaluate_lm(M.GPT(SMALL), C.split_ids(C.encode(TEXT))[1])["loss"]
    assert meta["val_loss"] < untrained - 0.05  # the same start, four steps later


def test_cache_dir_order(tmp_path, monkeypatch):
    monkeypatch.delenv("LABKIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert T.default_cache_dir() == tmp_path / "xdg" / "labkit"
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "env"))
    assert T.default_cache_dir() == tmp_path / "env"
    assert T.default_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_recipes_and_fast_mode(monkeypatch):
    monkeypatch.setenv("LABKIT_FAST", "0")
    config, settings = T.recipe("course")
    assert config == M.get_config("course") and settings.steps == 500 and settings.lr == 3e-3
    assert T.recipe("draft")[0].n_layer < config.n_layer
    monkeypatch.setenv("LABKIT_FAST", "1")
    assert T.recipe("course")[0] == M.get_config("tiny") and T.recipe("course")[1].steps < 500
    with pytest.raises(ValueError, match="name"):
        T.recipe("huge")


def test_lr_schedule_by_hand():
    s = T.TrainSettings(steps=100, warmup=10, eval_every=10)
    assert T.lr_factor(0, s) == pytest.approx(0.1) and T.lr_factor(9, s) == pytest.approx(1.0)
    assert T.lr_factor(10, s) == pytest.approx(1.0) and T.lr_factor(100, s) == pytest.approx(0.1)
    assert T.lr_factor(55, s) == pytest.approx(0.55)


def test_bad_settings():
    with pytest.raises(ValueError, match="eval_every"):
        T.TrainSettings(steps=10, eval_every=3)
    with pytest.raises(ValueError, match="lr"):
        T.TrainSettings(lr=0.0)
    with pytest.raises(ValueError, match="name"):
        T.train_cached(SMALL, QUICK, name="../x")
    with pytest.raises(TypeError, match="settings"):
        T.cache_key(SMALL, {"steps": 4})
