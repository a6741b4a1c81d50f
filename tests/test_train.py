"""labkit.train: seeding, fast mode, fit/evaluate against a hand-written loop."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from labkit import train as T
from labkit.models import MLP


def _toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return TensorDataset(x, y)


def test_seed_everything_returns_a_seeded_generator_and_repeats_init():
    g1 = T.seed_everything(7)
    a = MLP((4,), hidden=(3,)).layers[1].weight.clone()
    r1 = torch.rand(3, generator=g1)
    g2 = T.seed_everything(7)
    b = MLP((4,), hidden=(3,)).layers[1].weight.clone()
    assert torch.equal(a, b) and torch.equal(r1, torch.rand(3, generator=g2))
    with pytest.raises(TypeError):
        T.seed_everything("7")
    with pytest.raises(ValueError):
        T.seed_everything(-1)


def test_fast_mode_and_pick(monkeypatch):
    monkeypatch.setenv("LABKIT_FAST", "1")
    assert T.fast_mode() and T.pick(10, 1) == 1
    monkeypatch.setenv("LABKIT_FAST", "0")
    assert not T.fast_mode() and T.pick(10, 1) == 10


def test_fit_equals_a_hand_written_sgd_loop():
    ds = _toy()
    T.seed_everything(0)
    m1 = MLP((4,), hidden=(8,), num_classes=2)
    m2 = MLP((4,), hidden=(8,), num_classes=2)
    m2.load_state_dict(m1.state_dict())
    loader = DataLoader(ds, batch_size=16)
    T.fit(m1, loader, epochs=2, optimizer=torch.optim.SGD(m1.parameters(), lr=0.1), progress=False)
    opt = torch.optim.SGD(m2.parameters(), lr=0.1)
    for _ in range(2):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m2(x), y).backward()
            opt.step()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2)


def test_fit_learns_and_logs_history():
    ds = _toy(256)
    T.seed_everything(0)
    m = MLP((4,), hidden=(16,), num_classes=2)
    loader = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    h = T.fit(m, loader, epochs=5, val_loader=DataLoader(ds, batch_size=64), lr=1e-2, progress=False)
    assert h.epochs == 5 and set(h.metrics) == {"train_loss", "train_acc", "val_loss", "val_acc"}
    assert h["train_loss"][-1] < h["train_loss"][0] and h.last("val_acc") > 0.9
    ev = T.evaluate(m, DataLoader(ds, batch_size=64))
    assert ev["accuracy"] == pytest.approx(h.last("val_acc")) == pytest.approx(T.accuracy(m, DataLoader(ds)))


def test_after_step_hook_runs_every_step():
    calls = []
    m = MLP((4,), hidden=(2,), num_classes=2)
    T.fit(m, DataLoader(_toy(32), batch_size=8), epochs=1, progress=False, after_step=lambda mod: calls.append(mod))
    assert len(calls) == 4 and calls[0] is m


def test_bad_input():
    m = MLP((4,), hidden=(2,), num_classes=2)
    loader = DataLoader(_toy(8), batch_size=4)
    with pytest.raises(ValueError, match="epochs"):
        T.fit(m, loader, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        T.fit(m, loader, lr=-1)
    with pytest.raises(TypeError, match="nn.Module"):
        T.fit("model", loader)
    with pytest.raises(TypeError, match="iterable"):
        T.evaluate(m, 42)
    with pytest.raises(ValueError, match="no data"):
        T.evaluate(m, [])


def test_a_batch_loss_that_ignores_the_labels_trains_by_hand():
    """``batch_loss(model, batch)`` replaces the cross-entropy: ``mean((w x)^2)`` with SGD gives
    ``w1 = w0 (1 - 2 lr mean(x^2))`` whatever the labels hold (NaN here), and the epoch reports
    the loss at ``w0`` and no accuracy."""
    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(2.0)
    x = torch.tensor([[1.0], [3.0]])  # mean(x^2) = 5
    loader = [(x, torch.full((2,), float("nan")))]
    out = T.train_epoch(m, loader, torch.optim.SGD(m.parameters(), lr=0.01), progress=False,
                        batch_loss=lambda model, batch: model(batch[0]).pow(2).mean())
    assert out == {"loss": pytest.approx(4.0 * 5)}
    assert m.weight.item() == pytest.approx(2.0 * (1 - 2 * 0.01 * 5))


def test_batch_loss_totals_are_per_sample_means_in_the_history():
    m = torch.nn.Linear(1, 1)
    loader = [(torch.ones(3, 1), torch.zeros(3)), (torch.ones(1, 1), torch.zeros(1))]

    def batch_loss(model, batch):
        x, _ = batch
        return T.BatchLoss(model(x).sum() * 0.0 + len(x), len(x), {"seen": len(x), "first": 1.0})

    hist = T.fit(m, loader, epochs=2, lr=0.1, progress=False, batch_loss=batch_loss)
    assert set(hist.metrics) == {"train_loss", "seen", "first"}  # no accuracy: the hook reports none
    assert hist["train_loss"] == pytest.approx([(3 * 3 + 1 * 1) / 4] * 2)  # each batch's loss weighted by its n
    assert hist["seen"] == [1.0, 1.0] and hist["first"] == [0.5, 0.5]  # totals / samples


def test_the_default_batch_loss_is_the_old_cross_entropy_step():
    """``cross_entropy_batch`` passed explicitly gives exactly what ``fit`` gives by default."""
    runs = []
    for kw in ({}, {"batch_loss": T.cross_entropy_batch()}):
        T.seed_everything(0)
        m = MLP((4,), hidden=(8,), num_classes=2)
        h = T.fit(m, DataLoader(_toy(32), batch_size=8), epochs=2, lr=1e-2, progress=False, **kw)
        runs.append((h.metrics, m.state_dict()))
    assert runs[0][0] == runs[1][0] and set(runs[0][0]) == {"train_loss", "train_acc"}
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_batch_loss_bad_input():
    m = MLP((4,), hidden=(2,), num_classes=2)
    loader = DataLoader(_toy(8), batch_size=4)
    with pytest.raises(ValueError, match="not both"):
        T.fit(m, loader, loss_fn=torch.nn.functional.cross_entropy, batch_loss=lambda model, b: model(b[0]).sum())
    with pytest.raises(TypeError, match="batch_loss must be callable"):
        T.fit(m, loader, batch_loss="mse")
    with pytest.raises(TypeError, match="batch_loss must return a loss tensor or a labkit.train.BatchLoss, got str"):
        T.fit(m, loader, progress=False, batch_loss=lambda model, b: "loss")
    with pytest.raises(ValueError, match=r"loss must have shape \(\)"):
        T.BatchLoss(torch.ones(2), 2)
