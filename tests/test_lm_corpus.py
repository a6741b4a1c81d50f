"""labkit.lm.corpus: tokenizer round trip (property), corpus, split, batches, user files, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from labkit.lm import corpus as C


@given(st.text())
def test_encode_decode_round_trip(text):
    ids = C.encode(text)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert ids.tolist() == list(text.encode("utf-8"))
    assert C.decode(ids) == text


def test_decode_replaces_half_characters():
    ids = C.encode("é")  # two bytes
    assert C.decode(ids[:1]) == "\ufffd"
    assert C.decode([104, 105]) == "hi"


def test_course_text_is_deterministic_prose():
    text = C.course_text()
    assert text == C.course_text() and len(text) > 100_000
    assert "for" in text and "statement" in text


def test_split_is_deterministic_disjoint_and_complete():
    ids = torch.arange(1000) % 256
    train, val = C.split_ids(ids)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]), ids)  # contiguous: last 10% is validation
    t2, v2 = C.split_ids(ids)
    assert torch.equal(train, t2) and torch.equal(val, v2)
    with pytest.raises(ValueError, match="val_fraction"):
        C.split_ids(ids, val_fraction=0.0)
    with pytest.raises(ValueError, match="too few"):
        C.split_ids(torch.arange(3), val_fraction=0.1)


def test_random_batches_are_shifted_windows_and_repeatable():
    ids = torch.arange(500)
    x, y = C.random_batch(ids, 16, 8, generator=torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y, x + 1)  # the target is the next token
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous windows
    x2, _ = C.random_batch(ids, 16, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
    loader = C.RandomWindows(ids, 16, 4, 5, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert len(loader) == len(batches) == 5 and all(b[0].shape == (4, 16) for b in batches)


@pytest.mark.parametrize("n,block,batch", [(101, 10, 3), (100, 10, 4), (7, 10, 2)])
def test_sequential_windows_cover_every_target_once(n, block, batch):
    ids = torch.arange(n)
    targets = torch.cat([y.flatten() for _, y in C.SequentialWindows(ids, block, batch)])
    assert targets.tolist() == list(range(1, n))
    for x, y in C.SequentialWindows(ids, block, batch):
        assert torch.equal(y, x + 1)
    assert len(C.SequentialWindows(ids, block, batch, max_batches=1)) == 1


def test_load_text(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("hello, world\n", encoding="utf-8")
    assert C.load_text(f) == "hello, world\n"
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        C.load_text(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="path"):
        C.load_text(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="folder"):
        C.load_text(tmp_path)
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="UTF-8"):
        C.load_text(tmp_path / "bin")


def test_bad_input():
    with pytest.raises(TypeError, match="text"):
        C.encode(b"bytes")
    with pytest.raises(ValueError, match="ids"):
        C.decode([300])
    with pytest.raises(TypeError, match="ids"):
        C.decode(torch.zeros(3))
    with pytest.raises(ValueError, match="block_size"):
        C.random_batch(torch.arange(10), 0, 2)
    with pytest.raises(ValueError, match="batches"):
        C.RandomWindows(torch.arange(10), 4, 2, 0)
