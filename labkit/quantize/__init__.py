"""Quantization, from the maths to int8 kernels (lesson ``06_quantization``; reused by ``08``).

The sub-modules, in teaching order:

* :mod:`~labkit.quantize.maths` - scale / zero-point, quantize, dequantize (per tensor,
  channel, group), SQNR; codes equal ``torch.quantize_per_tensor`` / ``_per_channel``'s;
* :mod:`~labkit.quantize.packing` - two 4-bit codes to a byte, and back;
* :mod:`~labkit.quantize.observers` - min-max, moving-average, percentile and MSE ranges;
  :func:`calibrate`;
* :mod:`~labkit.quantize.fake` - fake quantization with a straight-through gradient;
* :mod:`~labkit.quantize.modules` - fake-quantized and integer-storage layers;
* :mod:`~labkit.quantize.api` - ``quantize_(model, config)``: PTQ (weight-only, dynamic,
  static) and QAT, in the shape of torchao's API;
* :mod:`~labkit.quantize.runtimes` - *real* int8 inference: PyTorch's dynamic int8 Linear,
  ONNX Runtime's dynamic quantization, torchao; measured side by side.

Compressing a language model the way LLMs are compressed (lesson 06 §7-§8):

* :mod:`~labkit.quantize.groupwise` - group-wise round-to-nearest (RTN) with fp16 scales, honest
  bits per weight, applied to every Linear of a model;
* :mod:`~labkit.quantize.calibration` - each Linear's inputs on calibration batches (hooks);
* :mod:`~labkit.quantize.gptq` - GPTQ's error feedback through the inverse Hessian;
* :mod:`~labkit.quantize.migration` - moving a per-channel scale between two layers, exactly
  (and injecting function-preserving outliers with it);
* :mod:`~labkit.quantize.awq` - AWQ's activation-aware scale search;
* :mod:`~labkit.quantize.smoothquant` - W8A8 per-tensor fake quantization and SmoothQuant;
* :mod:`~labkit.quantize.formats` - fp8 (e4m3, e5m2) and NF4 fake quantization;
* :mod:`~labkit.quantize.lm_study` - the perplexity tables on the course language model.

Everything public is importable from ``labkit.quantize`` directly.
"""

from labkit.quantize.api import (
                                 DynamicActivationConfig,
                                 QATConfig,
                                 StaticActivationConfig,
                                 WeightOnlyConfig,
                                 convert_,
                                 prepare_,
                                 quantize_,
                                 quantized_layers,
)
from labkit.quantize.awq import awq_quantize_, awq_scales, awq_search
from labkit.quantize.calibration import capture_inputs, channel_stats, hessian, layer_error
from labkit.quantize.fake import FakeQuantize, fake_quantize
from labkit.quantize.formats import (
                                 FP8_FORMATS,
                                 NF4_VALUES,
                                 fake_quant_fp8,
                                 fake_quant_nf4,
                                 format_points,
                                 fp8_values,
                                 round_to_values,
)
from labkit.quantize.gptq import column_update, gptq_quantize_, gptq_weight, obs_reference
from labkit.quantize.groupwise import (
                                 bits_per_weight,
                                 linear_names,
                                 quantize_linears_,
                                 rtn_quantize_,
                                 rtn_weight,
)
from labkit.quantize.lm_study import calibration_batches, gap_closed, outlier_rows, weight_only_rows
from labkit.quantize.maths import (
                                 GRANULARITIES,
                                 check_bits,
                                 choose_qparams,
                                 code_dtype,
                                 dequantize,
                                 error_vs_bits,
                                 qparams_from_minmax,
                                 qrange,
                                 quantize,
                                 quantize_dequantize,
                                 sqnr_db,
)
from labkit.quantize.migration import inject_outliers_, layernorm_pairs, migrate_scale_
from labkit.quantize.modules import FakeQuantized, QuantizedConv2d, QuantizedLinear, WeightSpec
from labkit.quantize.observers import (
                                 MinMaxObserver,
                                 MovingAverageObserver,
                                 MSEObserver,
                                 Observer,
                                 PercentileObserver,
                                 calibrate,
                                 make_observer,
)
from labkit.quantize.packing import pack_bits, pack_int4, packed_nbytes, unpack_bits, unpack_int4
from labkit.quantize.smoothquant import W8A8Linear, act_ranges, smooth_, smooth_scales, w8a8_

__all__ = [
    "GRANULARITIES", "check_bits", "qrange", "code_dtype", "qparams_from_minmax", "choose_qparams", "quantize",
    "dequantize", "quantize_dequantize", "sqnr_db", "error_vs_bits",
    "pack_bits", "unpack_bits", "pack_int4", "unpack_int4", "packed_nbytes",
    "Observer", "MinMaxObserver", "MovingAverageObserver", "PercentileObserver", "MSEObserver", "make_observer",
    "calibrate", "fake_quantize", "FakeQuantize", "WeightSpec", "FakeQuantized", "QuantizedLinear",
    "QuantizedConv2d", "WeightOnlyConfig", "DynamicActivationConfig", "StaticActivationConfig", "QATConfig",
    "quantize_", "prepare_", "convert_", "quantized_layers",
    "capture_inputs", "hessian", "channel_stats", "rtn_weight", "rtn_quantize_", "bits_per_weight", "linear_names",
    "quantize_linears_", "column_update", "gptq_weight", "gptq_quantize_", "obs_reference", "layer_error",
    "migrate_scale_", "layernorm_pairs", "inject_outliers_", "awq_scales", "awq_search", "awq_quantize_",
    "smooth_scales", "smooth_", "act_ranges", "W8A8Linear", "w8a8_",
    "FP8_FORMATS", "NF4_VALUES", "fp8_values", "round_to_values", "fake_quant_fp8", "fake_quant_nf4", "format_points",
    "calibration_batches", "weight_only_rows", "gap_closed", "outlier_rows",
]
