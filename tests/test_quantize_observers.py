"""labkit.quantize.observers: min-max and moving-average equal torch.ao.quantization's observers;
percentile and MSE observers beat min-max where they should; calibrate's errors."""

import warnings

import pytest
import torch
from torch import nn

from labkit.quantize import (
    MinMaxObserver,
    MovingAverageObserver,
    MSEObserver,
    PercentileObserver,
    StaticActivationConfig,
    calibrate,
    make_observer,
    prepare_,
    qrange,
    quantize_dequantize,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.ao import quantization as tq


def batches(gen, n=5, shape=(32, 16)):
    return [torch.randn(shape, generator=gen) * (i + 1) + i * 0.3 for i in range(n)]


def feed(obs, xs):
    for x in xs:
        obs(x)
    return obs


@pytest.mark.parametrize("dtype,qmin,qmax,symmetric", [
    (torch.quint8, 0, 255, False), (torch.qint8, -128, 127, True), (torch.quint8, 0, 15, False), (torch.qint8, -8, 7, True)])
def test_minmax_equals_torch(gen, dtype, qmin, qmax, symmetric):
    xs = batches(gen)
    scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    ref = feed(tq.MinMaxObserver(dtype=dtype, qscheme=scheme, quant_min=qmin, quant_max=qmax), xs)
    ours = feed(MinMaxObserver(), xs)
    bits = (qmax - qmin + 1).bit_length() - 1
    s, z = ours.calculate_qparams(bits=bits, symmetric=symmetric)
    rs, rz = ref.calculate_qparams()
    assert qrange(bits, signed=symmetric) == (qmin, qmax)
    assert torch.allclose(s, rs.reshape(())) and int(z) == int(rz)


def test_per_channel_minmax_equals_torch(gen):
    xs = batches(gen)
    ref = feed(tq.PerChannelMinMaxObserver(ch_axis=1, dtype=torch.qint8, qscheme=torch.per_channel_symmetric), xs)
    ours = feed(MinMaxObserver(axis=1), xs)
    s, z = ours.calculate_qparams(bits=8, symmetric=True)
    rs, rz = ref.calculate_qparams()
    assert s.shape == (16,) and torch.allclose(s, rs) and torch.equal(z.long(), rz.long())


def test_moving_average_equals_torch(gen):
    xs = batches(gen, n=8)
    ref = feed(tq.MovingAverageMinMaxObserver(averaging_constant=0.05, dtype=torch.quint8), xs)
    ours = feed(MovingAverageObserver(averaging_constant=0.05), xs)
    s, z = ours.calculate_qparams(bits=8)
    rs, rz = ref.calculate_qparams()
    assert torch.allclose(s, rs.reshape(())) and int(z) == int(rz)
    assert torch.allclose(ours.min_val, ref.min_val) and torch.allclose(ours.max_val, ref.max_val)


def test_percentile_clips_outliers(gen):
    x = torch.randn(10000, generator=gen)
    x[0] = 100.0  # one outlier
    p = feed(PercentileObserver(percentile=99.9, max_samples=20000, per_batch=20000), [x])
    lo, hi = p.range()
    assert float(hi) == pytest.approx(float(torch.quantile(x, 0.999)), rel=1e-5)
    assert float(lo) == pytest.approx(float(torch.quantile(x, 0.001)), rel=1e-5)
    mm = feed(MinMaxObserver(), [x])
    assert float(mm.max_val) == 100.0 and float(hi) < 5


def test_mse_observer_beats_minmax_on_heavy_tails(gen):
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((20000,))
    mse_obs = feed(MSEObserver(max_samples=20000, per_batch=20000), [x])
    mm_obs = feed(MinMaxObserver(), [x])

    def err(obs):
        s, z = obs.calculate_qparams(bits=4)
        qmin, qmax = qrange(4, signed=False)
        x_hat = (torch.clamp(torch.round(x / s + z), qmin, qmax) - z) * s
        return float(((x - x_hat) ** 2).mean())

    assert err(mse_obs) < 0.8 * err(mm_obs)


def test_reset_and_unobserved():
    obs = MinMaxObserver()
    with pytest.raises(ValueError, match="seen no data"):
        obs.calculate_qparams()
    obs(torch.tensor([1.0, -2.0]))
    assert obs.observed() and obs.batches == 1
    obs.reset()
    assert not obs.observed()


def test_calibrate_records_activation_ranges(gen):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    prepare_(model, StaticActivationConfig())
    data = [(torch.randn(16, 4, generator=gen), torch.zeros(16)) for _ in range(3)]
    assert calibrate(model, data) == 48
    first = model[0].act.observer
    assert float(first.min_val) == pytest.approx(min(float(x.min()) for x, _ in data))
    assert float(model[2].act.observer.min_val) >= 0  # after a ReLU
    assert calibrate(model, data, batches=1) == 16


def test_quantize_dequantize_agrees_with_observer_qparams(gen):
    x = torch.randn(100, generator=gen)
    s, z = feed(MinMaxObserver(), [x]).calculate_qparams(bits=6)
    qmin, qmax = qrange(6, signed=False)
    manual = (torch.clamp(torch.round(x * (1 / s) + z), qmin, qmax) - z) * s
    assert torch.allclose(quantize_dequantize(x, bits=6), manual)


def test_bad_input():
    with pytest.raises(ValueError, match="kind must be one of .*got 'max'"):
        make_observer("max")
    with pytest.raises(ValueError, match="averaging_constant"):
        MovingAverageObserver(averaging_constant=0)
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(percentile=20)
    with pytest.raises(ValueError, match="steps"):
        MSEObserver(steps=0)
    with pytest.raises(TypeError, match="axis must be an int"):
        MinMaxObserver(axis="0")
    with pytest.raises(ValueError, match="axis 3 does not exist"):
        MinMaxObserver(axis=3)(torch.ones(2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        MinMaxObserver()(torch.ones(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="bits must be an int between 1 and 16"):
        feed(MinMaxObserver(), [torch.ones(3)]).calculate_qparams(bits=17)
    plain = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no observers to calibrate"):
        calibrate(plain, [torch.ones(1, 2)])
    prepared = prepare_(nn.Sequential(nn.Linear(2, 2)), StaticActivationConfig())
    with pytest.raises(ValueError, match="batches must be an int >= 1"):
        calibrate(prepared, [torch.ones(1, 2)], batches=0)
    with pytest.raises(ValueError, match="no batches"):
        calibrate(prepared, [])
    with pytest.raises(TypeError, match="data must be an iterable"):
        calibrate(prepared, 3)
