"""labkit.quantize.maths and .packing: checked against torch.quantize_per_tensor / _per_channel,
hand-worked examples and hypothesis properties."""

import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.quantize import (
    choose_qparams,
    code_dtype,
    dequantize,
    error_vs_bits,
    maths,
    pack_bits,
    pack_int4,
    packed_nbytes,
    qparams_from_minmax,
    qrange,
    quantize,
    quantize_dequantize,
    sqnr_db,
    unpack_bits,
    unpack_int4,
)
from labkit.quantize.maths import _fma_float32, fma_dtype

FLOATS = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


def torch_codes(x, scale, zp, dtype):
    with warnings.catch_warnings():  # torch's quantized dtypes are deprecated but still the reference
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(x, scale, zp, dtype).int_repr()


def torch_channel_codes(x, scales, zps, axis, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.quantize_per_channel(x, scales.double(), zps.long(), axis, dtype).int_repr()


# --- hand-worked examples ----------------------------------------------------------------------

def test_qrange_and_dtype():
    assert qrange(8, signed=False) == (0, 255)
    assert qrange(8, signed=True) == (-128, 127)
    assert qrange(4, signed=True) == (-8, 7)
    assert qrange(1, signed=False) == (0, 1)
    assert code_dtype(4, signed=True) == torch.int8 and code_dtype(8, signed=False) == torch.uint8
    assert code_dtype(12, signed=True) == torch.int16 and code_dtype(16, signed=False) == torch.int32


def test_affine_qparams_by_hand():
    # range [-1, 2] on 0..255: s = 3/255, z = 0 - round(-1 / s) = 85
    s, z = qparams_from_minmax(-1.0, 2.0, bits=8)
    assert s.item() == pytest.approx(3 / 255) and z.item() == 85
    # a positive-only range is stretched to include 0, so z = 0
    s, z = qparams_from_minmax(0.5, 2.0, bits=4)
    assert s.item() == pytest.approx(2 / 15) and z.item() == 0


def test_symmetric_qparams_by_hand():
    s, z = qparams_from_minmax(-3.0, 1.0, bits=8, symmetric=True)
    assert s.item() == pytest.approx(3 / 127.5) and z.item() == 0
    s, z = qparams_from_minmax(-3.0, 1.0, bits=8, symmetric=True, signed=False)
    assert z.item() == 128  # PyTorch's quint8 symmetric zero-point


def test_symmetric_127_5_clips_plus_max_and_narrow_range_does_not():
    x = torch.tensor([-7.96875, 0.0, 7.96875])  # max = 127.5 / 16: every step below is exact
    s, z = choose_qparams(x, bits=8, symmetric=True)
    assert s.item() == 1 / 16  # max / 127.5
    assert quantize(x, s, z, bits=8, signed=True).tolist() == [-128, 0, 127]  # +127.5 rounds to 128, clips
    s, z = choose_qparams(x, bits=8, symmetric=True, narrow_range=True)
    assert s.item() == pytest.approx(7.96875 / 127)
    codes = quantize(x, s, z, bits=8, signed=True, narrow_range=True)
    assert codes.tolist() == [-127, 0, 127]  # -max and +max both on the grid
    assert quantize(torch.tensor([-100.0]), s, z, bits=8, signed=True, narrow_range=True).item() == -127
    x_hat = quantize_dequantize(x, bits=8, symmetric=True, narrow_range=True)
    assert torch.allclose(x_hat, x, atol=1e-6)


def test_narrow_range_scale_equals_torch_observer_with_quant_min_minus_127(gen):
    x = torch.randn(300, generator=gen) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs = torch.ao.quantization.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                                   quant_min=-127, quant_max=127)
        obs(x)
        ref_s, ref_z = obs.calculate_qparams()
    s, z = choose_qparams(x, bits=8, symmetric=True, narrow_range=True)
    assert s.item() == pytest.approx(ref_s.item(), rel=1e-6) and z.item() == ref_z.item() == 0
    assert torch.equal(quantize(x, s, z, bits=8, signed=True, narrow_range=True), torch_codes(x, s.item(), 0, torch.qint8))


def test_narrow_range_needs_symmetric_and_a_bool():
    with pytest.raises(ValueError, match="narrow_range"):
        choose_qparams(torch.randn(5), symmetric=False, narrow_range=True)
    with pytest.raises(TypeError, match="narrow_range"):
        quantize(torch.randn(5), 0.1, 0, signed=True, narrow_range=1)


def test_quantize_vector_by_hand():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.26, 0.75, 9.0])
    codes = quantize(x, 0.25, 4, bits=4)  # x/s + z = -4+4, -2+4, 4, 1.04+4, 3+4, 36+4 -> clamp 15
    assert codes.tolist() == [0, 2, 4, 5, 7, 15]
    assert dequantize(codes, 0.25, 4).tolist() == [-1.0, -0.5, 0.0, 0.25, 0.75, 2.75]


def test_halves_round_to_even_like_torch():
    x = torch.tensor([-2.75, -1.25, -0.75, -0.25, 0.25, 0.75, 1.25, 1.75, 2.25])  # all exactly k + 1/2 steps of 0.5
    ours = quantize(x, 0.5, 0, bits=8, signed=True)
    assert ours.tolist() == [-6, -2, -2, 0, 0, 2, 2, 4, 4]
    assert torch.equal(ours, torch_codes(x, 0.5, 0, torch.qint8))
    assert torch.equal(quantize(x, 0.5, 10, bits=8), torch_codes(x, 0.5, 10, torch.quint8))


# --- against PyTorch -----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(FLOATS, min_size=1, max_size=64), st.floats(1e-3, 10.0), st.integers(0, 255))
def test_per_tensor_codes_equal_torch_quint8(values, scale, zp):
    x = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(quantize(x, scale, zp, bits=8).to(torch.uint8), torch_codes(x, scale, zp, torch.quint8))


@settings(max_examples=60, deadline=None)
@given(st.lists(FLOATS, min_size=1, max_size=64), st.floats(1e-3, 10.0), st.integers(-128, 127))
def test_per_tensor_codes_equal_torch_qint8(values, scale, zp):
    x = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(quantize(x, scale, zp, bits=8, signed=True), torch_codes(x, scale, zp, torch.qint8))


@settings(max_examples=30, deadline=None)
@given(st.integers(-40, 40), st.integers(-6, 2), st.integers(0, 255))
def test_exact_halves_equal_torch(k, log2_scale, zp):
    scale = 2.0**log2_scale
    x = torch.tensor([(k + 0.5) * scale, (-k - 0.5) * scale])
    assert torch.equal(quantize(x, scale, zp, bits=8), torch_codes(x, scale, zp, torch.quint8))


def _nearest_float32(value: Fraction) -> float:
    """The float32 nearest to an exact rational (ties to the even mantissa): the reference."""
    guess = np.float32(float(value))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    best = min(candidates, key=lambda f: (abs(Fraction(float(f)) - value), int(np.array(f).view(np.int32)) & 1))
    return float(best)


def test_mps_rounds_in_float32_and_other_devices_in_float64():
    assert fma_dtype("mps") == torch.float32
    assert fma_dtype("cpu") == fma_dtype("cuda") == torch.float64


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e4, 1e4, width=32), st.floats(2.0**-10, 1e3, width=32), st.integers(-255, 255))
def test_float32_fma_rounds_once_like_exact_arithmetic(a, b, c):
    ours = _fma_float32(torch.tensor([a]), torch.tensor([b]), torch.tensor([float(c)])).item()
    assert ours == _nearest_float32(Fraction(a) * Fraction(b) + c)


def test_float32_fma_on_a_near_tie_by_hand():
    a, b, c = 0.04563606530427933, 19.51606559753418, -126.0  # exact a*b + c lies 1e-13 from a midpoint
    assert _fma_float32(torch.tensor([a]), torch.tensor([b]), torch.tensor([c])).item() == -125.10936737060547
    assert _nearest_float32(Fraction(a) * Fraction(b) + Fraction(c)) == -125.10936737060547


@settings(max_examples=60, deadline=None)
@given(st.lists(FLOATS, min_size=1, max_size=64), st.floats(1e-3, 10.0), st.integers(1, 255))
def test_the_mps_path_without_float64_equals_torch(values, scale, zp):
    """Mock the device type: with fma_dtype -> float32 (as on MPS) and float64 forbidden, the
    codes still equal PyTorch's CPU kernel."""
    x = torch.tensor(values, dtype=torch.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(maths, "fma_dtype", lambda device_type: torch.float32)
        mp.setattr(torch.Tensor, "double", lambda self: pytest.fail("float64 used on the MPS path"))
        ours = quantize(x, scale, zp, bits=8)
    assert torch.equal(ours, torch_codes(x, scale, zp, torch.quint8))


@pytest.mark.parametrize("shape,axis", [((6, 33), 0), ((6, 33), 1), ((4, 3, 5, 5), 1), ((4, 3, 5, 5), -1)])
def test_per_channel_codes_equal_torch(shape, axis, gen):
    x = torch.randn(shape, generator=gen) * 3
    s, z = choose_qparams(x, bits=8, granularity="per_channel", axis=axis)
    ours = quantize(x, s, z, bits=8, axis=axis)
    assert torch.equal(ours, torch_channel_codes(x, s, z, axis % x.dim(), torch.quint8))
    s, z = choose_qparams(x, bits=8, symmetric=True, granularity="per_channel", axis=axis)
    ours = quantize(x, s, z, bits=8, signed=True, axis=axis)
    assert torch.equal(ours, torch_channel_codes(x, s, z, axis % x.dim(), torch.qint8))


def test_dequantize_equals_torch(gen):
    x = torch.randn(50, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.quantize_per_tensor(x, 0.037, 120, torch.quint8).dequantize()
    assert torch.equal(dequantize(quantize(x, 0.037, 120), 0.037, 120), ref)


# --- properties --------------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(st.lists(FLOATS, min_size=2, max_size=64), st.integers(2, 16), st.booleans())
def test_error_at_most_half_a_step_inside_the_range(values, bits, symmetric):
    x = torch.tensor(values)
    s, z = choose_qparams(x, bits=bits, symmetric=symmetric)
    x_hat = dequantize(quantize(x, s, z, bits=bits, signed=symmetric), s, z)
    float_slack = 4 * torch.finfo(torch.float32).eps * x.abs() + 1e-6  # x_hat is itself a float32
    assert bool(((x - x_hat).abs() <= s / 2 + float_slack).all())


@settings(max_examples=60, deadline=None)
@given(st.lists(FLOATS, min_size=1, max_size=64), st.floats(1e-2, 1.0), st.integers(1, 8))
def test_clamping_outside_the_range(values, scale, bits):
    x = torch.tensor(values)
    qmin, qmax = qrange(bits, signed=False)
    codes = quantize(x, scale, 0, bits=bits).int()
    assert bool(((codes >= qmin) & (codes <= qmax)).all())
    assert bool((codes[x > (qmax + 0.5) * scale] == qmax).all())
    assert bool((codes[x < -0.5 * scale] == qmin).all())


def test_per_group_with_whole_rows_equals_per_channel(gen):
    w = torch.randn(8, 16, generator=gen)
    a = quantize_dequantize(w, bits=4, symmetric=True, granularity="per_group", group_size=16)
    b = quantize_dequantize(w, bits=4, symmetric=True, granularity="per_channel", axis=0)
    assert torch.equal(a, b)


def test_finer_granularity_lowers_the_error(gen):
    w = torch.randn(16, 64, generator=gen) * torch.logspace(-2, 1, 16).unsqueeze(1)  # rows of very different sizes
    errs = {g: float(((w - quantize_dequantize(w, bits=4, symmetric=True, granularity=g, group_size=16 if g == "per_group" else None)) ** 2).mean())
            for g in ("per_tensor", "per_channel", "per_group")}
    assert errs["per_group"] <= errs["per_channel"] < errs["per_tensor"]


def test_sqnr_grows_about_six_db_per_bit(gen):
    x = torch.rand(20000, generator=gen) * 2 - 1
    rows = error_vs_bits(x, (4, 6, 8))
    slopes = [(b["sqnr_db"] - a["sqnr_db"]) / 2 for a, b in zip(rows, rows[1:])]
    assert all(5.5 < s < 6.5 for s in slopes)
    assert rows[0]["mse"] > rows[-1]["mse"]
    assert sqnr_db(x, x.clone()) == float("inf")


# --- packing -----------------------------------------------------------------------------------

def test_pack_two_4bit_values_by_hand():
    assert pack_int4(torch.tensor([1, 2])).tolist() == [0x21]
    assert pack_int4(torch.tensor([-1, 7, 3])).tolist() == [0x7F, 0x03]
    assert unpack_int4(torch.tensor([0x7F, 0x03], dtype=torch.uint8), numel=3, signed=True).tolist() == [-1, 7, 3]


def _torch_quint4x2_bytes(codes: torch.Tensor) -> torch.Tensor:
    """PyTorch's own 4-bit packing: quantize the codes themselves (scale 1, zero-point 0)."""
    with warnings.catch_warnings():  # quantized dtypes are deprecated, still the reference here
        warnings.simplefilter("ignore", UserWarning)
        return torch.quantize_per_tensor(codes.float(), 1.0, 0, torch.quint4x2).int_repr()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=1, max_size=41))
def test_pack_int4_matches_torch_quint4x2(values):
    codes = torch.tensor(values)
    theirs = _torch_quint4x2_bytes(codes)
    assert pack_int4(codes).tolist() == theirs.tolist()  # first code in the low nibble, as torch
    assert unpack_int4(theirs, numel=len(values)).tolist() == values


def test_other_nibble_orders_do_not_round_trip():
    """The layout is a contract: tinygemm's (first high) or GGML Q4_0's (x[j], x[j+16]) differ."""
    codes = torch.arange(32) % 16
    tinygemm = (codes[0::2] << 4 | codes[1::2]).to(torch.uint8)
    ggml_q4_0 = (codes[:16] | codes[16:] << 4).to(torch.uint8)
    assert unpack_int4(pack_int4(codes), numel=32).tolist() == codes.tolist()
    assert unpack_int4(tinygemm, numel=32).tolist() != codes.tolist()
    assert unpack_int4(ggml_q4_0, numel=32).tolist() != codes.tolist()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.booleans(), st.data())
def test_pack_unpack_round_trip(bits, signed, data):
    lo, hi = qrange(bits, signed=signed)
    values = data.draw(st.lists(st.integers(lo, hi), min_size=0, max_size=70))
    codes = torch.tensor(values, dtype=torch.int32)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(len(values), bits)
    assert unpack_bits(packed, bits, numel=len(values), signed=signed).tolist() == values


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [0, 17, -3])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match="bits must be an int between 1 and 16"):
        quantize(torch.ones(3), 0.1, 0, bits=bits)
    with pytest.raises(ValueError, match="bits"):
        choose_qparams(torch.ones(3), bits=bits)


@pytest.mark.parametrize("bits", [2.5, True, "8"])
def test_bits_of_the_wrong_type(bits):
    with pytest.raises(TypeError, match="bits must be an int"):
        qrange(bits, signed=False)


def test_axis_that_does_not_exist():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="axis 2 does not exist"):
        choose_qparams(x, granularity="per_channel", axis=2)
    with pytest.raises(ValueError, match="axis -3 does not exist"):
        quantize(x, torch.ones(2), torch.zeros(2), axis=-3)


@pytest.mark.parametrize("scale", [0.0, -0.1, float("nan"), float("inf")])
def test_scale_must_be_positive(scale):
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        quantize(torch.ones(3), scale, 0)
    with pytest.raises(ValueError, match="scale"):
        dequantize(torch.ones(3, dtype=torch.int32), scale, 0)


def test_other_bad_input():
    x = torch.ones(4, 6)
    with pytest.raises(ValueError, match="zero_point must lie in"):
        quantize(x, 0.1, 300)
    with pytest.raises(ValueError, match="group_size 4 must divide"):
        choose_qparams(x, granularity="per_group", group_size=4)
    with pytest.raises(ValueError, match="granularity must be one of"):
        choose_qparams(x, granularity="per_row")
    with pytest.raises(ValueError, match="one value per channel"):
        quantize(x, torch.ones(3), torch.zeros(3), axis=0)
    with pytest.raises(ValueError, match="single value per tensor"):
        quantize(x, torch.ones(4), torch.zeros(4))
    with pytest.raises(TypeError, match="floating-point"):
        quantize(torch.ones(3, dtype=torch.int64), 0.1, 0)
    with pytest.raises(TypeError, match="codes must be an integer tensor"):
        dequantize(torch.ones(3), 0.1, 0)
    with pytest.raises(ValueError, match="min_val must be <= max_val"):
        qparams_from_minmax(1.0, -1.0)
    with pytest.raises(ValueError, match="empty"):
        choose_qparams(torch.ones(0))
    with pytest.raises(ValueError, match="bits must be one of"):
        pack_bits(torch.ones(3, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="must fit in 4 bits"):
        pack_int4(torch.tensor([16]))
    with pytest.raises(ValueError, match="numel 5 is more"):
        unpack_int4(torch.zeros(2, dtype=torch.uint8), numel=5)
    with pytest.raises(TypeError, match="packed must be a tensor of dtype torch.uint8"):
        unpack_int4(torch.zeros(2, dtype=torch.int8), numel=2)
    with pytest.raises(ValueError, match="shapes differ"):
        sqnr_db(torch.ones(2), torch.ones(3))
