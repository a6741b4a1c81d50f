"""Optimizers as update rules, from scratch, checked against ``torch.optim``.

Lesson ``02_one_device_efficiency`` writes each rule out (g is the gradient, t the step count
starting at 1, lr the learning rate, wd the weight decay)::

    SGD           p <- p - lr * g                                  (g <- g + wd * p first)
    momentum      b <- mu * b + (1 - dampening) * g   (b = g at t=1);  p <- p - lr * b
    Nesterov      p <- p - lr * (g + mu * b)
    Adam          m <- b1 * m + (1 - b1) * g          v <- b2 * v + (1 - b2) * g^2
                  m_hat = m / (1 - b1^t)              v_hat = v / (1 - b2^t)
                  p <- p - lr * m_hat / (sqrt(v_hat) + eps)
    AdamW         as Adam, but p <- p * (1 - lr * wd) instead of adding wd * p to g

Adam keeps two extra tensors per parameter (m and v), so its state is twice the model's size.
:class:`ScratchSGD` and :class:`ScratchAdam` loop over the parameters one tensor at a time, like
``torch.optim``'s ``foreach=False`` path; :func:`step_speed` times PyTorch's three
implementations (for-loop, ``foreach``: one multi-tensor kernel per operation, ``fused``: one
kernel for the whole update) against them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from labkit import _args
from labkit.devices import check_device
from labkit.timing import compare

IMPLEMENTATIONS = ("for-loop", "foreach", "fused")


def _check_hyper(lr: float, weight_decay: float) -> None:
    _args.positive_float("lr", lr)
    _args.non_negative_float("weight_decay", weight_decay)


def sgd_update(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, *, lr: float, momentum: float = 0.0,
               dampening: float = 0.0, nesterov: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One SGD / momentum / Nesterov update of ``p``, returning ``(new_p, new_buf)`` (pure)."""
    _args.tensor("p", p, dtype="floating")
    _args.tensor("g", g, shape=tuple(p.shape))
    if buf is not None:
        _args.tensor("buf", buf, shape=tuple(p.shape))
    _args.positive_float("lr", lr)
    _args.real("momentum", momentum, minimum=0.0)
    _args.fraction("dampening", dampening)
    _args.boolean("nesterov", nesterov)
    if momentum == 0:
        return p - lr * g, None
    buf = g.clone() if buf is None else momentum * buf + (1 - dampening) * g
    direction = g + momentum * buf if nesterov else buf
    return p - lr * direction, buf


def adam_update(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int, *, lr: float,
                betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam update at step ``t`` (t >= 1), returning ``(new_p, new_m, new_v)`` (pure)."""
    _args.tensor("p", p, dtype="floating")
    for name, value in (("g", g), ("m", m), ("v", v)):
        _args.tensor(name, value, shape=tuple(p.shape))
    _args.positive_int("t", t)
    _args.positive_float("lr", lr)
    _args.positive_float("eps", eps)
    b1, b2 = (_args.real(f"betas[{i}]", b, minimum=0.0, maximum=1.0)
              for i, b in enumerate(_args.sequence("betas", betas, what="a pair of numbers in [0, 1)")))
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v


class ScratchSGD(torch.optim.Optimizer):
    """SGD with optional momentum, dampening, Nesterov and (L2) weight decay, one tensor at a time."""

    def __init__(self, params: Iterable, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        params = _args.parameters("params", params)
        _check_hyper(lr, weight_decay)
        if not 0 <= _args.real("momentum", momentum) < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening == 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + group["weight_decay"] * p if group["weight_decay"] else p.grad
                state = self.state[p]
                new_p, buf = sgd_update(p, g, state.get("momentum_buffer"), lr=group["lr"], momentum=group["momentum"],
                                        dampening=group["dampening"], nesterov=group["nesterov"])
                p.copy_(new_p)
                if buf is not None:
                    state["momentum_buffer"] = buf
        return loss


class ScratchAdam(torch.optim.Optimizer):
    """Adam (L2 weight decay) or, with ``decoupled=True``, AdamW, one tensor at a time."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False):
        params = _args.parameters("params", params)
        _check_hyper(lr, weight_decay)
        _args.sequence("betas", betas, what="a pair of numbers in [0, 1)")
        _args.positive_float("eps", eps)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled=decoupled))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                g = p.grad
                if wd and group["decoupled"]:
                    p.mul_(1 - lr * wd)
                elif wd:
                    g = g + wd * p
                new_p, m, v = adam_update(p, g, state["exp_avg"], state["exp_avg_sq"], state["step"], lr=lr,
                                          betas=group["betas"], eps=group["eps"])
                p.copy_(new_p)
                state["exp_avg"], state["exp_avg_sq"] = m, v
        return loss


def torch_optimizer(name: str, params: Iterable, *, implementation: str = "foreach", **hyper) -> torch.optim.Optimizer:
    """``torch.optim`` SGD or Adam with the chosen implementation: ``for-loop`` (foreach=False),
    ``foreach`` (multi-tensor kernels) or ``fused`` (one kernel per step)."""
    classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    _args.choice("name", name, sorted(classes))
    params = _args.parameters("params", params)
    _args.choice("implementation", implementation, IMPLEMENTATIONS)
    flags = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}[implementation]
    return classes[name](params, **hyper, **flags)


def step_speed(params: list[torch.nn.Parameter], *, name: str = "adam", lr: float = 1e-3, scratch: bool = True,
               device=None, min_run_time: float = 0.2, rounds: int = 3) -> list[dict]:
    """Median time of one ``optimizer.step()`` over ``params`` (their ``.grad`` must be set)
    for each implementation, plus labkit's from-scratch one, timed in interleaved rounds.
    Parameters change as it runs."""
    params = _args.parameters("params", params)
    _args.positive_float("lr", lr)
    _args.positive_int("rounds", rounds)
    _args.positive_float("min_run_time", min_run_time)
    if any(not isinstance(p, torch.Tensor) or p.grad is None for p in params):
        raise ValueError("params must be non-empty and every one must have a .grad (run a backward first)")
    dev = params[0].device if device is None else check_device(device)
    steps = {impl: torch_optimizer(name, params, implementation=impl, lr=lr).step for impl in IMPLEMENTATIONS}
    if scratch:
        steps["labkit scratch"] = (ScratchAdam if name.startswith("adam") else ScratchSGD)(params, lr=lr).step
    times = {k: t["median"] for k, t in compare(steps, rounds=rounds, device=dev, min_run_time=min_run_time / rounds).items()}
    base = times["for-loop"]
    return [{"implementation": k, "seconds": v, "speedup": base / v if v > 0 else math.inf} for k, v in times.items()]
