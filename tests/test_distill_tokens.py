"""Token-level KD (labkit.distill.tokens) against F.kl_div, a hand-worked example and the plain CE."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.distill.tokens import batch_loss, token_distillation_loss, token_kl


def logits(seed, shape=(2, 3, 5)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_forward_and_reverse_kl_match_kl_div(tau):
    zs, zt = logits(0), logits(1)
    b, t, v = zs.shape
    log_s = F.log_softmax(zs.reshape(-1, v) / tau, -1)
    log_t = F.log_softmax(zt.reshape(-1, v) / tau, -1)
    forward = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * tau**2     # KL(t || s)
    reverse = F.kl_div(log_t, log_s, reduction="batchmean", log_target=True) * tau**2     # KL(s || t)
    torch.testing.assert_close(token_kl(zs, zt, temperature=tau, direction="forward"), forward)
    torch.testing.assert_close(token_kl(zs, zt, temperature=tau, direction="reverse"), reverse)
    assert not torch.allclose(forward, reverse)  # the two directions differ on these logits


def test_hand_worked_two_positions():
    # position 1: teacher (1/2, 1/2), student (1/4, 3/4); position 2: both equal -> KL 0
    zt = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    zs = torch.log(torch.tensor([[[0.25, 0.75], [0.9, 0.1]]]))
    forward = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    reverse = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(token_kl(zs, zt)) == pytest.approx(forward / 2)  # mean over the 2 positions
    assert float(token_kl(zs, zt, direction="reverse")) == pytest.approx(reverse / 2)
    y = torch.tensor([[1, 0]])
    ce = -(math.log(0.75) + math.log(0.9)) / 2
    loss = token_distillation_loss(zs, zt, y, temperature=1.0, alpha=0.25)
    assert float(loss) == pytest.approx(0.75 * ce + 0.25 * forward / 2)


def test_kl_is_zero_for_equal_logits_and_gradient_only_reaches_the_student():
    z = logits(3)
    zs, zt = z.clone().requires_grad_(), z.clone().requires_grad_()
    for direction in ("forward", "reverse"):
        kl = token_kl(zs, zt, temperature=2.0, direction=direction)
        assert float(kl.detach()) == pytest.approx(0.0, abs=1e-6)
    token_kl(zs + 1.0 * torch.arange(5.0), zt, direction="reverse").backward()
    assert zs.grad is not None and zt.grad is None


def test_alpha_zero_is_cross_entropy_and_batch_loss_runs_both_models():
    zs, zt = logits(4), logits(5)
    y = torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(0))
    ce = F.cross_entropy(zs.reshape(-1, 5), y.reshape(-1))
    torch.testing.assert_close(token_distillation_loss(zs, zt, y, alpha=0.0), ce)

    class Fixed(nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            return self.out

    x = torch.zeros(2, 3, dtype=torch.long)
    loss = batch_loss(Fixed(zt), temperature=2.0, alpha=0.7, direction="reverse")(Fixed(zs), (x, y))
    torch.testing.assert_close(loss, token_distillation_loss(zs, zt, y, temperature=2.0, alpha=0.7, direction="reverse"))
    torch.testing.assert_close(batch_loss(None, alpha=0.0)(Fixed(zs), (x, y)), ce)


@pytest.mark.parametrize("call, err, words", [
    (lambda: token_kl(logits(0), logits(1, (2, 3, 4))), ValueError, "same"),
    (lambda: token_kl(logits(0).reshape(6, 5), logits(1).reshape(6, 5)), ValueError, "student_logits"),
    (lambda: token_kl(logits(0), logits(1), temperature=0), ValueError, "temperature"),
    (lambda: token_kl(logits(0), logits(1), direction="both"), ValueError, "direction"),
    (lambda: token_distillation_loss(logits(0), logits(1), None, alpha=0.5), ValueError, "targets is None"),
    (lambda: token_distillation_loss(logits(0), logits(1), torch.zeros(2, 4, dtype=torch.long)), ValueError, "targets"),
    (lambda: token_distillation_loss(logits(0), logits(1), torch.zeros(2, 3)), TypeError, "targets"),
    (lambda: token_distillation_loss(logits(0), logits(1), None, alpha=1.5), ValueError, "alpha"),
    (lambda: batch_loss(None, alpha=0.5), ValueError, "teacher is None"),
    (lambda: batch_loss("teacher"), TypeError, "teacher"),
])
def test_bad_input(call, err, words):
    with pytest.raises(err, match=words):
        call()
