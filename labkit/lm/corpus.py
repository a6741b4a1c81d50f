"""Text in, byte tokens out: the tokenizer, the offline corpus, the split and the batches.

* **Tokenizer**: byte level. A string is encoded as its UTF-8 bytes, so the vocabulary is the
  256 byte values: nothing to download, nothing to fit, every text encodable. ``decode`` turns
  bytes back into text with ``errors="replace"`` (a sampled sequence may cut a multi-byte
  character in half; that shows as U+FFFD instead of an exception).
* **Corpus**: the help text of CPython's ``pydoc_data.topics`` (about 465k characters of English
  prose about Python, shipped with every CPython), joined in sorted-key order so it is the same
  on every run. ``load_text(path)`` reads a learner's own UTF-8 file instead.
* **Split**: ``split_ids`` keeps the first 90% for training and the *last* 10% for validation
  (contiguous, so no validation window overlaps a training window; deterministic).
* **Batches**: :class:`RandomWindows` draws ``(x, y)`` windows of ``block_size`` at random
  offsets from a ``generator`` (``y`` is ``x`` shifted by one: the next byte at every position);
  :class:`SequentialWindows` walks non-overlapping windows in order (evaluation). Both are plain
  iterables of batches with a length, so ``labkit.train.fit`` can loop over them.

Used by lesson 09 (serving a language model) through ``labkit.lm``.
"""

from __future__ import annotations

import pydoc_data.topics
from collections.abc import Iterator
from pathlib import Path

import torch

from labkit import _args

VOCAB_SIZE = 256
VAL_FRACTION = 0.1


def encode(text: str) -> torch.Tensor:
    """``text`` -> a 1-D ``torch.long`` tensor of its UTF-8 bytes (values 0..255)."""
    _args.instance("text", text, str, "a str")
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode(ids) -> str:
    """Byte ids (a 1-D integer tensor or a sequence of ints in 0..255) -> text.

    Bytes that are not valid UTF-8 (e.g. half a character) become U+FFFD, never an error.
    """
    if isinstance(ids, torch.Tensor):
        _args.tensor("ids", ids, dtype="integer", ndim=1)
        ids = ids.tolist()
    else:
        ids = list(_args.instance("ids", ids, (list, tuple), "a 1-D integer tensor or a list of ints"))
        for i in ids:
            _args.integer("ids", i)
    if any(i < 0 or i >= VOCAB_SIZE for i in ids):
        raise ValueError(f"ids must be byte values in 0..{VOCAB_SIZE - 1}")
    return bytes(ids).decode("utf-8", errors="replace")


def course_text() -> str:
    """The offline corpus: every ``pydoc_data.topics`` entry, in sorted-key order, joined.

    Its exact content depends on the CPython version (the help text changes between releases).
    """
    topics = pydoc_data.topics.topics
    return "".join(topics[key] for key in sorted(topics))


def load_text(path) -> str:
    """The text of a learner's own UTF-8 file (to train or evaluate on something else)."""
    p = _args.path("path", path, must_exist=True)
    if not p.is_file():
        raise ValueError(f"path must be a file, got the folder {str(p)!r}")
    try:
        text = Path(p).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"path {str(p)!r} is not UTF-8 text: {err}") from None
    if not text:
        raise ValueError(f"path {str(p)!r} is empty: nothing to train on")
    return text


def split_ids(ids: torch.Tensor, *, val_fraction: float = VAL_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)``: the first ``1 - val_fraction`` of the tokens, then the rest.

    ``n_val = round(len(ids) * val_fraction)``; both parts must hold at least 2 tokens (one
    input and its target).
    """
    _args.tensor("ids", ids, dtype="integer", ndim=1)
    val_fraction = _args.real("val_fraction", val_fraction, minimum=0.0, maximum=1.0, strict_minimum=True)
    n_val = round(len(ids) * val_fraction)
    if n_val < 2 or len(ids) - n_val < 2:
        raise ValueError(f"ids has {len(ids)} tokens: too few to split with val_fraction={val_fraction}")
    return ids[: len(ids) - n_val], ids[len(ids) - n_val:]


def _check_windows(ids, block_size: int, batch_size: int) -> tuple[int, int]:
    _args.tensor("ids", ids, dtype="integer", ndim=1)
    block_size = _args.positive_int("block_size", block_size)
    batch_size = _args.positive_int("batch_size", batch_size)
    if len(ids) < 2:
        raise ValueError(f"ids must hold at least 2 tokens, got {len(ids)}")
    return block_size, batch_size


def random_batch(ids: torch.Tensor, block_size: int, batch_size: int, *, generator: torch.Generator | None = None,
                 device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` windows at random offsets: ``x = ids[i:i+T]``, ``y = ids[i+1:i+T+1]``.

    ``T = block_size``, shortened to ``len(ids) - 1`` if the text is shorter than a window.
    """
    block_size, batch_size = _check_windows(ids, block_size, batch_size)
    t = min(block_size, len(ids) - 1)
    starts = torch.randint(0, len(ids) - t, (batch_size,), generator=generator)
    offsets = torch.arange(t)
    x = ids[starts[:, None] + offsets]
    y = ids[starts[:, None] + offsets + 1]
    return (x.to(device), y.to(device)) if device is not None else (x, y)


class RandomWindows:
    """An "epoch" of ``batches`` random batches (see :func:`random_batch`) for a training loop.

    The generator carries on from one epoch to the next, so a run is repeatable given its seed.
    """

    def __init__(self, ids: torch.Tensor, block_size: int, batch_size: int, batches: int, *,
                 generator: torch.Generator | None = None):
        self.block_size, self.batch_size = _check_windows(ids, block_size, batch_size)
        self.batches = _args.positive_int("batches", batches)
        if generator is not None:
            _args.instance("generator", generator, torch.Generator)
        self.ids, self.generator = ids, generator

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.batches):
            yield random_batch(self.ids, self.block_size, self.batch_size, generator=self.generator)


class SequentialWindows:
    """Non-overlapping windows in order, ``batch_size`` at a time: every token after the first is
    a target exactly once. The last window may be shorter; it comes in a batch of its own.

    ``max_batches`` stops early (a quick estimate on a long text).
    """

    def __init__(self, ids: torch.Tensor, block_size: int, batch_size: int, *, max_batches: int | None = None):
        self.block_size, self.batch_size = _check_windows(ids, block_size, batch_size)
        self.max_batches = None if max_batches is None else _args.positive_int("max_batches", max_batches)
        self.ids = ids

    def _groups(self) -> list[list[int]]:
        n_full = (len(self.ids) - 1) // self.block_size
        starts = [i * self.block_size for i in range(n_full)]
        groups = [starts[i:i + self.batch_size] for i in range(0, n_full, self.batch_size)]
        if n_full * self.block_size < len(self.ids) - 1:
            groups.append([n_full * self.block_size])  # the shorter tail window
        return groups if self.max_batches is None else groups[: self.max_batches]

    def __len__(self) -> int:
        return len(self._groups())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for group in self._groups():
            t = min(self.block_size, len(self.ids) - 1 - group[0])
            x = torch.stack([self.ids[s:s + t] for s in group])
            y = torch.stack([self.ids[s + 1:s + t + 1] for s in group])
            yield x, y
