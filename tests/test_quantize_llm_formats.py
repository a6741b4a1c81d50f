"""fp8 and NF4 (labkit.quantize.formats) against PyTorch's casts and the QLoRA table."""

import pytest
import torch

from labkit.quantize.formats import (
    NF4_VALUES,
    fake_quant_fp8,
    fake_quant_nf4,
    format_points,
    fp8_values,
    round_to_values,
)


@pytest.mark.parametrize("fmt,dtype", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
def test_fp8_grid_from_the_bit_formula_is_torchs(fmt, dtype):
    grid = fp8_values(fmt)
    assert float(grid.max()) == torch.finfo(dtype).max
    assert float(grid[grid > 0].min()) == 2.0 ** (-9 if fmt == "e4m3" else -16)  # smallest subnormal
    codes = torch.arange(256, dtype=torch.uint8).view(dtype).float()  # every bit pattern, decoded by torch
    finite = codes[torch.isfinite(codes) & (codes >= 0)].unique().double().sort().values
    assert torch.equal(finite, grid)


@pytest.mark.parametrize("fmt,dtype", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
def test_fp8_cast_is_nearest_rounding_ties_to_even(fmt, dtype):
    grid = fp8_values(fmt)
    top = float(grid.max())
    x = torch.cat([torch.randn(4000, generator=torch.Generator().manual_seed(0)) * top / 8,
                   ((grid[1:] + grid[:-1]) / 2).float(),  # every midpoint: the ties
                   -((grid[1:] + grid[:-1]) / 2).float()]).clamp(-top, top)
    assert torch.equal(x.to(dtype).float(), round_to_values(x, grid.float()))


def test_fake_quant_fp8_uses_one_scale_and_the_cast():
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    s = x.abs().max() / 448
    assert torch.equal(fake_quant_fp8(x, "e4m3"), (x / s).to(torch.float8_e4m3fn).float() * s)
    assert fake_quant_fp8(x, "e4m3").abs().max() == pytest.approx(float(x.abs().max()), rel=1e-6)


def test_nf4_table_is_qloras_normal_quantiles():
    offset = 0.9677083  # bitsandbytes create_normal_map: 8 positive and 7 negative normal quantiles, and 0
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    assert torch.allclose(torch.tensor(NF4_VALUES, dtype=torch.float64), values / values.max(), atol=1e-6)


def test_nf4_fake_quant_hand_example():
    x = torch.tensor([2.0, -2.0, 0.0, 1.0, 0.17, -0.2, 1.4, 0.05])
    out = fake_quant_nf4(x, block_size=4)
    assert out[:3].tolist() == [2.0, -2.0, 0.0]
    assert out[3] == pytest.approx(2 * NF4_VALUES[12])  # 1/2: 0.4407 is 0.059 away, 0.5626 is 0.063
    # second block, absmax 1.4: 0.121 -> 0.1609, -0.143 -> -0.1848, 1 -> 1, 0.036 -> 0 (not 0.0796)
    assert out[4:].tolist() == pytest.approx([1.4 * v for v in (NF4_VALUES[9], NF4_VALUES[5], 1.0, 0.0)], rel=1e-6)


def test_format_points_sqnr_order():
    w = torch.randn(128, 128, generator=torch.Generator().manual_seed(2))
    rows = {r["format"]: r for r in format_points(w)}
    assert rows["fp8 e4m3"]["sqnr_db"] > rows["fp8 e5m2"]["sqnr_db"] > rows["NF4"]["sqnr_db"] > 15
    assert rows["NF4"]["bits_per_weight"] == 4.5


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="fmt"):
        fake_quant_fp8(torch.ones(3), "e3m4")
    with pytest.raises(ValueError, match="block_size"):
        fake_quant_nf4(torch.ones(10), block_size=4)
    with pytest.raises(TypeError, match="x"):
        fake_quant_nf4([1.0, 2.0])
