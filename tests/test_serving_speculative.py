"""labkit.serving.speculative: greedy output equals the target's greedy decoding; sampled output has
the target's distribution (chi-square on tiny "models" that are fixed next-token tables, with a
wrong acceptance rule shown to fail the same test); the tokens-per-call formula; errors."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

from labkit.lm.generate import generate
from labkit.lm.model import GPT, GPTConfig
from labkit.serving import speculative
from labkit.serving.speculative import (
    accept_or_resample,
    expected_speedup,
    expected_tokens_per_call,
    speculative_generate,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids waiting on a second, busy core for every op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TableLM(nn.Module):
    """A stand-in language model: the next token depends only on the current one, through a
    fixed table ``probs[current] -> distribution``. Honours the KV-cache protocol (advance)."""

    def __init__(self, probs: torch.Tensor, block_size: int = 64):
        super().__init__()
        self.register_buffer("table", probs.log())
        v = probs.shape[0]
        self.config = GPTConfig(block_size=block_size, n_layer=1, n_head=1, n_embd=1, vocab_size=v)

    def forward(self, idx, *, cache=None):
        if cache is not None:
            cache.advance(idx.size(1))
        return self.table[idx]


TARGET = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.3, 0.5, 0.2]], dtype=torch.float64)
DRAFT = torch.tensor([[0.2, 0.4, 0.4], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]], dtype=torch.float64)


def _chi2(counts: Counter, expected: dict, n: int) -> float:
    return sum((counts.get(c, 0) - n * p) ** 2 / (n * p) for c, p in expected.items())


def _p_value(statistic: float, cells: int) -> float:
    """P(chi-square with ``cells - 1`` degrees of freedom >= statistic) = Q(df / 2, statistic / 2)."""
    return float(torch.special.gammaincc(torch.tensor((cells - 1) / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


P_MIN = 1e-6  # a correct sampler fails one run in a million


def test_one_verification_step_returns_the_target_distribution():
    p = torch.tensor([0.5, 0.1, 0.25, 0.05, 0.1], dtype=torch.float64)
    q = torch.tensor([0.1, 0.4, 0.2, 0.2, 0.1], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = 10000
    outs, guesses = Counter(), Counter()
    for _ in range(n):
        x = int(torch.multinomial(q, 1, generator=g))
        guesses[x] += 1
        outs[accept_or_resample(p, q, x, generator=g)[1]] += 1
    want = {i: float(p[i]) for i in range(5)}
    assert _p_value(_chi2(outs, want, n), 5) > P_MIN
    assert _p_value(_chi2(guesses, want, n), 5) < P_MIN  # "always accept the draft" fails this test


def _joint_target(start: int, length: int) -> dict:
    """Exact probability of every continuation of ``length`` tokens after token ``start``."""
    out = {(): 1.0}
    for _ in range(length):
        out = {seq + (t,): pr * float(TARGET[seq[-1] if seq else start, t]) for seq, pr in out.items() for t in range(3)}
    return out


def _run_many(n: int, k: int, length: int, use_cache: bool) -> Counter:
    target, draft = TableLM(TARGET), TableLM(DRAFT)
    g = torch.Generator().manual_seed(1)
    counts = Counter()
    for _ in range(n):
        ids, _ = speculative_generate(target, draft, torch.tensor([0]), length, k=k, temperature=1.0, generator=g,
                                      use_cache=use_cache)
        counts[tuple(ids.tolist())] += 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("k, use_cache", [(2, True), (3, False)])
def test_sampled_sequences_have_the_target_distribution(k, use_cache):
    n, length = 2500, 3
    want = _joint_target(0, length)  # 27 sequences, each with probability >= 0.006
    assert _p_value(_chi2(_run_many(n, k, length, use_cache), want, n), len(want)) > P_MIN


@pytest.mark.slow
def test_a_wrong_acceptance_rule_fails_the_distribution_test(monkeypatch):
    monkeypatch.setattr(speculative, "accept_or_resample", lambda p, q, x, generator=None: (True, x))
    n, length = 2500, 3
    want = _joint_target(0, length)
    assert _p_value(_chi2(_run_many(n, 2, length, True), want, n), len(want)) < P_MIN


def test_greedy_equals_the_targets_greedy_decoding():
    torch.manual_seed(0)
    cfg = GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32)
    target, draft = GPT(cfg).eval(), GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # sharper distributions than the initial ones, so the argmax is clear
        target.wte.weight.mul_(20)
    prompt = torch.tensor([3, 1, 4, 1, 5])
    want = generate(target, prompt, 40, temperature=None, use_cache=False)
    for k in (1, 3, 6):
        for use_cache in (True, False):
            got, stats = speculative_generate(target, draft, prompt, 40, k=k, use_cache=use_cache)
            assert torch.equal(got, want), (k, use_cache)
            assert stats.new_tokens == 40 and 40 / (k + 1) <= stats.target_calls <= 40
    # the target as its own draft: every guess is accepted, k + 1 tokens per call
    got, stats = speculative_generate(target, target, prompt, 40, k=3)
    assert torch.equal(got, want)
    assert stats.acceptance_rate == 1.0 and stats.target_calls == math.ceil(40 / 4)


def test_stats_are_consistent():
    target, draft = TableLM(TARGET), TableLM(DRAFT)
    g = torch.Generator().manual_seed(2)
    ids, s = speculative_generate(target, draft, torch.tensor([1, 2]), 50, k=4, temperature=1.0, generator=g)
    assert len(ids) == s.new_tokens == 50
    assert s.accepted <= s.judged <= s.proposed <= s.k * s.target_calls
    rejections = s.judged - s.accepted
    assert s.new_tokens == s.accepted + s.target_calls  # each call adds its accepted guesses + one token
    assert rejections <= s.target_calls
    assert s.draft_calls == s.proposed  # one draft call per guess, with a cache
    assert 0 < s.mean_overlap < 1 and 1 <= s.tokens_per_target_call <= s.k + 1


def test_expected_tokens_per_call():
    assert expected_tokens_per_call(0.0, 4) == 1.0
    assert expected_tokens_per_call(1.0, 4) == 5.0
    assert expected_tokens_per_call(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_tokens_per_call(0.999999, 3) == pytest.approx(4.0, rel=1e-5)  # continuous at alpha = 1
    assert expected_speedup(0.5, 2, 0.0) == pytest.approx(1.75)
    assert expected_speedup(0.5, 2, 0.5) == pytest.approx(1.75 / 2)
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens_per_call(1.5, 2)
    with pytest.raises(TypeError, match="k"):
        expected_tokens_per_call(0.5, 2.0)


def test_measured_tokens_per_call_follow_the_formula():
    target, draft = TableLM(TARGET, block_size=4096), TableLM(DRAFT, block_size=4096)
    g = torch.Generator().manual_seed(3)
    _, s = speculative_generate(target, draft, torch.tensor([0]), 3000, k=3, temperature=1.0, generator=g)
    assert s.acceptance_rate == pytest.approx(s.mean_overlap, abs=0.03)
    assert s.tokens_per_target_call == pytest.approx(expected_tokens_per_call(s.acceptance_rate, 3), rel=0.05)


def test_bad_arguments_raise():
    target = TableLM(TARGET)
    other = TableLM(torch.full((4, 4), 0.25, dtype=torch.float64))
    prompt = torch.tensor([0])
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, other, prompt, 5)
    with pytest.raises(ValueError, match="k"):
        speculative_generate(target, target, prompt, 5, k=0)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(target, target, prompt, 5, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(target, target, prompt, 5, temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        speculative_generate(target, target, prompt, 64)
    with pytest.raises(ValueError, match="prompt_ids"):
        speculative_generate(target, target, torch.tensor([3]), 5)
    with pytest.raises(TypeError, match="draft"):
        speculative_generate(target, nn.Linear(2, 2), prompt, 5)
    with pytest.raises(TypeError, match="prompt_ids"):
        speculative_generate(target, target, torch.tensor([0.5]), 5)
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="q"):
        accept_or_resample(p, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="token"):
        accept_or_resample(p, p, 2)
    with pytest.raises(TypeError, match="probs"):
        speculative.draw(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="temperature"):
        speculative.next_probs(torch.zeros(3), 0.0)
