"""Issue 11: each of these was wrong for a new user (a hang, a silent wrong answer, or another
library's error); each now raises ValueError/TypeError naming the argument."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from labkit.quantize import QuantizedConv2d, QuantizedLinear, WeightSpec

NAN_INF = [math.nan, math.inf, -math.inf]


def test_quantized_linear_refuses_a_convolution():
    with pytest.raises(TypeError, match=r"layer must be nn.Linear, got Conv2d"):
        QuantizedLinear(nn.Conv2d(1, 2, 3), WeightSpec())
    with pytest.raises(TypeError, match=r"layer must be nn.Conv2d, got Linear"):
        QuantizedConv2d(nn.Linear(4, 2), WeightSpec())
    with pytest.raises(TypeError, match="spec must be a labkit.quantize.WeightSpec"):
        QuantizedLinear(nn.Linear(4, 2), {"bits": 8})
    assert isinstance(QuantizedLinear(nn.Linear(4, 2), WeightSpec())(torch.ones(1, 4)), torch.Tensor)
