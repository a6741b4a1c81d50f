"""labkit.efficiency.optim: from-scratch update rules equal torch.optim, step for step."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.efficiency.optim import (
    ScratchAdam,
    ScratchSGD,
    adam_update,
    sgd_update,
    step_speed,
    torch_optimizer,
)
from labkit.models import MLP


def _train(model, opt, steps=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 12, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _pair(ours, theirs, **hyper):
    torch.manual_seed(0)
    base = MLP((12,), hidden=(10, 8), num_classes=3)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    _train(a, ours(a.parameters(), **hyper))
    _train(b, theirs(b.parameters(), **hyper))
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hyper", [
    dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, momentum=0.5, dampening=0.3, weight_decay=0.01),
])
def test_sgd_equals_torch(hyper):
    _pair(ScratchSGD, torch.optim.SGD, **hyper)


@pytest.mark.parametrize("hyper", [dict(lr=0.01), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)])
def test_adam_equals_torch(hyper):
    _pair(ScratchAdam, torch.optim.Adam, **hyper)


def test_decoupled_adam_equals_adamw():
    _pair(lambda p, **h: ScratchAdam(p, decoupled=True, **h), torch.optim.AdamW, lr=0.01, weight_decay=0.1)


def test_adam_first_step_by_hand():
    # t=1: m = 0.1 g, v = 0.001 g^2, m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps) ~ lr * sign(g)
    p, g = torch.tensor([1.0, -2.0]), torch.tensor([0.5, -4.0])
    new_p, m, v = adam_update(p, g, torch.zeros(2), torch.zeros(2), 1, lr=0.1)
    torch.testing.assert_close(m, 0.1 * g)
    torch.testing.assert_close(v, 0.001 * g * g)
    torch.testing.assert_close(new_p, torch.tensor([0.9, -1.9]))
    with pytest.raises(ValueError, match="t "):
        adam_update(p, g, m, v, 0, lr=0.1)


@settings(max_examples=30, deadline=None)
@given(lr=st.floats(1e-3, 1.0), mu=st.floats(0.0, 0.99), g=st.floats(-10, 10), b=st.floats(-10, 10))
def test_momentum_update_formula(lr, mu, g, b):
    p = torch.tensor([1.0], dtype=torch.float64)
    new_p, buf = sgd_update(p, torch.tensor([g], dtype=torch.float64), torch.tensor([b], dtype=torch.float64),
                            lr=lr, momentum=mu)
    if mu == 0:
        assert buf is None and float(new_p) == pytest.approx(1.0 - lr * g)
    else:
        assert float(buf) == pytest.approx(mu * b + g)
        assert float(new_p) == pytest.approx(1.0 - lr * (mu * b + g))


@pytest.mark.parametrize("impl", ["for-loop", "foreach", "fused"])
def test_torch_implementations_agree(impl):
    _pair(lambda p, **h: torch_optimizer("adam", p, implementation=impl, **h), torch.optim.Adam, lr=0.01)


def test_step_speed_rows():
    model = MLP((12,), hidden=(10,), num_classes=3)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 12)), torch.tensor([0, 1, 2, 0])).backward()
    rows = step_speed(list(model.parameters()), min_run_time=0.01)
    assert [r["implementation"] for r in rows] == ["for-loop", "foreach", "fused", "labkit scratch"]
    assert rows[0]["speedup"] == 1.0 and all(r["seconds"] > 0 for r in rows)


def test_bad_arguments():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="lr"):
        ScratchSGD(params, lr=0)
    with pytest.raises(ValueError, match="momentum"):
        ScratchSGD(params, lr=0.1, momentum=1.5)
    with pytest.raises(ValueError, match="nesterov"):
        ScratchSGD(params, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        ScratchAdam(params, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        ScratchAdam(params, eps=0)
    with pytest.raises(ValueError, match="weight_decay"):
        ScratchAdam(params, weight_decay=-1)
    with pytest.raises(ValueError, match="implementation"):
        torch_optimizer("adam", params, implementation="turbo")
    with pytest.raises(ValueError, match="name"):
        torch_optimizer("lion", params)
    with pytest.raises(ValueError, match="grad"):
        step_speed(params)
