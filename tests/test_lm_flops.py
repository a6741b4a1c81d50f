"""labkit.lm.flops: the FLOPs-per-token formulas against torch.utils.flop_counter, and MFU."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from labkit.lm import flops as FL
from labkit.lm import model as M


def _counted(model, idx, *, backward=False) -> int:
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:  # the math backend's bmm calls are counted
        out = model(idx)
        if backward:
            out.sum().backward()
    return int(counter.get_total_flops())


@pytest.mark.parametrize("name,batch,seq_len", [("tiny", 2, 64), ("tiny", 3, 17), ("draft", 1, 40)])
def test_formulas_equal_the_flop_counter(gen, name, batch, seq_len):
    torch.manual_seed(0)
    model = M.GPT(M.get_config(name))
    idx = torch.randint(0, 256, (batch, seq_len), generator=gen)
    tokens = batch * seq_len
    assert _counted(model, idx) == tokens * FL.forward_flops_per_token(model.config, seq_len)
    assert _counted(model, idx, backward=True) == tokens * FL.training_flops_per_token(model.config, seq_len)


def test_matmul_params_by_hand_and_mfu():
    c = M.get_config("course")
    assert FL.matmul_params(c) == 4 * 12 * 128 * 128 + 128 * 256
    assert FL.forward_flops_per_token(c, 128) == 2 * FL.matmul_params(c) + 4 * 4 * 128 * 128
    per_token = FL.training_flops_per_token(c, 128)
    assert FL.mfu(1000.0, c, 128, 1e12) == pytest.approx(1000.0 * per_token / 1e12)
    with pytest.raises(ValueError, match="seq_len"):
        FL.forward_flops_per_token(c, 129)
    with pytest.raises(ValueError, match="peak_flops"):
        FL.mfu(1.0, c, 128, 0.0)
    with pytest.raises(TypeError, match="config"):
        FL.matmul_params("course")


def test_cpu_flash_attention_is_invisible_to_the_flop_counter(gen):
    """What the module docstring warns about: on a CPU, without the math backend, the counter
    sees only the weight matmuls (if a torch release starts counting it, update the docstring)."""
    torch.manual_seed(0)
    model = M.GPT(M.get_config("tiny"))
    idx = torch.randint(0, 256, (2, 64), generator=gen)
    counter = FlopCounterMode(display=False)
    with counter:
        model(idx)
    assert counter.get_total_flops() == 2 * 64 * 2 * FL.matmul_params(model.config)
