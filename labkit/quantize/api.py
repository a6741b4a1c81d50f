"""``quantize_(model, config)``: torchao's API in miniature - post-training quantization and QAT.

A config is a frozen dataclass saying *what* to do; ``quantize_`` does it in place (trailing
underscore) to every ``nn.Linear`` / ``nn.Conv2d`` that ``filter_fn`` accepts::

    quantize_(model, WeightOnlyConfig(bits=4, granularity="per_group", group_size=32))
    quantize_(model, DynamicActivationConfig())                      # int8 x int8, no data needed
    quantize_(model, StaticActivationConfig(), calibration_data=loader)   # PTQ: calibrate, convert
    quantize_(model, QATConfig(StaticActivationConfig(act_bits=4, weight_bits=4)))   # QAT: prepare
    fit(model, ...)                                                  # train with fake quantization
    quantize_(model, QATConfig(StaticActivationConfig(act_bits=4, weight_bits=4), step="convert"))

Static post-training quantization is three steps, also callable one by one: :func:`prepare_`
(wrap layers, observers on activations), :func:`~labkit.quantize.observers.calibrate` (run a
few batches), :func:`convert_` (store integer weights and the observed activation ranges).
Weights are symmetric signed codes, activations unsigned affine ones, as in PyTorch's x86
int8 recipes. Used by ``notebooks/06_quantization.ipynb`` and the capstone (``08``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from labkit import _args
from labkit.quantize.fake import FakeQuantize
from labkit.quantize.maths import check_bits
from labkit.quantize.modules import (
    QUANTIZABLE,
    FakeQuantized,
    WeightSpec,
    _Quantized,
    quantized_from,
)
from labkit.quantize.observers import OBSERVERS, calibrate


@dataclass(frozen=True)
class WeightOnlyConfig:
    """Integer weights, float activations (torchao ``Int8WeightOnlyConfig`` / ``IntxWeightOnlyConfig``)."""

    bits: int = 8
    granularity: str = "per_channel"
    group_size: int | None = None
    symmetric: bool = True

    def __post_init__(self):
        self.weight_spec()

    def weight_spec(self) -> WeightSpec:
        return WeightSpec(self.bits, self.granularity, self.group_size, self.symmetric)


@dataclass(frozen=True)
class DynamicActivationConfig:
    """Integer weights; each batch's activations quantized with their own min-max range
    (torchao ``Int8DynamicActivationInt8WeightConfig``; ``torch.ao`` ``quantize_dynamic``)."""

    weight_bits: int = 8
    act_bits: int = 8
    granularity: str = "per_channel"
    group_size: int | None = None

    def __post_init__(self):
        self.weight_spec()
        check_bits(self.act_bits, "act_bits")

    def weight_spec(self) -> WeightSpec:
        return WeightSpec(self.weight_bits, self.granularity, self.group_size, True)


@dataclass(frozen=True)
class StaticActivationConfig:
    """Integer weights; activation ranges fixed by calibration with ``observer`` (static PTQ)."""

    weight_bits: int = 8
    act_bits: int = 8
    granularity: str = "per_channel"
    group_size: int | None = None
    observer: str = "minmax"

    def __post_init__(self):
        self.weight_spec()
        check_bits(self.act_bits, "act_bits")
        _args.choice("observer", self.observer, OBSERVERS)

    def weight_spec(self) -> WeightSpec:
        return WeightSpec(self.weight_bits, self.granularity, self.group_size, True)


BASE_CONFIGS = (WeightOnlyConfig, DynamicActivationConfig, StaticActivationConfig)


@dataclass(frozen=True)
class QATConfig:
    """Quantization-aware training of ``base_config``: ``step="prepare"`` inserts fake
    quantization (activations observed with a moving average), ``step="convert"`` stores ints
    with the settings chosen at prepare (a ``base_config`` given at convert must match them)."""

    base_config: WeightOnlyConfig | DynamicActivationConfig | StaticActivationConfig | None = None
    step: str = "prepare"

    def __post_init__(self):
        if self.base_config is None and self.step == "prepare":
            raise ValueError("QATConfig(step='prepare') needs a base_config")
        if self.base_config is not None:
            _args.instance("base_config", self.base_config, BASE_CONFIGS)
        _args.choice("step", self.step, ("prepare", "convert"))


def _default_filter(module: nn.Module, name: str) -> bool:
    return isinstance(module, QUANTIZABLE)


def _swap_(model: nn.Module, match: Callable[[nn.Module, str], bool], make: Callable[[nn.Module], nn.Module],
           what: str) -> nn.Module:
    _args.module("model", model)
    if match(model, ""):
        raise ValueError("the model itself is a single layer: wrap it in a container (e.g. nn.Sequential)")
    wrapped = [n + "." for n, m in model.named_modules() if n and isinstance(m, (FakeQuantized, _Quantized))]
    targets = [(name, m) for name, m in model.named_modules()
               if name and not any(name.startswith(w) for w in wrapped) and match(m, name)]
    if not targets:
        raise ValueError(f"model has nothing to quantize: no {what}")
    for name, m in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, make(m))
    return model


def _activation(config, *, qat: bool) -> FakeQuantize | None:
    if isinstance(config, WeightOnlyConfig):
        return None
    if isinstance(config, DynamicActivationConfig):
        return FakeQuantize(bits=config.act_bits, dynamic=True, enabled=qat)
    observer = "moving_average" if qat else config.observer
    return FakeQuantize(bits=config.act_bits, observer=observer, observe=True, enabled=qat)


def _wrap_(model, config, filter_fn, *, qat: bool):
    filter_fn = filter_fn or _default_filter
    spec = config.weight_spec()
    return _swap_(model, lambda m, n: not isinstance(m, (FakeQuantized, _Quantized)) and isinstance(m, QUANTIZABLE) and filter_fn(m, n),
                  lambda m: FakeQuantized(m, spec, _activation(config, qat=qat), fake_weight=qat),
                  "nn.Linear or nn.Conv2d layer (accepted by filter_fn)")


def prepare_(model: nn.Module, config: StaticActivationConfig, *, filter_fn=None) -> nn.Module:
    """Static PTQ step 1: wrap layers with activation observers (nothing quantized yet)."""
    _args.module("model", model)
    _args.instance("config", config, StaticActivationConfig, "a StaticActivationConfig (prepare_ is for static PTQ)")
    return _wrap_(model, config, filter_fn, qat=False)


def _convert_one(w: FakeQuantized) -> nn.Module:
    act = w.act
    if act is None:
        return quantized_from(w.layer, w.spec)
    if act.dynamic:
        return quantized_from(w.layer, w.spec, act_bits=act.bits, act_mode="dynamic")
    return quantized_from(w.layer, w.spec, act_bits=act.bits, act_mode="static", act_qparams=act.qparams())


def convert_(model: nn.Module) -> nn.Module:
    """Replace every prepared / QAT layer by its integer twin (weights stored as codes)."""
    return _swap_(model, lambda m, n: isinstance(m, FakeQuantized), _convert_one,
                  "prepared layers (call prepare_ or quantize_ with a QATConfig first)")


def quantize_(model: nn.Module, config, *, calibration_data: Iterable | None = None, calibration_batches: int | None = None,
              filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Quantize ``model`` in place as ``config`` says and return it.

    ``filter_fn(module, name)`` picks layers (default: every ``nn.Linear`` / ``nn.Conv2d``).
    ``StaticActivationConfig`` needs ``calibration_data`` (a loader) unless the model was
    already prepared and calibrated.
    """
    _args.module("model", model)
    _args.instance("config", config, (*BASE_CONFIGS, QATConfig))
    if isinstance(config, QATConfig):
        if config.step == "prepare":
            return _wrap_(model, config.base_config, filter_fn, qat=True)
        if config.base_config is not None:
            want = config.base_config.weight_spec()
            for name, m in model.named_modules():
                if isinstance(m, FakeQuantized) and m.spec != want:
                    raise ValueError(f"layer {name!r} was prepared with {m.spec}, but convert was given {want}")
        return convert_(model)
    if not isinstance(config, BASE_CONFIGS):
        raise TypeError(f"config must be one of {[c.__name__ for c in (*BASE_CONFIGS, QATConfig)]}, got {type(config).__name__}")
    if isinstance(config, StaticActivationConfig):
        prepared = any(isinstance(m, FakeQuantized) for m in model.modules())
        if not prepared:
            if calibration_data is None:
                raise ValueError("StaticActivationConfig needs calibration_data= (a loader of a few batches)")
            prepare_(model, config, filter_fn=filter_fn)
        if calibration_data is not None:
            calibrate(model, calibration_data, batches=calibration_batches)
        return convert_(model)
    spec = config.weight_spec()
    act = {} if isinstance(config, WeightOnlyConfig) else {"act_bits": config.act_bits, "act_mode": "dynamic"}
    filter_fn = filter_fn or _default_filter
    return _swap_(model, lambda m, n: isinstance(m, QUANTIZABLE) and filter_fn(m, n),
                  lambda m: quantized_from(m, spec, **act), "nn.Linear or nn.Conv2d layer (accepted by filter_fn)")


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every quantized or fake-quantized layer, in order."""
    _args.module("model", model)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (_Quantized, FakeQuantized))]
