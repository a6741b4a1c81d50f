"""labkit.prune.sparse: sparse formats round-trip exactly and shrink the file as the formulas say."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from labkit import prune
from labkit.metrics import size_on_disk
from labkit.models import SmallCNN
from labkit.prune.sparse import FORMATS, csr_arrays, pack_bits, unpack_bits


def test_pack_bits_by_hand():
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    packed = pack_bits(mask)
    assert packed.tolist() == [0b10110000, 0b10000000]
    assert torch.equal(unpack_bits(packed, 9), mask)
    with pytest.raises(ValueError, match="numel"):
        unpack_bits(packed, 17)
    with pytest.raises(TypeError, match="bool"):
        pack_bits(torch.ones(3))


def test_csr_arrays_equal_torch_to_sparse_csr():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 9, generator=g) * (torch.rand(6, 9, generator=g) < 0.3)
    m[2] = 0  # an empty row
    crow, col, values = csr_arrays(m)
    with warnings.catch_warnings():  # torch calls its CSR support "beta"
        warnings.simplefilter("ignore", UserWarning)
        ref = m.to_sparse_csr()
    assert torch.equal(crow.long(), ref.crow_indices()) and torch.equal(col.long(), ref.col_indices())
    assert torch.equal(values, ref.values())
    with pytest.raises(ValueError, match="matrix must have 2 dimensions"):
        csr_arrays(torch.ones(3))


@settings(max_examples=30, deadline=None)
@given(shape=st.sampled_from([(7,), (5, 3), (4, 2, 3, 3), (1, 1)]), density=st.floats(0, 1),
       seed=st.integers(0, 1000), fmt=st.sampled_from(FORMATS))
def test_every_format_round_trips_exactly(shape, density, seed, fmt):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)
    state = {"w": t, "steps": torch.tensor(3)}
    back = prune.dense_state_dict(prune.sparse_state_dict(state, format=fmt, min_sparsity=0.0))
    assert torch.equal(back["w"], t) and back["w"].shape == t.shape
    assert torch.equal(back["steps"], state["steps"])


def test_sparse_file_shrinks_as_the_formulas_say():
    torch.manual_seed(0)
    layer = nn.Linear(1000, 1000, bias=False)
    prune.magnitude_prune_(layer, 0.9)
    prune.make_permanent_(layer)
    n = 1000 * 1000
    dense = size_on_disk(layer)
    sizes = {f: size_on_disk(prune.sparse_state_dict(layer, format=f)) for f in FORMATS}
    assert dense == pytest.approx(4 * n, rel=0.01)
    assert sizes["bitmask"] == pytest.approx(n / 8 + 4 * 0.1 * n, rel=0.02)  # 0.525 n bytes
    assert sizes["csr"] == pytest.approx(8 * 0.1 * n + 4 * 1001, rel=0.02)  # 0.8 n bytes
    assert sizes["coo"] == pytest.approx((4 + 2 * 8) * 0.1 * n, rel=0.02)  # 2 n bytes
    assert sizes["bitmask"] < sizes["csr"] < sizes["coo"] < dense


def test_pruned_model_reloads_from_sparse_storage():
    torch.manual_seed(0)
    model = SmallCNN(widths=(8, 16)).eval()
    prune.magnitude_prune_(model, 0.8, scope="global")
    prune.make_permanent_(model)
    x = model.example_inputs(4)[0]
    sparse = prune.sparse_state_dict(model)
    assert isinstance(sparse["classifier.1.weight"], dict)  # pruned weights are encoded
    assert isinstance(sparse["features.1.running_var"], torch.Tensor)  # statistics stay dense
    fresh = SmallCNN(widths=(8, 16)).eval()
    fresh.load_state_dict(prune.dense_state_dict(sparse))
    assert torch.equal(fresh(x), model(x))
    assert size_on_disk(sparse) < 0.5 * size_on_disk(model)


def test_bad_arguments():
    model = SmallCNN(widths=(4, 4))
    with pytest.raises(ValueError, match="format"):
        prune.sparse_state_dict(model, format="zip")
    with pytest.raises(ValueError, match="min_sparsity"):
        prune.sparse_state_dict(model, min_sparsity=2)
    with pytest.raises(TypeError, match="state dict"):
        prune.sparse_state_dict([1, 2])
    prune.magnitude_prune_(model, 0.5)
    with pytest.raises(ValueError, match="make_permanent_"):
        prune.sparse_state_dict(model)
    with pytest.raises(ValueError, match="layout"):
        prune.dense_state_dict({"w": {"layout": "rle"}})
    with pytest.raises(TypeError, match="sparse_state"):
        prune.dense_state_dict([1])


@pytest.mark.parametrize("batch_shape", [(1,), (5,), (2, 3)])
def test_csr_linear_equals_the_dense_layer(batch_shape, gen):
    dense = nn.Linear(40, 24)
    prune.magnitude_prune_(dense, 0.9)
    prune.make_permanent_(dense)
    sparse = prune.CsrLinear(dense)
    assert sparse.nnz == int((dense.weight != 0).sum()) == 96  # 10% of 960 weights
    x = torch.randn(*batch_shape, 40, generator=gen)
    with torch.no_grad():
        assert torch.allclose(sparse(x), dense(x), atol=1e-5)
    no_bias = nn.Linear(40, 24, bias=False)
    with torch.no_grad():
        assert torch.allclose(prune.CsrLinear(no_bias)(x), no_bias(x), atol=1e-5)
    with pytest.raises(TypeError, match="linear"):
        prune.CsrLinear(nn.Conv2d(1, 1, 1))
