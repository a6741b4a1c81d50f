"""labkit.prune.schedule: the cubic schedule, gradual pruning in fit, sensitivity, L1."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from labkit import prune
from labkit.models import MLP
from labkit.train import fit


def _loader(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(input_shape=(1, 8, 8), hidden=(32, 16))


def test_cubic_schedule_by_hand():
    kw = dict(final_sparsity=0.8, end_step=100, begin_step=0)
    assert prune.cubic_sparsity(0, **kw) == 0.0
    assert prune.cubic_sparsity(50, **kw) == pytest.approx(0.8 * (1 - 0.5**3))  # 0.7
    assert prune.cubic_sparsity(100, **kw) == pytest.approx(0.8)
    assert prune.cubic_sparsity(500, **kw) == pytest.approx(0.8)  # clipped after the end
    assert prune.cubic_sparsity(5, final_sparsity=0.9, initial_sparsity=0.5, begin_step=10, end_step=20) == 0.5
    assert prune.cubic_sparsity(15, final_sparsity=0.9, initial_sparsity=0.5, begin_step=10,
                                end_step=20) == pytest.approx(0.9 - 0.4 * 0.125)


@settings(max_examples=50, deadline=None)
@given(t=st.integers(0, 200), s_f=st.floats(0, 1), end=st.integers(1, 200))
def test_cubic_schedule_rises_monotonically_to_its_target(t, s_f, end):
    a = prune.cubic_sparsity(t, final_sparsity=s_f, end_step=end)
    b = prune.cubic_sparsity(t + 1, final_sparsity=s_f, end_step=end)
    assert 0.0 <= a <= b <= s_f + 1e-12


def test_cubic_schedule_errors():
    with pytest.raises(ValueError, match="end_step"):
        prune.cubic_sparsity(1, final_sparsity=0.5, end_step=3, begin_step=3)
    with pytest.raises(ValueError, match="final_sparsity"):
        prune.cubic_sparsity(1, final_sparsity=1.2, end_step=3)
    with pytest.raises(ValueError, match="initial_sparsity"):
        prune.cubic_sparsity(1, final_sparsity=0.5, initial_sparsity=0.7, end_step=3)
    with pytest.raises(TypeError, match="step"):
        prune.cubic_sparsity(1.5, final_sparsity=0.5, end_step=3)
    with pytest.raises(ValueError, match="step"):
        prune.cubic_sparsity(-1, final_sparsity=0.5, end_step=3)


def test_gradual_pruner_reaches_its_target_inside_fit():
    model = _mlp()
    loader = _loader()  # 6 steps per epoch
    pruner = prune.GradualPruner(model, final_sparsity=0.9, end_step=12, frequency=4)
    fit(model, loader, epochs=3, lr=1e-2, progress=False, after_step=pruner)
    steps = [t for t, _ in pruner.history]
    targets = [s for _, s in pruner.history]
    assert steps == [4, 8, 12]
    assert targets == sorted(targets) and targets[-1] == pytest.approx(0.9)
    assert targets[0] == pytest.approx(prune.cubic_sparsity(4, final_sparsity=0.9, end_step=12))
    report = prune.sparsity_report(model)
    assert report.zeros == round(0.9 * report.params)  # global: exactly the target


def test_gradual_pruner_layerwise_and_errors():
    model = _mlp()
    pruner = prune.GradualPruner(model, final_sparsity=0.5, end_step=6, frequency=6, scope="layer")
    fit(model, _loader(), epochs=1, lr=1e-2, progress=False, after_step=pruner)
    assert all(r["sparsity"] == pytest.approx(0.5, abs=0.01) for r in prune.sparsity_report(model).rows)
    with pytest.raises(ValueError, match="scope"):
        prune.GradualPruner(_mlp(), final_sparsity=0.5, end_step=6, scope="rows")
    with pytest.raises(ValueError, match="frequency"):
        prune.GradualPruner(_mlp(), final_sparsity=0.5, end_step=6, frequency=0)
    with pytest.raises(ValueError, match="final_sparsity"):
        prune.GradualPruner(_mlp(), final_sparsity=-0.5, end_step=6)


def test_sensitivity_analysis_prunes_one_layer_at_a_time():
    model = _mlp()
    layers = prune.prunable_layers(model)
    total = sum(m.weight.numel() for m in layers.values())
    amounts = [0.0, 0.5, 1.0]
    # with the overall sparsity as the "metric", each entry is known by hand
    result = prune.sensitivity_analysis(model, None, amounts=amounts, metric=prune.sparsity)
    assert result[""] == [0.0] * 3
    for name, m in layers.items():
        assert result[name] == pytest.approx([round(a * m.weight.numel()) / total for a in amounts])
    assert prune.sparsity(model) == 0.0 and prune.get_masks(model) == {}  # the model is untouched


def test_sensitivity_with_accuracy_on_a_loader():
    model = _mlp()
    loader = _loader()
    result = prune.sensitivity_analysis(model, loader, amounts=[0.0, 1.0], layers=["layers.5"])
    assert list(result) == ["", "layers.5"]
    assert result["layers.5"][0] == result[""][0]  # pruning nothing changes nothing
    with pytest.raises(ValueError, match="amounts"):
        prune.sensitivity_analysis(model, loader, amounts=[])
    with pytest.raises(ValueError, match="amounts"):
        prune.sensitivity_analysis(model, loader, amounts=[2.0])


def test_l1_penalty_and_loss():
    model = _mlp()
    manual = sum(m.weight.abs().sum() for m in prune.prunable_layers(model).values())
    assert torch.allclose(prune.l1_penalty(model), manual)
    loss_fn = prune.l1_regularized(model, 1e-3)
    out, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    expected = nn.functional.cross_entropy(out, y) + 1e-3 * manual
    assert torch.allclose(loss_fn(out, y), expected)
    with pytest.raises(ValueError, match="strength"):
        prune.l1_regularized(model, -1.0)


def test_soft_threshold_by_hand_and_on_masked_weights():
    layer = nn.Linear(5, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.3, -0.05, 0.0, 0.02, 0.5]]))
    prune.soft_threshold_(layer, 0.1)
    assert torch.allclose(layer.weight, torch.tensor([[-0.2, 0.0, 0.0, 0.0, 0.4]]))
    model = _mlp()
    prune.magnitude_prune_(model, 0.5)
    prune.soft_threshold_(model, 10.0)  # shrinks the stored original weights to zero
    assert prune.sparsity(model) == 1.0
    with pytest.raises(ValueError, match="threshold"):
        prune.soft_threshold_(model, -0.1)


def test_proximal_l1_training_makes_exact_zeros():
    loader = _loader()
    plain, l1 = _mlp(), _mlp()
    fit(plain, loader, epochs=2, lr=1e-2, progress=False)
    fit(l1, loader, epochs=2, lr=1e-2, progress=False, after_step=lambda m: prune.soft_threshold_(m, 1e-2))
    assert prune.sparsity(plain) < 0.01
    assert prune.sparsity(l1) > 0.3


def test_gradual_pruner_works_with_an_optimizer_built_before_it():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.layers[1].weight.detach().clone()
    pruner = prune.GradualPruner(model, final_sparsity=0.5, end_step=6, frequency=3)
    fit(model, _loader(), epochs=1, optimizer=opt, progress=False, after_step=pruner)
    w = model.layers[1].weight.detach()
    assert prune.sparsity(model) == pytest.approx(0.5, abs=1e-3)
    assert not torch.equal(w[w != 0], before[w != 0])  # the optimizer still trained the kept weights
