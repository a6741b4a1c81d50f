"""Packing low-bit codes into bytes: two 4-bit codes a byte, four 2-bit codes, eight 1-bit ones.

A uint8 holds 8 bits, so ``8 // bits`` codes fit in one byte. Code ``i`` of a byte goes to bits
``bits*i .. bits*i + bits - 1``: the first code in the low bits::

    byte = (c0 & 0xF) | (c1 & 0xF) << 4            # two 4-bit codes
    c0 = byte & 0xF          c1 = byte >> 4          # and back

Which code goes where is a *contract between the packer and the kernel that unpacks*, not a law
of nature: formats differ, and packing for one and unpacking with another silently scrambles
the weights. This layout is PyTorch's ``torch.quint4x2`` (first value in the low nibble; tested
against it in ``tests/test_quantize_maths.py``). Others differ: torchao's tinygemm int4 layout
packs ``w[2i] << 4 | w[2i+1]`` (first value high) before ``_convert_weight_to_int4pack``
reorders it for the kernel, and GGML's Q4_0 pairs ``x[j]`` (low nibble) with ``x[j + 16]``
(high nibble) inside each block of 32.

Signed codes are stored in two's complement (``-1`` as 4 bits is ``0b1111``) and sign-extended
when unpacked. This is where a 4-bit model's "8x smaller than fp32" comes from on disk; there is
no 4-bit dtype to compute in on a CPU, so the codes are unpacked before use.
Used by ``labkit.quantize.modules`` and ``notebooks/06_quantization.ipynb`` (exercise 06.3).
"""

from __future__ import annotations

import torch

from labkit import _args

PACKABLE_BITS = (1, 2, 4, 8)


def _check_pack_bits(bits) -> int:
    return _args.choice("bits", _args.integer("bits", bits), PACKABLE_BITS)


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes needed for ``numel`` codes of ``bits`` bits (the last byte may be partly empty)."""
    numel = _args.non_negative_int("numel", numel)
    per_byte = 8 // _check_pack_bits(bits)
    return -(-numel // per_byte)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flatten integer ``codes`` and pack them ``8 // bits`` to a byte: a 1-D uint8 tensor.

    Codes must fit in ``bits`` bits, unsigned (``0..2**bits-1``) or signed (``-2**(bits-1)..``).
    """
    _args.tensor("codes", codes, dtype="integer")
    _check_pack_bits(bits)
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < -(2 ** (bits - 1)) or int(flat.max()) > 2**bits - 1):
        raise ValueError(f"codes must fit in {bits} bits, got values in [{int(flat.min())}, {int(flat.max())}]")
    per_byte = 8 // bits
    pad = (-flat.numel()) % per_byte
    flat = torch.cat([flat, flat.new_zeros(pad)]) & (2**bits - 1)  # two's complement for negatives
    lanes = flat.reshape(-1, per_byte)
    shifts = torch.arange(per_byte, device=flat.device, dtype=torch.int32) * bits
    return (lanes << shifts).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, *, numel: int, signed: bool = False) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` codes, int8 if ``signed`` else uint8."""
    _args.tensor("packed", packed, dtype=torch.uint8)
    _check_pack_bits(bits)
    numel = _args.non_negative_int("numel", numel)
    _args.boolean("signed", signed)
    per_byte = 8 // bits
    if numel > packed.numel() * per_byte:
        raise ValueError(f"numel {numel} is more than {packed.numel()} bytes hold at {bits} bits ({packed.numel() * per_byte})")
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.int32) * bits
    codes = (packed.reshape(-1, 1).to(torch.int32) >> shifts) & (2**bits - 1)
    codes = codes.reshape(-1)[:numel]
    if signed:
        codes = torch.where(codes >= 2 ** (bits - 1), codes - 2**bits, codes)
        return codes.to(torch.int8)
    return codes.to(torch.uint8)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte (:func:`pack_bits` with ``bits=4``)."""
    return pack_bits(codes, 4)


def unpack_int4(packed: torch.Tensor, *, numel: int, signed: bool = False) -> torch.Tensor:
    """The first ``numel`` 4-bit codes of ``packed`` (:func:`unpack_bits` with ``bits=4``)."""
    return unpack_bits(packed, 4, numel=numel, signed=signed)
