"""Channel scaling: migration, outlier injection, AWQ and SmoothQuant, against exact equivalences."""

import copy

import pytest
import torch
from torch import nn

from labkit.lm.model import GPT, get_config
from labkit.quantize.awq import awq_quantize_, awq_scales, awq_search
from labkit.quantize.calibration import capture_inputs, layer_error
from labkit.quantize.groupwise import rtn_weight
from labkit.quantize.migration import inject_outliers_, layernorm_pairs, migrate_scale_
from labkit.quantize.smoothquant import W8A8Linear, act_ranges, smooth_, smooth_scales, w8a8_


def _model(seed=0):
    torch.manual_seed(seed)
    model = GPT(get_config("tiny")).eval()
    with torch.no_grad():  # LayerNorm affines away from 1 / 0, as after training
        for ln, _ in layernorm_pairs(model):
            m = dict(model.named_modules())[ln]
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    return model


def _batches(n=2, seed=0):
    return [torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(seed + i)) for i in range(n)]


def test_migrate_scale_preserves_layernorm_and_linear_pairs():
    g = torch.Generator().manual_seed(0)
    ln, lin = nn.LayerNorm(8), nn.Linear(8, 5)
    nn.init.uniform_(ln.weight, 0.5, 2.0)
    nn.init.uniform_(ln.bias, -1.0, 1.0)
    x = torch.randn(4, 8, generator=g)
    want = lin(ln(x))
    migrate_scale_(ln, lin, torch.rand(8, generator=g) * 10 + 0.1)
    assert torch.allclose(lin(ln(x)), want, atol=1e-5)
    qkv, proj = nn.Linear(8, 24), nn.Linear(8, 3)  # the value rows 16:24 feed proj
    want = proj(qkv(x)[:, 16:])
    migrate_scale_(qkv, proj, torch.rand(8, generator=g) + 0.5, rows=slice(16, 24))
    assert torch.allclose(proj(qkv(x)[:, 16:]), want, atol=1e-5)


def test_injected_outliers_leave_the_model_output_unchanged():
    model, x = _model(), _batches(1)[0]
    with torch.no_grad():
        want = model(x)
        inject_outliers_(model, [3, 17], 50.0)
        assert torch.allclose(model(x), want, atol=1e-5)
    ranges = act_ranges(model, [x])
    r = ranges["blocks.0.attn.c_attn"]
    assert r[[3, 17]].min() > 10 * r.median()


def test_awq_alpha_zero_is_rtn_and_search_never_loses_to_it():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 64, generator=g) * (torch.rand(64, generator=g) * 8 + 0.1)  # uneven channels
    w = torch.randn(16, 64, generator=g)
    assert torch.equal(awq_scales(x.abs().mean(0), 0.0), torch.ones(64))
    found = awq_search(w, x, bits=3, group_size=32)
    assert found["rtn_error"] == pytest.approx(layer_error(w, rtn_weight(w, bits=3, group_size=32), x))
    assert found["error"] <= found["rtn_error"] and found["error"] == min(found["errors"])
    assert found["error"] < 0.9 * found["rtn_error"]  # on uneven channels the scaling helps


def test_awq_on_the_model_folds_exactly_and_beats_rtn():
    model, batches = _model(), _batches()
    old = copy.deepcopy(model)
    with torch.no_grad():
        want = model(batches[0])
    chosen = awq_quantize_(model, batches, bits=3, group_size=32, n_grid=5)
    mods, old_mods = dict(model.named_modules()), dict(old.named_modules())
    # the folding alone (no rounding) preserves the float model
    folded = copy.deepcopy(old)
    fmods = dict(folded.named_modules())
    for name, c in chosen.items():
        if c["folded_into"]:
            migrate_scale_(fmods[c["folded_into"]], fmods[name], c["scale"])
    with torch.no_grad():
        assert torch.allclose(folded(batches[0]), want, atol=1e-5)
    for name, c in chosen.items():
        w, s = old_mods[name].weight, c["scale"]
        if c["folded_into"]:
            assert torch.equal(mods[c["folded_into"]].weight, old_mods[c["folded_into"]].weight / s)
            assert torch.equal(mods[name].weight, rtn_weight(w * s, bits=3, group_size=32))
        else:
            assert torch.equal(mods[name].weight, rtn_weight(w * s, bits=3, group_size=32) / s)
    assert sum(c["folded_into"] is not None for c in chosen.values()) == 4
    name = "blocks.1.mlp.2"
    x, w = capture_inputs(old, batches, [name])[name], old_mods[name].weight
    assert awq_search(w, x, bits=3, group_size=32, n_grid=5)["error"] <= layer_error(
        w, rtn_weight(w, bits=3, group_size=32), x)


def test_smoothquant_scales_hand_example_and_function_preserved():
    s = smooth_scales(torch.tensor([16.0, 1.0]), torch.tensor([[1.0, -4.0], [-0.25, 1.0]]), alpha=0.5)
    assert torch.allclose(s, torch.tensor([4.0, 0.5]))
    model, batches = _model(), _batches()
    with torch.no_grad():
        want = model(batches[0])
        smooth_(model, batches, alpha=0.5)
        assert torch.allclose(model(batches[0]), want, atol=1e-5)


def _w8a8_error(model, x, want):
    with torch.no_grad():
        return float((w8a8_(copy.deepcopy(model))(x) - want).pow(2).mean())


def test_smoothquant_cuts_w8a8_error_on_injected_outliers():
    model, batches = _model(), _batches()
    x = batches[0]
    with torch.no_grad():
        want = model(x)
    clean = _w8a8_error(model, x, want)
    inject_outliers_(model, [3, 17, 40], 100.0)
    broken = _w8a8_error(model, x, want)
    smooth_(model, batches, alpha=0.5)
    fixed = _w8a8_error(model, x, want)
    assert broken > 10 * clean
    assert fixed < broken / 10


def test_w8a8_linear_against_per_tensor_int8_by_hand():
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.5, -2.0, 0.0], [0.1, 0.2, 0.3, 0.4]]))
    q = W8A8Linear(lin)
    step = 2.0 / 127.5
    assert torch.allclose(q.weight, torch.round(lin.weight / step).clamp(-128, 127) * step)
    x = torch.tensor([[1.0, -1.0, 0.5, 0.25]])
    xs = 1.0 / 127.5
    assert torch.allclose(q(x), (torch.round(x / xs).clamp(-128, 127) * xs) @ q.weight.T)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        smooth_scales(torch.ones(2), torch.ones(3, 2), alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        awq_scales(torch.ones(2), -0.1)
    with pytest.raises(ValueError, match="width"):
        awq_search(torch.ones(3, 4), torch.ones(5, 3))
    with pytest.raises(ValueError, match="> 0"):
        migrate_scale_(nn.LayerNorm(2), nn.Linear(2, 2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        migrate_scale_(nn.LayerNorm(2), nn.Linear(2, 2), torch.ones(3))
    with pytest.raises(ValueError, match="channels"):
        inject_outliers_(_model(), [64], 10.0)
    with pytest.raises(ValueError, match="pre-norm"):
        layernorm_pairs(nn.Sequential(nn.Linear(2, 2)))
