"""Distil the course language model into a smaller student, and compare with training from scratch.

:func:`train_student` trains a fresh GPT (by default the ``"draft"`` config: 1 layer, width 64,
the draft model of lesson 09's speculative decoding) on random windows of the course corpus's
training split with ``labkit.train.fit`` - AdamW, warm-up then cosine, the schedule of
``labkit.lm.train`` - and one of three losses (:mod:`labkit.distill.tokens`):

    scratch   CE(student, next byte)                                 (no teacher)
    forward   (1 - alpha) CE + alpha tau^2 KL(p_teacher || p_student)
    reverse   (1 - alpha) CE + alpha tau^2 KL(p_student || p_teacher)

The teacher's logits need the batch's *inputs*, not only the student's outputs, so the loss is
given to ``fit`` as its batch-loss hook ``batch_loss(model, batch)``:
:func:`labkit.distill.tokens.batch_loss` runs the student and (eval mode, no gradients) the
teacher on each ``(x, y)`` window batch; for ``"scratch"`` it is plain next-byte cross-entropy.

:func:`compare_students` runs every loss over several seeds (the same seed gives the same
initial weights and the same batches to all three) and returns the validation perplexity of each
run plus mean and standard deviation per loss; the teacher runs once per batch for all of a seed's
students (:class:`RememberedTeacher`). Used by lesson ``07_distillation``'s
language-model section; tested in ``tests/test_distill_tokens_train.py``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import nn

import labkit.train as loop
from labkit import _args
from labkit.devices import get_device
from labkit.distill.tokens import batch_loss
from labkit.lm.corpus import RandomWindows, course_text, encode, split_ids
from labkit.lm.evaluate import evaluate_lm
from labkit.lm.model import GPT, GPTConfig, get_config
from labkit.lm.train import TrainSettings, lr_factor

LOSSES = ("scratch", "forward", "reverse")


def student_config(teacher: nn.Module | None) -> GPTConfig:
    """The ``"draft"`` config (1 layer, width 64), its context cut to the teacher's if that is
    shorter (fast mode's tiny teacher sees 64 bytes)."""
    if teacher is not None:
        _args.module("teacher", teacher)
    draft = get_config("draft")
    block = getattr(getattr(teacher, "config", None), "block_size", draft.block_size)
    return replace(draft, block_size=min(draft.block_size, block))


def train_student(teacher: nn.Module | None, *, kind: str = "forward", config: GPTConfig | None = None,
                  steps: int = 300, batch_size: int = 32, lr: float = 3e-3, temperature: float = 1.0,
                  alpha: float = 0.5, seed: int = 0, device=None, progress: bool = False) -> GPT:
    """A fresh student GPT (``config``, default :func:`student_config`) trained ``steps`` steps with ``kind``
    (``"scratch"``, ``"forward"`` or ``"reverse"``); returned in eval mode on ``device``."""
    kind = _args.choice("kind", kind, LOSSES)
    if kind != "scratch":
        _args.module("teacher", teacher)
    config = student_config(teacher) if config is None else _args.instance("config", config, GPTConfig)
    steps = _args.positive_int("steps", steps)
    _args.fraction("alpha", alpha)
    if kind == "scratch":  # the teacher, if given, only sets the context (student_config)
        teacher, loss = None, batch_loss(None, temperature=temperature, alpha=0.0)
    else:
        loss = batch_loss(teacher, temperature=temperature, alpha=alpha, direction=kind)
    settings = TrainSettings(steps=steps, batch_size=batch_size, lr=lr, warmup=min(50, steps // 10),
                             eval_every=steps, seed=seed)
    dev = get_device(device)
    generator = loop.seed_everything(settings.seed)
    student = GPT(config)
    teacher_config = getattr(teacher, "config", None)
    if teacher_config is not None and (teacher_config.vocab_size != config.vocab_size
                                       or teacher_config.block_size < config.block_size):
        raise ValueError(f"the teacher (vocabulary {teacher_config.vocab_size}, context {teacher_config.block_size}) "
                         f"must share the student's vocabulary ({config.vocab_size}) and see at least its "
                         f"context ({config.block_size})")
    if teacher is not None:
        teacher.to(dev)
    train_ids = split_ids(encode(course_text()))[0]
    windows = RandomWindows(train_ids, config.block_size, settings.batch_size, steps, generator=generator)
    optimizer = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings))
    loop.fit(student, windows, epochs=1, optimizer=optimizer, batch_loss=loss, device=dev, progress=progress,
             after_step=lambda _model: schedule.step())
    return student.eval()


class RememberedTeacher(nn.Module):
    """The teacher, remembering its logits for every input batch it has seen.

    Every kind trained with one seed sees the same batches (the seed fixes the windows), so the
    forward and reverse students of a seed need the teacher's logits for the same inputs: with
    this wrapper the teacher runs once per batch instead of once per student. A remembered batch
    is returned only for an input equal to the one seen (``torch.equal``), so a different batch is
    never served stale logits. Memory: one ``(B, T, vocab)`` float tensor per distinct batch.
    """

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = _args.module("teacher", teacher)
        self.config = getattr(teacher, "config", None)
        self.calls = 0  # batches the real teacher ran
        self._seen: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.device.type, hash(x.detach().cpu().numpy().tobytes()))
        seen = self._seen.get(key)
        if seen is not None and torch.equal(seen[0], x):
            return seen[1]
        self.calls += 1
        logits = self.teacher(x)
        self._seen[key] = (x.detach().clone(), logits.detach())
        return logits


def _summary(runs: list[dict], kind: str) -> dict:
    ppl = [r["perplexity"] for r in runs if r["kind"] == kind]
    return {"kind": kind, "seeds": len(ppl), "mean": statistics.fmean(ppl),
            "std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0, "min": min(ppl), "max": max(ppl)}


def compare_students(teacher: nn.Module, *, seeds: Iterable[int] = (0, 1, 2), kinds: Iterable[str] = LOSSES,
                     steps: int = 300, max_batches: int | None = None, device=None, progress: bool = False,
                     keep_students: bool = False, **train_kwargs) -> tuple[list[dict], list[dict]]:
    """``(runs, summary)``: every ``kind`` x ``seed`` student's val loss and perplexity, then per
    kind the mean, standard deviation (``statistics.stdev``), min and max of the perplexity.
    ``keep_students=True`` also keeps each trained model in its run (key ``"student"``).

    ``train_kwargs`` go to :func:`train_student` (``config``, ``batch_size``, ``lr``,
    ``temperature``, ``alpha``); ``max_batches`` shortens the evaluation (fast mode).
    """
    _args.module("teacher", teacher)
    seeds = [_args.non_negative_int("seeds", s) for s in _args.sequence("seeds", list(seeds), non_empty=True)]
    kinds = [_args.choice("kinds", k, LOSSES) for k in _args.sequence("kinds", list(kinds), non_empty=True)]
    _args.boolean("keep_students", keep_students)
    val = split_ids(encode(course_text()))[1]
    runs = []
    for seed in seeds:
        seed_teacher = RememberedTeacher(teacher)  # one teacher pass per batch for all this seed's kinds
        for kind in kinds:
            student = train_student(seed_teacher, kind=kind, steps=steps, seed=seed, device=device, progress=progress,
                                    **train_kwargs)
            ev = evaluate_lm(student, val, max_batches=max_batches)
            runs.append({"kind": kind, "seed": seed, "val_loss": ev["loss"], "perplexity": ev["perplexity"],
                         **({"student": student} if keep_students else {})})
    return runs, [_summary(runs, kind) for kind in kinds]
