"""Train the course language model once, deterministically, and cache it by a hash.

``course_model("course")`` returns the trained byte-level GPT in about a second when it is in
the cache; the first call (or any call after the code, the config, the training settings or the
corpus changed) trains it with ``labkit.train.fit`` - the same loop as every other lesson - and
stores it. ``course_model("draft")`` is the small draft model for speculative decoding.

* **Deterministic**: ``seed_everything(seed)`` seeds the initialisation and returns the generator
  that draws the training windows; AdamW with a linear warm-up then a cosine decay to 10%.
* **Cache key**: SHA-256 of the config, the settings, the corpus text and the code version
  (the source of ``labkit.lm.corpus``, ``labkit.lm.model``, this module and ``labkit.train``,
  plus ``labkit.__version__``). Change any of them and the model is retrained, never stale.
* **Where**: ``cache_dir=`` if given, else ``$LABKIT_CACHE``, else ``$XDG_CACHE_HOME/labkit``,
  else ``~/.cache/labkit``. Files ``lm-<name>-<key>.pt`` (the state dict) and ``.json`` (the
  metadata: config, steps, seconds, validation loss and bits per byte, versions), each written to
  a temporary file and moved into place with ``os.replace`` so a crash never leaves half a file.
* **Fast mode** (``LABKIT_FAST=1``): ``"course"`` trains the ``"tiny"`` config and the draft
  fewer steps; they are cached under their own keys.

Used by lesson 09 (serving a language model).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import pickle
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import labkit
import labkit.train as loop
from labkit import _args
from labkit.devices import get_device
from labkit.lm import corpus
from labkit.lm import model as lm_model
from labkit.lm.evaluate import evaluate_lm
from labkit.lm.model import GPT, GPTConfig, get_config
from labkit.models import count_parameters

CACHE_ENV = "LABKIT_CACHE"


@dataclass(frozen=True)
class TrainSettings:
    """How a model is trained: ``steps`` AdamW steps of ``batch_size`` random windows, the
    validation loss estimated on ``val_batches`` batches every ``eval_every`` steps."""

    steps: int = 500
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    eval_every: int = 100
    val_batches: int = 8
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "val_batches"):
            _args.positive_int(name, getattr(self, name))
        _args.non_negative_int("warmup", self.warmup)
        _args.non_negative_int("seed", self.seed)
        _args.positive_float("lr", self.lr)
        _args.non_negative_float("weight_decay", self.weight_decay)
        if self.steps % self.eval_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of eval_every ({self.eval_every})")


RECIPES = {  # name -> (config name, settings); FAST_RECIPES under LABKIT_FAST=1
    "course": ("course", TrainSettings(steps=500)),
    "draft": ("draft", TrainSettings(steps=300)),
}
FAST_RECIPES = {
    "course": ("tiny", TrainSettings(steps=60, batch_size=16, warmup=10, eval_every=30, val_batches=4)),
    "draft": ("draft", TrainSettings(steps=30, batch_size=16, warmup=5, eval_every=30, val_batches=4)),
}


def recipe(name: str) -> tuple[GPTConfig, TrainSettings]:
    """The config and settings ``course_model(name)`` uses (the fast ones under ``LABKIT_FAST``)."""
    table = FAST_RECIPES if loop.fast_mode() else RECIPES
    config_name, settings = table[_args.choice("name", name, tuple(table))]
    return get_config(config_name), settings


def default_cache_dir(cache_dir=None) -> Path:
    """``cache_dir`` if given, else ``$LABKIT_CACHE``, ``$XDG_CACHE_HOME/labkit``, ``~/.cache/labkit``."""
    if cache_dir is not None:
        return _args.path("cache_dir", cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "labkit"


def code_version() -> str:
    """SHA-256 of the source that decides the trained weights, plus ``labkit.__version__``."""
    h = hashlib.sha256(labkit.__version__.encode())
    for module in (corpus, lm_model, loop, sys.modules[__name__]):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()


def cache_key(config: GPTConfig, settings: TrainSettings, *, text: str | None = None) -> str:
    """16 hex digits naming one trained model: config, settings, corpus and code version."""
    _args.instance("config", config, GPTConfig)
    _args.instance("settings", settings, TrainSettings)
    text = corpus.course_text() if text is None else text
    payload = json.dumps({"config": asdict(config), "settings": asdict(settings), "code": code_version(),
                          "corpus": hashlib.sha256(text.encode()).hexdigest()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def lr_factor(step: int, settings: TrainSettings) -> float:
    """Learning-rate multiplier at ``step`` (0-based): ``(step+1)/warmup`` while warming up, then
    a cosine from 1 down to 0.1 at the last step."""
    step = _args.non_negative_int("step", step)
    _args.instance("settings", settings, TrainSettings)
    if step < settings.warmup:
        return (step + 1) / settings.warmup
    span = max(1, settings.steps - settings.warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - settings.warmup) / span)))


def train_model(config: GPTConfig, settings: TrainSettings, *, text: str | None = None, device=None,
                progress: bool = True) -> tuple[GPT, dict]:
    """Train a fresh :class:`GPT` on ``text`` (the course corpus by default) with
    ``labkit.train.fit``; return the model (eval mode) and its metadata."""
    _args.instance("config", config, GPTConfig)
    _args.instance("settings", settings, TrainSettings)
    generator = loop.seed_everything(settings.seed)
    model = GPT(config)
    train_ids, val_ids = corpus.split_ids(corpus.encode(corpus.course_text() if text is None else text))
    windows = corpus.RandomWindows(train_ids, config.block_size, settings.batch_size, settings.eval_every,
                                   generator=generator)
    val_windows = corpus.SequentialWindows(val_ids, config.block_size, settings.batch_size,
                                           max_batches=settings.val_batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings))
    start = time.perf_counter()  # a wall-clock record of the run, not a benchmark
    history = loop.fit(model, windows, epochs=settings.steps // settings.eval_every, val_loader=val_windows,
                       optimizer=optimizer, device=device, progress=progress,
                       after_step=lambda _model: schedule.step())
    seconds = time.perf_counter() - start
    model.eval()
    final = evaluate_lm(model, val_ids)
    meta = {"config": asdict(config), "settings": asdict(settings), "steps": settings.steps,
            "seconds": round(seconds, 2), "val_loss": final["loss"], "val_perplexity": final["perplexity"],
            "val_bits_per_byte": final["bits_per_byte"], "val_tokens": final["tokens"],
            "parameters": count_parameters(model), "history": history.metrics,
            "device": str(next(model.parameters()).device), "torch": torch.__version__,
            "python": platform.python_version(), "labkit": labkit.__version__}
    return model, meta


def _write_atomic(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared class cache must be readable
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load(weights: Path, info: Path, config: GPTConfig, key: str, device) -> GPT | None:
    """The cached model, or None when a file is missing, corrupt or for another key."""
    try:
        meta = json.loads(info.read_text())
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if meta.get("key") != key:
            return None
        model = GPT(config)
        model.load_state_dict(state)
    except (OSError, EOFError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError):
        return None
    model.meta = meta
    return model.to(get_device(device)).eval()


def train_cached(config: GPTConfig, settings: TrainSettings, *, name: str = "custom", text: str | None = None,
                 cache_dir=None, device=None, progress: bool = True) -> GPT:
    """Load the model trained with ``config`` and ``settings`` from the cache, or train and store
    it. The returned model is in eval mode on ``device``, its metadata in ``model.meta``."""
    _args.file_name("name", name)
    key = cache_key(config, settings, text=text)
    folder = default_cache_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    weights, info = folder / f"lm-{name}-{key}.pt", folder / f"lm-{name}-{key}.json"
    if weights.exists() and info.exists():
        model = _load(weights, info, config, key, device)
        if model is not None:
            return model
    model, meta = train_model(config, settings, text=text, device=device, progress=progress)
    meta.update(name=name, key=key)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _write_atomic(weights, lambda tmp: torch.save(state, tmp))
    _write_atomic(info, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))
    model.meta = meta
    return model


def course_model(name: str = "course", *, cache_dir=None, device=None, progress: bool = True) -> GPT:
    """The trained course model (``"course"``) or its draft (``"draft"``), from the cache if
    possible: see the module docstring. ``model.meta`` holds its training record."""
    config, settings = recipe(name)
    if loop.fast_mode():
        name = f"{name}-fast"
    return train_cached(config, settings, name=name, cache_dir=cache_dir, device=device, progress=progress)
