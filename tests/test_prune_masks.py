"""labkit.prune.masks: magnitude masks checked against torch.nn.utils.prune and by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from labkit import prune
from labkit.models import MLP, SmallCNN
from labkit.prune.masks import PRUNABLE
from labkit.train import fit


def _model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # float weights from a continuous init: no ties in |w|
    return SmallCNN(widths=(8, 16)) if kind == "cnn" else MLP(hidden=(64, 32))


def _torch_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight_mask.bool() for n, m in model.named_modules() if hasattr(m, "weight_mask")}


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.77, 0.9, 1.0])
def test_layerwise_masks_equal_torch_l1_unstructured(kind, amount):
    ours, theirs = _model(kind), _model(kind)
    prune.magnitude_prune_(ours, amount, scope="layer")
    for m in prune.prunable_layers(theirs).values():
        torch_prune.l1_unstructured(m, "weight", amount=amount)
    expected = _torch_masks(theirs)
    got = prune.get_masks(ours)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
        assert torch.equal(dict(ours.named_modules())[name].weight, dict(theirs.named_modules())[name].weight)


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
@pytest.mark.parametrize("amount", [0.2, 0.6, 0.95])
def test_global_masks_equal_torch_global_unstructured(kind, amount):
    ours, theirs = _model(kind, seed=1), _model(kind, seed=1)
    prune.magnitude_prune_(ours, amount, scope="global")
    params = [(m, "weight") for m in prune.prunable_layers(theirs).values()]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    expected, got = _torch_masks(theirs), prune.get_masks(ours)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    # global pruning removes exactly round(amount * N) weights in total, unevenly across layers
    report = prune.sparsity_report(ours)
    assert report.zeros == round(amount * report.params)
    assert len({round(r["sparsity"], 3) for r in report.rows}) > 1


def test_hand_worked_5x5_mask():
    w = torch.tensor([[0.9, -0.1, 0.4, 0.05, -0.7],
                      [0.2, 0.8, -0.3, 0.6, 0.01],
                      [-0.5, 0.15, 1.0, -0.25, 0.35],
                      [0.45, -0.02, 0.55, 0.12, -0.65],
                      [0.3, 0.75, -0.08, 0.95, 0.22]])
    # amount 0.4 of 25 -> 10 smallest |w|: .01 .02 .05 .08 .1 .12 .15 .2 .22 .25
    expected = torch.tensor([[1, 0, 1, 0, 1],
                             [0, 1, 1, 1, 0],
                             [1, 0, 1, 0, 1],
                             [1, 0, 1, 0, 1],
                             [1, 1, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(prune.magnitude_mask(w, 0.4), expected)
    # round half to even, as torch counts: 0.5 * 25 = 12.5 -> 12 pruned
    assert int((~prune.magnitude_mask(w, 0.5)).sum()) == 12


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), amount=st.floats(0, 1), seed=st.integers(0, 10_000))
def test_mask_prunes_the_smallest(n, amount, seed):
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    mask = prune.magnitude_mask(w, amount)
    assert int((~mask).sum()) == round(amount * n)
    if mask.any() and (~mask).any():
        assert w[mask].abs().min() >= w[~mask].abs().max()


def test_masks_hold_through_training_and_become_permanent(device):
    torch.manual_seed(0)
    model = MLP(input_shape=(1, 8, 8), hidden=(32,)).to(device)
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    prune.magnitude_prune_(model, 0.7, scope="global")
    masks = {n: m.clone() for n, m in prune.get_masks(model).items()}
    before = {n: m.weight.detach().clone() for n, m in prune.prunable_layers(model).items()}
    fit(model, loader, epochs=2, lr=1e-2, progress=False, device=device)
    for name, module in prune.prunable_layers(model).items():
        w = module.weight.detach()
        assert torch.all(w[~masks[name]] == 0)  # pruned weights stayed zero
        assert not torch.equal(w[masks[name]], before[name][masks[name]])  # the others trained
    assert prune.sparsity(model) == pytest.approx(0.7, abs=1e-3)
    x = x.to(device)
    out = model(x)
    prune.make_permanent_(model)
    assert prune.get_masks(model) == {}
    assert all("parametrizations" not in k for k in model.state_dict())
    assert torch.allclose(model(x), out)
    assert prune.sparsity(model) == pytest.approx(0.7, abs=1e-3)


def test_pruning_again_never_revives_weights():
    model = _model("mlp")
    prune.magnitude_prune_(model, 0.6)
    first = {n: m.clone() for n, m in prune.get_masks(model).items()}
    prune.magnitude_prune_(model, 0.3)  # a smaller amount keeps the earlier zeros
    for name, mask in prune.get_masks(model).items():
        assert torch.equal(mask, first[name])
    prune.magnitude_prune_(model, 0.8)
    for name, mask in prune.get_masks(model).items():
        assert torch.all(mask <= first[name])
    assert prune.sparsity(model) == pytest.approx(0.8, abs=1e-3)


def test_per_layer_amounts_and_layer_subset():
    model = _model("cnn")
    prune.magnitude_prune_(model, {"features.0": 0.5, "classifier.1": 0.9})
    report = prune.sparsity_report(model).as_dict()
    assert report["features.0"] == pytest.approx(0.5, abs=0.01)
    assert report["features.4"] == 0.0
    assert report["classifier.1"] == pytest.approx(0.9, abs=0.001)
    other = _model("cnn")
    prune.magnitude_prune_(other, 0.5, layers=["features.4"])
    assert list(prune.get_masks(other)) == ["features.4"]


def test_sparsity_report_counts_by_hand():
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1, 2, 0], [3, 0, 0, 0], [1, 1, 1, 1]]))
        model[2].weight.fill_(1.0)
    report = prune.sparsity_report(model)
    assert [r["zeros"] for r in report.rows] == [5, 0]
    assert report.as_dict() == {"0": 5 / 12, "2": 0.0}
    assert report.overall == 5 / 18 and report.params == 18
    assert "overall" in str(report) and "27.8%" in str(report)


def test_deepcopy_of_a_masked_model_keeps_its_masks():
    model = _model("cnn")
    prune.magnitude_prune_(model, 0.5)
    clone = copy.deepcopy(model)
    assert prune.sparsity(clone) == prune.sparsity(model)


@pytest.mark.parametrize("amount", [-0.1, 1.5, float("nan")])
def test_amount_outside_unit_interval_is_rejected(amount):
    with pytest.raises(ValueError, match="amount"):
        prune.magnitude_prune_(_model("mlp"), amount)
    with pytest.raises(ValueError, match="amount"):
        prune.magnitude_mask(torch.randn(5), amount)


def test_bad_arguments_have_clear_errors():
    with pytest.raises(TypeError, match="amount"):
        prune.magnitude_prune_(_model("mlp"), "half")
    with pytest.raises(TypeError, match="amount"):
        prune.magnitude_prune_(_model("mlp"), True)
    with pytest.raises(ValueError, match="nothing to prune"):
        prune.magnitude_prune_(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), 0.5)
    with pytest.raises(TypeError, match="model"):
        prune.sparsity_report("not a model")
    with pytest.raises(ValueError, match="scope"):
        prune.magnitude_prune_(_model("mlp"), 0.5, scope="row")
    with pytest.raises(ValueError, match="not prunable layers"):
        prune.magnitude_prune_(_model("mlp"), 0.5, layers=["layers.2"])  # a ReLU
    with pytest.raises(ValueError, match="scope='layer'"):
        prune.compute_masks(_model("mlp"), {"layers.1": 0.5}, scope="global")
    with pytest.raises(ValueError, match="shape"):
        prune.apply_masks_(_model("mlp"), {"layers.1": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(TypeError, match="weight"):
        prune.magnitude_mask([1.0, 2.0], 0.5)


@pytest.mark.parametrize("amount", [0, 1, 7, 50])
def test_int_amount_is_a_count_as_in_torch(amount):
    ours, theirs = _model("cnn"), _model("cnn")
    prune.magnitude_prune_(ours, amount, scope="layer")
    for m in theirs.modules():
        if isinstance(m, PRUNABLE):
            torch_prune.l1_unstructured(m, "weight", amount=amount)
    theirs_masks = _torch_masks(theirs)
    assert set(prune.get_masks(ours)) == set(theirs_masks)
    for name, mask in prune.get_masks(ours).items():
        assert int((~mask).sum()) == amount  # amount=1 prunes one weight, not all of them
        assert torch.equal(mask, theirs_masks[name])


def test_int_amount_counts_over_all_layers_when_global():
    ours, theirs = _model("mlp"), _model("mlp")
    prune.magnitude_prune_(ours, 50, scope="global")
    params = [(m, "weight") for m in theirs.modules() if isinstance(m, PRUNABLE)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=50)
    assert prune.sparsity_report(ours).zeros == 50
    theirs_masks = _torch_masks(theirs)
    for name, mask in prune.get_masks(ours).items():
        assert torch.equal(mask, theirs_masks[name])


def test_int_amount_larger_than_the_layer_is_rejected():
    with pytest.raises(ValueError, match="count"):
        prune.magnitude_mask(torch.randn(5), 6)
    with pytest.raises(ValueError, match="amount"):
        prune.magnitude_mask(torch.randn(5), -1)
    with pytest.raises(ValueError, match=r"amount\['layers.1'\]"):
        prune.magnitude_prune_(_model("mlp"), {"layers.1": 10**9})


def test_second_call_differs_from_torch_total_versus_remaining():
    """labkit: amount is the total at zero after the call; torch: amount of what remains."""
    ours, theirs = nn.Linear(40, 10), nn.Linear(40, 10)
    theirs.load_state_dict(ours.state_dict())
    prune.magnitude_prune_(ours, 0.5)
    torch_prune.l1_unstructured(theirs, "weight", amount=0.5)
    assert torch.equal(prune.get_masks(ours)[""], theirs.weight_mask.bool())  # first call: same
    prune.magnitude_prune_(ours, 0.5)
    torch_prune.l1_unstructured(theirs, "weight", amount=0.5)
    assert prune.sparsity(ours) == 0.5  # still 200 of 400
    assert float((theirs.weight == 0).float().mean()) == 0.75  # 200 + half of the 200 left
    # torch reaches labkit's total with (s - s0) / (1 - s0) of the remaining weights
    prune.magnitude_prune_(ours, 0.75)
    assert torch.equal(prune.get_masks(ours)[""], theirs.weight_mask.bool())
