"""Sparse storage and a sparse layer: where unstructured sparsity pays off.

A dense float32 tensor of ``n`` weights costs ``4n`` bytes whatever its zeros. Storing only the
``nnz`` non-zeros needs their values *and* where they are:

* ``"coo"`` (``Tensor.to_sparse``): an int64 index per dimension -> ``nnz * (4 + 8 * ndim)``
  bytes. At 90% sparsity a 2-D weight is ``2n`` bytes: only 2x smaller; at 50% it is *bigger*.
* ``"csr"`` (compressed sparse rows, int32 indices): ``nnz * (4 + 4) + 4 * (rows + 1)`` ->
  ``0.8n`` at 90% sparsity (5x smaller).
* ``"bitmask"``: one bit per weight (``n / 8`` bytes) plus the values (``4 nnz``) ->
  ``0.525n`` at 90% sparsity (7.6x smaller), and never much worse than dense.

:func:`sparse_state_dict` encodes every float tensor with at least ``min_sparsity`` zeros;
:func:`dense_state_dict` decodes it for ``model.load_state_dict``. Measure files with
``labkit.metrics.size_on_disk``.

Speed is another matter. A dense kernel multiplies zeros as fast as anything else, so zeros alone
never speed it up; a *sparse* kernel skips them but pays for reading indices and for irregular
memory access. :class:`CsrLinear` runs a Linear layer through PyTorch's CSR kernel. It can win
where the layer is memory-bound - batch 1, a weight matrix bigger than the caches, each weight
used once per call (Han et al.'s Deep Compression, ICLR 2016, measured 3-4x per pruned
fully connected layer this way). At large batch the dense kernel reuses each weight many times
and runs near the CPU's peak; the sparse kernel then wins only while its loss of efficiency is
smaller than the ``1 / density`` work it skips - a race to measure, not to assume. Used in ``notebooks/05_pruning.ipynb``; tested in
``tests/test_prune_sparse.py``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from labkit import _args

FORMATS = ("bitmask", "csr", "coo")
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, 8 flags a byte, most significant bit first (padded with 0)."""
    _args.tensor("mask", mask, dtype="bool")
    flat = mask.flatten().cpu()
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8).to(torch.uint8)
    return (flat * _BITS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` flags as a flat bool tensor."""
    _args.tensor("packed", packed, dtype=torch.uint8)
    _args.integer("numel", numel)
    if numel < 0 or numel > 8 * packed.numel():
        raise ValueError(f"numel must be in [0, {8 * packed.numel()}], got {numel}")
    return (packed[:, None] & _BITS).ne(0).flatten()[:numel]


class CsrLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored in CSR (``torch.sparse_csr``) and multiplied by
    PyTorch's sparse kernel: work and memory traffic proportional to the non-zeros, ``nnz``.

    Built from an ``nn.Linear`` (its zeros are whatever pruning left); inference only.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and not the learner's problem
            warnings.simplefilter("ignore", UserWarning)
            self.weight = linear.weight.detach().to_sparse_csr()  # a plain attribute: sparse tensors are not Parameters
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    @property
    def nnz(self) -> int:
        return int(self.weight.values().numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.weight @ x.reshape(-1, self.in_features).T).T  # sparse (out, in) @ dense (in, batch)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"


def csr_arrays(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compressed sparse rows of a 2-D tensor, by hand: ``(crow, col, values)`` (int32 indices).

    ``values`` are the non-zeros row by row, ``col`` their columns, and row ``r`` owns
    ``values[crow[r]:crow[r+1]]`` - the same arrays as ``matrix.to_sparse_csr()``.
    """
    _args.tensor("matrix", matrix, ndim=2)
    nonzero = matrix != 0
    crow = torch.zeros(matrix.shape[0] + 1, dtype=torch.int32)
    crow[1:] = nonzero.sum(1).cumsum(0)
    return crow, nonzero.nonzero()[:, 1].to(torch.int32), matrix[nonzero].clone()


def _encode(t: torch.Tensor, fmt: str) -> dict:
    t = t.detach().cpu()
    if fmt == "coo":
        return {"layout": "coo", "tensor": t.to_sparse().coalesce()}
    if fmt == "csr":
        crow, col, values = csr_arrays(t.reshape(t.shape[0], -1))
        return {"layout": "csr", "shape": tuple(t.shape), "crow": crow, "col": col, "values": values}
    mask = t != 0
    return {"layout": "bitmask", "shape": tuple(t.shape), "bits": pack_bits(mask), "values": t[mask].clone()}


def _decode(entry: dict) -> torch.Tensor:
    layout = entry.get("layout")
    if layout == "coo":
        return entry["tensor"].to_dense()
    if layout == "csr":
        shape, crow = entry["shape"], entry["crow"].long()
        rows = torch.repeat_interleave(torch.arange(shape[0]), crow[1:] - crow[:-1])
        out = torch.zeros(shape[0], math.prod(shape[1:]), dtype=entry["values"].dtype)
        out[rows, entry["col"].long()] = entry["values"]
        return out.reshape(shape)
    if layout == "bitmask":
        shape = entry["shape"]
        numel = math.prod(shape)
        mask = unpack_bits(entry["bits"], numel)
        out = torch.zeros(numel, dtype=entry["values"].dtype)
        out[mask] = entry["values"]
        return out.reshape(shape)
    raise ValueError(f"unknown sparse layout {layout!r}: expected one of {FORMATS}")


def sparse_state_dict(model_or_state, *, format: str = "bitmask", min_sparsity: float = 0.3) -> dict:
    """The state dict with each float tensor of at least ``min_sparsity`` zeros stored sparsely.

    Other tensors (biases, BatchNorm statistics, dense layers) stay as they are. Save the result
    with ``torch.save``; restore with :func:`dense_state_dict`.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    _args.fraction("min_sparsity", min_sparsity)
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    if not isinstance(state, Mapping):
        raise TypeError(f"model_or_state must be an nn.Module or a state dict, got {type(model_or_state).__name__}")
    if any(".parametrizations." in k or k.startswith("parametrizations.") for k in state):
        raise ValueError("the model still has masks (parametrizations): call labkit.prune.make_permanent_ first")
    out = {}
    for name, t in state.items():
        floating = isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim >= 1 and t.numel() > 0
        if floating and float((t == 0).float().mean()) >= min_sparsity:
            out[name] = _encode(t, format)
        else:
            out[name] = t
    return out


def dense_state_dict(sparse_state: Mapping) -> dict[str, torch.Tensor]:
    """Decode :func:`sparse_state_dict`'s output back to ordinary dense tensors."""
    _args.mapping("sparse_state", sparse_state, what="a dict (from sparse_state_dict)")
    return {k: _decode(v) if isinstance(v, dict) else v for k, v in sparse_state.items()}
