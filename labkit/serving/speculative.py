"""Speculative decoding from scratch (Leviathan et al. 2023; Chen et al. 2023).

A small **draft** model guesses ``k`` tokens one at a time; the big **target** model scores all of
them in *one* call (a forward over ``k + 1`` positions costs about as much as over one when decode
is memory-bound: the weights are read once). Each guess is then accepted or replaced so that the
output has *exactly* the target's distribution:

* accept draft token ``x`` (drawn from ``q``) with probability ``min(1, p(x) / q(x))``;
* on the first rejection, draw the replacement from ``norm(max(0, p - q))`` and stop;
* if all ``k`` are accepted, draw one **bonus** token from the target's next distribution.

Why it is exact: ``P(out = x) = q(x) min(1, p/q) + P(reject) norm(max(0, p - q))(x)
= min(p, q)(x) + (1 - sum min(p, q)) (p - q)^+(x) / sum (p - q)^+ = p(x)``, because
``sum (p - q)^+ = 1 - sum min(p, q)``.

Each target call yields between 1 and ``k + 1`` tokens. If each guess is accepted with probability
``alpha`` (independently), the expected number per call is (:func:`expected_tokens_per_call`)::

    E[tokens / target call] = 1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha)

and ``alpha = E[sum_x min(p(x), q(x))] = 1 - E[TV(p, q)]``. With a draft call costing ``c`` target
calls, the wall-clock gain is that divided by ``1 + k c`` (:func:`expected_speedup`).

Greedy mode (``temperature=None``) uses one-hot ``p`` and ``q``: a guess is kept iff it is the
target's argmax, else replaced by that argmax - the output equals plain greedy decoding.

Both models keep a KV cache (``labkit.lm.generate.KVCache``); rolling back the rejected guesses is
``cache.crop(length)`` (the stale positions are overwritten by the next writes).
``use_cache=False`` recomputes every call from the whole sequence (the reference).
Used by lesson ``09_serving_a_language_model``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from labkit import _args
from labkit.lm.generate import KVCache


@dataclass(frozen=True)
class SpeculativeStats:
    """What a speculative run did. ``judged`` counts draft tokens the target checked (after a
    rejection the rest of that round are never looked at); ``mean_overlap`` averages
    ``sum_x min(p(x), q(x))`` over them, the expected acceptance probability."""

    new_tokens: int
    target_calls: int
    draft_calls: int
    proposed: int
    judged: int
    accepted: int
    mean_overlap: float
    k: int

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / judged draft tokens (the measured ``alpha``)."""
        return self.accepted / self.judged if self.judged else float("nan")

    @property
    def tokens_per_target_call(self) -> float:
        return self.new_tokens / self.target_calls


def expected_tokens_per_call(alpha: float, k: int) -> float:
    """``(1 - alpha^(k+1)) / (1 - alpha)``: tokens per target call with ``k`` guesses each
    accepted with probability ``alpha`` (``k + 1`` when ``alpha = 1``, 1 when ``alpha = 0``)."""
    alpha = _args.fraction("alpha", alpha)
    k = _args.non_negative_int("k", k)
    if alpha == 1.0:
        return float(k + 1)
    return (1 - alpha ** (k + 1)) / (1 - alpha)


def expected_speedup(alpha: float, k: int, cost_ratio: float) -> float:
    """Leviathan et al.'s wall-clock factor: tokens per target call / ``(1 + k * cost_ratio)``,
    where ``cost_ratio`` = time of a draft call / time of a target call."""
    cost_ratio = _args.non_negative_float("cost_ratio", cost_ratio)
    return expected_tokens_per_call(alpha, k) / (1 + _args.non_negative_int("k", k) * cost_ratio)


def next_probs(logits: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Float64 next-token probabilities from ``logits`` ``(..., V)``: ``softmax(logits / T)``,
    or one-hot at the argmax when ``temperature`` is None (greedy)."""
    _args.tensor("logits", logits, dtype="floating", non_empty=True)
    if temperature is None:
        return nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).double()
    temperature = _args.positive_float("temperature", temperature)
    return torch.softmax(logits.double() / temperature, dim=-1)


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, token: int, *,
                       generator: torch.Generator | None = None) -> tuple[bool, int]:
    """One verification step: keep ``token`` (drawn from ``q``) with probability
    ``min(1, p[token] / q[token])``; else return a draw from ``norm(max(0, p - q))``.

    Returns ``(accepted, token_out)``. ``p`` and ``q`` are probability vectors ``(V,)``.
    """
    _args.tensor("p", p, dtype="floating", ndim=1, non_empty=True)
    _args.tensor("q", q, dtype="floating", shape=tuple(p.shape))
    token = _args.integer("token", token, minimum=0, maximum=len(p) - 1)
    ratio = float(p[token]) / float(q[token]) if float(q[token]) > 0 else float("inf")
    if ratio >= 1 or (ratio > 0 and float(torch.rand((), generator=generator, dtype=torch.float64)) < ratio):
        return True, token
    residual = (p - q).clamp(min=0)
    if float(residual.sum()) <= 0:  # p == q up to rounding: any draw from p is right
        residual = p
    return False, draw(residual / residual.sum(), generator=generator)


def draw(probs: torch.Tensor, *, generator: torch.Generator | None = None) -> int:
    """One token from ``probs`` ``(V,)``; no random number is used when one token has all the mass
    (greedy mode leaves the random stream alone)."""
    _args.tensor("probs", probs, dtype="floating", ndim=1, non_empty=True)
    support = torch.nonzero(probs > 0)
    if len(support) == 1:
        return int(support[0, 0])
    return int(torch.multinomial(probs, 1, generator=generator))


def _check_model(name: str, model) -> nn.Module:
    _args.module(name, model)
    if not hasattr(model, "config") or not hasattr(model.config, "vocab_size"):
        raise TypeError(f"{name} must be a labkit.lm GPT-like model with a .config (vocab_size, block_size)")
    return model


def _float_dtype(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.float32, torch.device("cpu")


class _Runner:
    """One model on one growing sequence: ``logits(seq, n)`` returns the logits of the last ``n``
    positions of ``seq``, feeding only what its KV cache lacks (or everything, without a cache)."""

    def __init__(self, model: nn.Module, max_len: int, use_cache: bool):
        self.model, self.calls = model, 0
        dtype, device = _float_dtype(model)
        self.device = device
        self.cache = KVCache(model.config, max_len=max_len, device=device, dtype=dtype) if use_cache else None

    def logits(self, seq: torch.Tensor, n: int) -> torch.Tensor:
        self.calls += 1
        if self.cache is None:
            return self.model(seq[None].to(self.device))[0, -n:].float()
        start = self.cache.length
        if len(seq) - start < n:
            raise AssertionError("the cache holds positions whose logits are asked for")
        return self.model(seq[None, start:].to(self.device), cache=self.cache)[0, -n:].float()

    def keep(self, length: int) -> None:
        """Roll back to the first ``length`` positions (forget rejected guesses)."""
        if self.cache is not None:
            self.cache.crop(min(self.cache.length, length))


@torch.no_grad()
def speculative_generate(target: nn.Module, draft: nn.Module, prompt_ids: torch.Tensor, max_new_tokens: int, *,
                         k: int = 4, temperature: float | None = None, generator: torch.Generator | None = None,
                         use_cache: bool = True) -> tuple[torch.Tensor, SpeculativeStats]:
    """Continue ``prompt_ids`` (``(T,)`` token ids) by ``max_new_tokens`` tokens with speculative
    decoding: ``draft`` guesses ``k`` tokens per round, ``target`` verifies them in one call.

    ``temperature=None`` is greedy (output equal to the target's greedy decoding); a float samples
    from ``softmax(logits / temperature)`` of the target, exactly. Returns ``(new_ids, stats)``.
    Both models must share the vocabulary; the sequence must fit both contexts.
    """
    _check_model("target", target)
    _check_model("draft", draft)
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft's vocabulary ({draft.config.vocab_size}) differs from the target's "
                         f"({target.config.vocab_size}): their tokens would not mean the same thing")
    _args.tensor("prompt_ids", prompt_ids, dtype="integer", ndim=1, non_empty=True)
    max_new_tokens = _args.positive_int("max_new_tokens", max_new_tokens)
    k = _args.positive_int("k", k)
    if temperature is not None:
        temperature = _args.positive_float("temperature", temperature)
    _args.instance("use_cache", use_cache, bool)
    if generator is not None:
        _args.instance("generator", generator, torch.Generator)
    vocab = target.config.vocab_size
    if int(prompt_ids.min()) < 0 or int(prompt_ids.max()) >= vocab:
        raise ValueError(f"prompt_ids must be token ids in 0..{vocab - 1}")
    total = len(prompt_ids) + max_new_tokens
    context = min(target.config.block_size, draft.config.block_size)
    if total > context:
        raise ValueError(f"max_new_tokens: the prompt ({len(prompt_ids)}) plus {max_new_tokens} new tokens exceed "
                         f"the context ({context} positions)")

    tgt, drf = _Runner(target, total, use_cache), _Runner(draft, total, use_cache)
    seq = prompt_ids.detach().cpu().long().clone()
    proposed = judged = accepted = 0
    overlap = 0.0
    while len(seq) < total:
        k_round = min(k, total - len(seq) - 1)  # the last round may guess fewer (or none)
        guesses, qs = [], []
        for _ in range(k_round):
            q = next_probs(drf.logits(torch.cat([seq, torch.tensor(guesses, dtype=torch.long)]), 1)[-1], temperature)
            guesses.append(draw(q, generator=generator))
            qs.append(q)
        proposed += k_round
        ps = next_probs(tgt.logits(torch.cat([seq, torch.tensor(guesses, dtype=torch.long)]), k_round + 1),
                        temperature)
        new = []
        for i, (x, q) in enumerate(zip(guesses, qs)):
            judged += 1
            overlap += float(torch.minimum(ps[i], q).sum())
            ok, token = accept_or_resample(ps[i], q, x, generator=generator)
            new.append(token)
            if not ok:
                break
            accepted += 1
        else:  # every guess accepted: a bonus token from the target's last distribution
            new.append(draw(ps[k_round], generator=generator))
        seq = torch.cat([seq, torch.tensor(new, dtype=torch.long)])
        # each cache may keep every position but the last token, which is fed in the next round
        tgt.keep(len(seq) - 1)
        drf.keep(len(seq) - 1)
    stats = SpeculativeStats(new_tokens=max_new_tokens, target_calls=tgt.calls, draft_calls=drf.calls,
                             proposed=proposed, judged=judged, accepted=accepted,
                             mean_overlap=overlap / judged if judged else float("nan"), k=k)
    return seq[len(prompt_ids):], stats
