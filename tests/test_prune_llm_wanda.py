"""Wanda (labkit.prune.wanda) against a naive loop over the published formula and a hand-worked case."""

import pytest
import torch
from torch import nn

from labkit.lm.model import GPT, get_config
from labkit.prune import get_masks, sparsity_report
from labkit.prune.nm import is_nm_sparse
from labkit.prune.wanda import (
    compute_linear_masks,
    input_sq_norms,
    linear_layers,
    prune_linear_,
    wanda_scores,
)


def naive_wanda_reference(weight, inputs, sparsity):
    """Wanda's prune_wanda written out: scaler_row = running sum of ||X_j||^2 / nsamples
    (nsamples = sequences, as in lib/layerwrapper.py), metric = |W| * sqrt(scaler_row), then the
    lowest int(in * sparsity) of each row pruned (stable sort)."""
    scaler_row, nsamples = torch.zeros(weight.shape[1]), 0
    for inp in inputs:  # each (batch, seq, in)
        tmp = inp.shape[0]
        x = inp.reshape(-1, inp.shape[-1]).t().float()
        scaler_row *= nsamples / (nsamples + tmp)
        nsamples += tmp
        scaler_row += torch.norm(x, p=2, dim=1) ** 2 / nsamples
    metric = weight.abs() * torch.sqrt(scaler_row.reshape(1, -1))
    pruned = torch.zeros_like(metric, dtype=torch.bool)
    idx = torch.sort(metric, dim=-1, stable=True)[1][:, :int(metric.shape[1] * sparsity)]
    pruned.scatter_(1, idx, True)
    return ~pruned


def test_sq_norms_are_the_mean_square_per_input_feature():
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(6, 3)
    batches = [torch.randn(2, 5, 6, generator=g) for _ in range(3)]
    s = input_sq_norms(nn.Sequential(layer), batches, layers={"0": layer})["0"]
    tokens = torch.cat([b.reshape(-1, 6) for b in batches])
    torch.testing.assert_close(s, tokens.pow(2).mean(0))


def test_masks_match_the_published_formula_on_random_layers():
    g = torch.Generator().manual_seed(1)
    for trial in range(5):
        layer = nn.Linear(16, 8)
        scale = torch.rand(16, generator=g) * 10  # uneven input norms, as in a real model
        batches = [torch.randn(3, 7, 16, generator=g) * scale for _ in range(4)]
        s = input_sq_norms(nn.Sequential(layer), batches, layers={"0": layer})
        ours = compute_linear_masks({"0": layer}, method="wanda", sparsity=0.5, sq_norms=s)["0"]
        assert torch.equal(ours, naive_wanda_reference(layer.weight.detach(), batches, 0.5)), trial


def test_hand_worked_scores_and_wanda_keeps_a_small_weight_on_a_large_input():
    w = torch.tensor([[0.1, 1.0, 2.0, -3.0]])
    s = torch.tensor([10000.0, 1.0, 0.16, 0.0])    # input norms sqrt(s) = 100, 1, 0.4, 0
    torch.testing.assert_close(wanda_scores(w, s), torch.tensor([[10.0, 1.0, 0.8, 0.0]]))
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    wanda = compute_linear_masks({"l": layer}, method="wanda", sparsity=0.5, sq_norms={"l": s})["l"]
    magnitude = compute_linear_masks({"l": layer}, method="magnitude", sparsity=0.5)["l"]
    assert torch.equal(magnitude, torch.tensor([[False, False, True, True]]))   # |w|: 2 and 3 survive
    assert torch.equal(wanda, torch.tensor([[True, True, False, False]]))
    # the small weight on the large input matters: dropping it moves the output far more
    x = torch.tensor([[100.0, 1.0, 0.4, 0.0]])
    full = layer(x).detach()
    assert float((full - x @ (w * wanda).t()).abs()) < float((full - x @ (w * magnitude).t()).abs())


def test_nm_masks_and_lm_layers():
    torch.manual_seed(0)
    model = GPT(get_config("tiny"))
    names = list(linear_layers(model))
    assert "head" not in names and len(names) == 4 * model.config.n_layer
    calib = [torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    prune_linear_(model, method="wanda", nm=(2, 4), calibration=calib)
    assert set(get_masks(model)) == set(names)
    for name in names:
        assert is_nm_sparse(dict(model.named_modules())[name].weight, 2, 4), name
    report = sparsity_report(model, names)
    assert report.overall == pytest.approx(0.5)
    assert float((model.head.weight == 0).float().mean()) == 0.0  # the head is untouched


def test_magnitude_unstructured_matches_masks_module():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    ours = compute_linear_masks({"l": layer}, method="magnitude", sparsity=0.5)["l"]
    assert int(ours.sum()) == 16
    assert float(layer.weight.detach().abs()[ours].min()) >= float(layer.weight.detach().abs()[~ours].max())


@pytest.mark.parametrize("call, err, words", [
    (lambda lin: wanda_scores(lin.weight, torch.ones(5)), ValueError, "wrong width"),
    (lambda lin: compute_linear_masks({"l": lin}, method="wanda"), ValueError, "sq_norms"),
    (lambda lin: compute_linear_masks({"l": lin}, method="random"), ValueError, "method"),
    (lambda lin: compute_linear_masks({"l": lin}, method="magnitude", nm=(4, 2)), ValueError, "n=4 must be <= m=2"),
    (lambda lin: compute_linear_masks({"l": lin}, method="magnitude", nm=(2, 4, 8)), ValueError, "pair"),
    (lambda lin: compute_linear_masks({"l": lin}, method="magnitude", sparsity=2.0), ValueError, "sparsity"),
    (lambda lin: input_sq_norms(nn.Sequential(lin), [torch.ones(2, 5)], layers={"0": lin}), ValueError, "wrong width"),
    (lambda lin: input_sq_norms(nn.Sequential(lin), [], layers={"0": lin}), ValueError, "no data"),
    (lambda lin: prune_linear_(nn.Sequential(lin), method="wanda", exclude=()), ValueError, "calibration"),
    (lambda lin: linear_layers(nn.Sequential(lin), exclude=("0",)), ValueError, "no nn.Linear"),
])
def test_bad_input(call, err, words):
    with pytest.raises(err, match=words):
        call(nn.Linear(8, 4))


def test_group_overrides_where_scores_are_compared():
    torch.manual_seed(3)
    layer = nn.Linear(8, 4)
    s = {"l": torch.rand(8) * 10}
    w = layer.weight.detach()
    by_row = compute_linear_masks({"l": layer}, method="magnitude", group="row")["l"]
    assert bool((by_row.sum(1) == 4).all())
    assert torch.equal(by_row, compute_linear_masks({"l": layer}, method="wanda", group="row",
                                                    sq_norms={"l": torch.ones(8)})["l"])  # equal norms: |W| alone
    by_layer = compute_linear_masks({"l": layer}, method="wanda", group="layer", sq_norms=s)["l"]
    scores = w.abs() * s["l"].sqrt()
    assert int(by_layer.sum()) == 16 and float(scores[by_layer].min()) >= float(scores[~by_layer].max())
    with pytest.raises(ValueError, match="group"):
        compute_linear_masks({"l": layer}, method="magnitude", group="column")
