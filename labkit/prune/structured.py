"""Structured (channel) pruning: remove whole filters / neurons and get a smaller *dense* model.

Zeroing single weights leaves every matrix the same shape, so dense kernels do the same work.
Removing output channel ``c`` of a layer removes row ``c`` of its weight (and bias), channel ``c``
of the BatchNorm after it, and the matching *input* columns of the next layer - through a
``Flatten`` that is ``H*W`` columns per channel. Conv FLOPs fall with both widths::

    FLOPs(conv) = 2 * C_out * C_in * k_h * k_w * H_out * W_out      (half width: ~1/4 of the FLOPs)

A channel's importance is the norm of its filter, ``||W[c]||_1`` or ``||W[c]||_2``; the
``round(ratio * C_out)`` least important channels of each layer go.

:class:`ChannelPruner` is shaped like Torch-Pruning's pruners, in miniature: build it from the
model, example inputs, an importance and a ratio, then call ``.step()``. It traces the model with
``torch.fx`` to find which layers follow which; it handles chains of Conv / Linear, BatchNorm,
zero-preserving activations, pooling, dropout and flatten (e.g. ``labkit.models.SmallCNN`` and
``MLP``), and refuses anything else (residual adds, concatenations) with a clear error. The layer
producing the model's output (the classifier) keeps its outputs unless ``prune_output=True``.

Checked in ``tests/test_prune_structured.py``: the pruned model's outputs equal the original's
with the same channels zeroed (:func:`zero_channels_`). Taught in ``notebooks/05_pruning.ipynb``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from labkit import _args
from labkit.prune.masks import check_amount

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardtanh, nn.Hardswish,
                nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d,
                nn.Identity)
PASS_FUNCTIONS = (torch.relu, F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, torch.tanh, F.max_pool1d,
                  F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool2d, F.dropout)
PASS_METHODS = ("relu", "tanh", "contiguous")


def l1_importance(module: nn.Module) -> torch.Tensor:
    """``||W[c]||_1`` for each output channel ``c`` (sum of |w| over the rest of the filter)."""
    _args.module("module", module, LAYERS)
    return module.weight.detach().abs().flatten(1).sum(1)


def l2_importance(module: nn.Module) -> torch.Tensor:
    """``||W[c]||_2`` for each output channel ``c``."""
    _args.module("module", module, LAYERS)
    return module.weight.detach().flatten(1).norm(dim=1)


IMPORTANCES = {"l1": l1_importance, "l2": l2_importance}


@dataclass(frozen=True)
class Group:
    """A layer whose output channels can go, and what must shrink with it.

    ``norms``: BatchNorm layers on its channels; ``consumers``: ``(layer, block)`` pairs, the
    layers reading its channels, each channel being ``block`` consecutive inputs (1, or H*W
    after a Flatten).
    """

    layer: str
    norms: tuple[str, ...]
    consumers: tuple[tuple[str, int], ...]
    feeds_output: bool

    def __post_init__(self):
        _args.fields(self)

    def __str__(self) -> str:
        parts = [f"norm {n}" for n in self.norms] + [f"inputs of {c}" + (f" (x{b})" if b > 1 else "") for c, b in self.consumers]
        if self.feeds_output:
            parts.append("model output")
        return f"{self.layer} -> " + ", ".join(parts)


def _describe(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    return f"{node.op} {getattr(node.target, '__name__', node.target)}"


def _flatten_block(node: fx.Node, start_dim: int) -> int:
    meta = node.args[0].meta.get("tensor_meta")
    if start_dim != 1 or meta is None:
        raise ValueError(f"cannot follow channels through {node.name}: only flatten(start_dim=1) is handled")
    return math.prod(meta.shape[2:])


def _follow(node: fx.Node, modules, block: int, group: dict) -> None:
    """Walk forward from ``node`` to the next layers, collecting norms and consumers."""
    for user in node.users:
        mod = modules.get(user.target) if user.op == "call_module" else None
        if user.op == "output":
            group["feeds_output"] = True
        elif isinstance(mod, LAYERS):
            if getattr(mod, "groups", 1) != 1:
                raise ValueError(f"grouped convolution {user.target} is not handled; add its producer to ignored_layers")
            if user.args[0] is not node:
                raise ValueError(f"{user.target} uses the channels in an unexpected way")
            group["consumers"].append((user.target, block))
        elif isinstance(mod, NORMS):
            group["norms"].append(user.target)
            _follow(user, modules, block, group)
        elif isinstance(mod, PASS_MODULES) or (user.op == "call_function" and user.target in PASS_FUNCTIONS) or (
                user.op == "call_method" and user.target in PASS_METHODS):
            _follow(user, modules, block, group)
        elif isinstance(mod, nn.Flatten):
            _follow(user, modules, block * _flatten_block(user, mod.start_dim), group)
        elif user.op == "call_function" and user.target is torch.flatten:
            _follow(user, modules, block * _flatten_block(user, user.kwargs.get("start_dim", user.args[1] if len(user.args) > 1 else 0)), group)
        else:
            raise ValueError(f"ChannelPruner cannot follow {group['layer']!r}'s channels into {_describe(user, modules)}: "
                             "it handles chains of Conv/Linear, BatchNorm, activations, pooling, dropout and flatten. "
                             f"Put {group['layer']!r} in ignored_layers.")


def _inputs(example_inputs) -> tuple:
    return _args.tensors("example_inputs", example_inputs)


class ChannelPruner:
    """Remove the least important output channels of every prunable layer: ``pruner.step()``.

    ``importance``: ``"l1"``, ``"l2"`` or a function ``module -> tensor[C_out]``. ``ratio``: the
    fraction of each layer's channels to remove (a float, or ``{layer: ratio}``; layers not in
    the dict are kept). ``ignored_layers``: names (or modules) whose outputs stay whole. ``step()``
    changes the model in place and returns it; build a new optimizer afterwards.
    """

    def __init__(self, model: nn.Module, example_inputs, *, importance: str | Callable = "l1",
                 ratio: float | Mapping[str, float] = 0.5, ignored_layers: Iterable = (), prune_output: bool = False):
        _args.module("model", model)
        if any(parametrize.is_parametrized(m) for m in model.modules()):
            raise ValueError("model has parametrized (masked) weights: call labkit.prune.make_permanent_ first")
        if isinstance(importance, str):
            importance = IMPORTANCES[_args.choice("importance", importance, sorted(IMPORTANCES))]
        else:
            _args.function("importance", importance)
        self.model, self.importance = model, importance
        modules = dict(model.named_modules())
        names = {id(m): n for n, m in modules.items()}
        ignored = {names.get(id(x), x) if isinstance(x, nn.Module) else x for x in ignored_layers}
        unknown = [x for x in ignored if not isinstance(x, str) or x not in modules]
        if unknown:
            raise ValueError(f"ignored_layers holds {unknown}, which are not layers of the model")
        if isinstance(ratio, Mapping):
            self.ratios = {k: check_amount(v, f"ratio[{k!r}]") for k, v in ratio.items()}
            missing = [k for k in self.ratios if not isinstance(modules.get(k), LAYERS)]
            if missing:
                raise ValueError(f"ratio names {missing}, which are not Linear/Conv layers of the model")
        else:
            self.ratios = {n: check_amount(ratio, "ratio") for n, m in modules.items() if isinstance(m, LAYERS)}
        if not any(isinstance(m, LAYERS) for m in modules.values()):
            raise ValueError(f"model has nothing to prune: {type(model).__name__} has no Linear or Conv layer")
        gm = fx.symbolic_trace(model)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*_inputs(example_inputs))
        model.train(was_training)
        self.groups: list[Group] = []
        for node in gm.graph.nodes:
            if node.op != "call_module" or not isinstance(modules[node.target], LAYERS):
                continue
            if node.target in ignored or node.target not in self.ratios:
                continue
            group = {"layer": node.target, "norms": [], "consumers": [], "feeds_output": False}
            _follow(node, modules, 1, group)
            if group["feeds_output"] and not prune_output:
                continue
            self.groups.append(Group(node.target, tuple(group["norms"]), tuple(group["consumers"]), group["feeds_output"]))
        if not self.groups:
            raise ValueError("model has nothing to prune: every Linear/Conv layer is ignored or produces the output")

    def plan(self) -> dict[str, torch.Tensor]:
        """``{layer: sorted indices of the output channels to remove}`` for the current weights."""
        modules = dict(self.model.named_modules())
        plan = {}
        for g in self.groups:
            layer = modules[g.layer]
            scores = self.importance(layer)
            n = layer.weight.shape[0]
            if not isinstance(scores, torch.Tensor) or scores.shape != (n,):
                raise ValueError(f"importance of {g.layer!r} must be a tensor of shape ({n},), got "
                                 f"{getattr(scores, 'shape', type(scores).__name__)}")
            k = round(self.ratios[g.layer] * n)
            if k >= n:
                raise ValueError(f"ratio {self.ratios[g.layer]} would remove all {n} channels of {g.layer!r}")
            plan[g.layer] = torch.topk(scores, k, largest=False).indices.sort().values
        return plan

    def step(self, plan: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
        """Remove the planned channels (slicing layers, BatchNorms and consumers); returns the model.

        ``plan`` defaults to :meth:`plan` of the current weights.
        """
        plan = self.plan() if plan is None else plan
        modules = dict(self.model.named_modules())
        for g in self.groups:
            n = modules[g.layer].weight.shape[0]
            keep = torch.ones(n, dtype=torch.bool)
            keep[plan[g.layer].cpu()] = False
            keep = keep.nonzero().flatten()
            _slice_(modules[g.layer], keep, dim=0)
            for name in g.norms:
                _slice_(modules[name], keep, dim=0)
            for name, block in g.consumers:
                cols = (keep[:, None] * block + torch.arange(block)).flatten()
                _slice_(modules[name], cols, dim=1)
        return self.model


def _slice_(module: nn.Module, index: torch.Tensor, *, dim: int) -> None:
    """Keep ``index`` along ``dim`` of ``module``'s weight (and of its per-channel tensors if dim=0)."""
    idx = index.to(module.weight.device if module.weight is not None else "cpu")
    if isinstance(module, NORMS):
        for name in ("weight", "bias"):
            if getattr(module, name) is not None:
                setattr(module, name, nn.Parameter(getattr(module, name).detach()[idx].clone()))
        for name in ("running_mean", "running_var"):
            if getattr(module, name) is not None:
                setattr(module, name, getattr(module, name)[idx].clone())
        module.num_features = len(idx)
        return
    module.weight = nn.Parameter(module.weight.detach().index_select(dim, idx).clone())
    if dim == 0 and module.bias is not None:
        module.bias = nn.Parameter(module.bias.detach()[idx].clone())
    attr = ("out_" if dim == 0 else "in_") + ("features" if isinstance(module, nn.Linear) else "channels")
    setattr(module, attr, len(idx))


@torch.no_grad()
def zero_channels_(model: nn.Module, plan: Mapping[str, torch.Tensor], groups: Iterable[Group]) -> nn.Module:
    """Zero (instead of removing) the planned channels: filter rows, biases and BatchNorm scale/shift.

    In eval mode this model computes exactly what the pruned one does - a removed channel is one
    that contributes nothing. ``plan`` and ``groups`` come from a :class:`ChannelPruner`.
    """
    _args.module("model", model)
    _args.mapping("plan", plan, what="a dict of layer name -> channel indices (ChannelPruner.plan())")
    groups = _args.sequence("groups", list(_args.iterable("groups", groups)), of=Group, what="a list of Group")
    modules = dict(model.named_modules())
    for g in groups:
        if g.layer not in plan:
            continue
        idx = plan[g.layer]
        for name in (g.layer, *g.norms):
            m = modules[name]
            if m.weight is not None:
                m.weight[idx] = 0
            if m.bias is not None:
                m.bias[idx] = 0
    return model

