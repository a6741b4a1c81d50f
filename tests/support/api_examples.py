"""Valid example arguments for the API walker (:mod:`support.api_walker`), and its skip list.

``EXAMPLES`` maps a parameter name to a function of a :class:`~support.api_walker.Ctx` that
builds a valid value; ``OVERRIDES`` does the same for one callable (by qualname, or
``module.qualname``) where the shared example does not fit.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

from support.api_walker import EXAMPLES, OVERRIDES, SETUP, SKIP, _import


def _slots(c):
    return _import("labkit.parallel.schedule.gpipe")(2, 2)


def _t(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _notebook(c):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    return new_notebook(cells=[new_markdown_cell("# Lesson"), new_code_cell("x = 1")])


def _notebook_file(c):
    import nbformat

    path = c.tmp / "lesson.ipynb"
    nbformat.write(_notebook(c), path)
    return str(path)


def _conv_model(c):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 2 * 2, 3)).eval()


def _quantized(c):
    q = _import("labkit.quantize.quantize_")
    return q(copy.deepcopy(c.model), _import("labkit.quantize.WeightOnlyConfig")())


def _prepared(c):
    q = _import("labkit.quantize.prepare_")
    return q(copy.deepcopy(c.model), _import("labkit.quantize.StaticActivationConfig")())


_ONNX: dict[str, str] = {}


def _onnx_file(c):
    """One small exported model for the whole walk (exporting takes seconds)."""
    if "path" not in _ONNX:
        folder = Path(tempfile.mkdtemp(prefix="labkit-walker-"))
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        _ONNX["path"] = str(_import("labkit.export.export")(model, (c.x,), folder / "m.onnx"))
    return _ONNX["path"]


def _config(c):
    return _import("labkit.lm.model.GPTConfig")(block_size=8, n_layer=1, n_head=2, n_embd=8)


def _gpt(c):
    return c.get("gpt", lambda c: _import("labkit.lm.model.GPT")(_config(c)).eval())


def _cache(c):
    return _import("labkit.lm.generate.KVCache")(_config(c), batch_size=1)


def _run(c):
    return _import("labkit.classroom.grading.NotebookRun")(Path("a.ipynb"), 1.0, 1, 1, [], [])


EXAMPLES.update({
    # records and their fields
    "cores": lambda c: 2, "ghz": lambda c: 3.0, "flops_per_cycle": lambda c: 32, "gflops": lambda c: 100.0,
    "assumptions": lambda c: ("two cores",), "label": lambda c: "a", "median": lambda c: 1.0, "iqr": lambda c: 0.1,
    "mean": lambda c: 1.0, "runs": lambda c: 3, "threads": lambda c: 1, "intensity": lambda c: 1.0,
    "peak_gflops": lambda c: 100.0, "bandwidth_gbs": lambda c: 10.0, "targets": lambda c: c.y,
    "cells": lambda c: 1, "cells_run": lambda c: 1, "errors": lambda c: [], "verdicts": lambda c: [],
    "compile_seconds": lambda c: 1.0, "eager": lambda c: 1.0, "compiled": lambda c: 0.5,
    "model_or_path": lambda c: c.model, "model_or_state": lambda c: c.model, "quantized": _quantized,
    "float_path": _onnx_file, "out_path": lambda c: str(c.tmp / "out.onnx"), "run": _run,
    "kind": lambda c: "cpu", "device": lambda c: "cpu", "memory_gb": lambda c: 1.0, "fast_bf16": lambda c: False,
    "fast_fp16": lambda c: False, "int8_kernels": lambda c: False, "num_classes": lambda c: 3,
    "input_shape": lambda c: (1, 2, 2), "train": lambda c: c.loader.dataset, "val": lambda c: c.loader.dataset,
    "test": lambda c: c.loader.dataset, "student_layer": lambda c: "1", "teacher_layer": lambda c: "1",
    "student_shape": lambda c: (8,), "teacher_shape": lambda c: (8,), "cwd": lambda c: str(c.tmp),
    "timings": lambda c: {"gloo 1.0": {"median": 1e-3, "iqr": 1e-4}}, "ops": lambda c: [("F", 0), ("B", 0)],
    "overall": lambda c: 0.5, "zeros": lambda c: 1, "masks": lambda c: {"1": torch.ones(8, 4, dtype=torch.bool)},
    "sparse_state": lambda c: {}, "layer": lambda c: "1", "norms": lambda c: (), "consumers": lambda c: (),
    "feeds_output": lambda c: False, "plan": lambda c: {}, "groups": lambda c: [], "p": lambda c: torch.tensor(1.0),
    "x_shape": lambda c: torch.Size([4]), "granularity": lambda c: "per_tensor", "axis": lambda c: 0,
    "group_size": lambda c: None, "size_bytes": lambda c: 100, "log": lambda c: str(c.tmp / "log.jsonl"),
    "status": lambda c: "pass", "message": lambda c: "ok",
    "expected": lambda c: ["00.1 demo"], "argv": lambda c: ["lint", _notebook_file(c)],

    # models, data, training
    "model": lambda c: c.model, "module": lambda c: c.model, "student": lambda c: c.model,
    "teacher": lambda c: c.model, "stage": lambda c: c.model,
    "sequential": lambda c: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)),
    "x": lambda c: c.x, "y": lambda c: c.y, "inputs": lambda c: c.x, "example_inputs": lambda c: (c.x,),
    "loader": lambda c: c.loader, "train_loader": lambda c: c.loader, "data": lambda c: c.loader,
    "optimizer": lambda c: c.optimizer, "params": lambda c: list(c.model.parameters()),
    "dataset": lambda c: c.loader.dataset, "labels": lambda c: c.y, "logits": lambda c: _t(6, 3),
    "student_logits": lambda c: _t(6, 3), "teacher_logits": lambda c: _t(6, 3),
    "temperature": lambda c: 2.0, "alpha": lambda c: 0.5, "seed": lambda c: 0,
    "tensor": lambda c: _t(8), "tensors": lambda c: [_t(3)], "weight": lambda c: _t(4, 4),
    "codes": lambda c: torch.tensor([1, -2, 3, 0]), "packed": lambda c: torch.tensor([1, 2], dtype=torch.uint8),
    "mask": lambda c: torch.tensor([True, False, True, True]),
    "matrix": lambda c: torch.tensor([[0.0, 1.0], [2.0, 0.0]]),
    "scale": lambda c: 0.1, "zero_point": lambda c: 0, "bits": lambda c: 8, "signed": lambda c: True,
    "numel": lambda c: 4, "n": lambda c: 8, "nbytes": lambda c: 1024.0, "world_size": lambda c: 2,
    "rank": lambda c: 0, "stages": lambda c: 2, "micro_batches": lambda c: 2, "parts": lambda c: 2,
    "batch": lambda c: 4, "batch_size": lambda c: 4, "step": lambda c: 3, "steps": lambda c: 3,
    "amount": lambda c: 0.5, "final_sparsity": lambda c: 0.5, "end_step": lambda c: 10, "strength": lambda c: 1e-3,
    "threshold": lambda c: 0.01, "dtype": lambda c: torch.float16, "device_type": lambda c: "cpu",
    "values": lambda c: _t(4), "min_val": lambda c: torch.tensor(-1.0), "max_val": lambda c: torch.tensor(1.0),
    "x_hat": lambda c: c.x + 0.01, "reference": lambda c: _t(3), "candidate": lambda c: _t(3),
    "fn": lambda c: (lambda: None), "step_fn": lambda c: (lambda: None),
    "eager_fn": lambda c: (lambda: None), "compiled_fn": lambda c: (lambda: None),
    "fns": lambda c: {"a": lambda: None}, "worker": lambda c: _import("labkit.parallel.examples.hello"),
    "name": lambda c: "mlp", "path": lambda c: str(c.tmp / "model.onnx"), "directory": lambda c: str(c.tmp),
    "slots": _slots, "measured": _slots, "orders": lambda c: _import("labkit.parallel.schedule.gpipe_order")(2, 2),
    "t": lambda c: 1.0, "seconds": lambda c: 1.0, "rows": lambda c: [{"a": 1.0}],
    "nb": _notebook, "notebooks": lambda c: [_notebook_file(c)], "notebooks_dir": lambda c: str(c.tmp),
    "src_dir": lambda c: str(c.tmp), "out_dir": lambda c: str(c.tmp / "out"), "source": lambda c: "x = 1",
    "spec": lambda c: _import("labkit.quantize.WeightSpec")(), "config": lambda c: _import("labkit.quantize.WeightOnlyConfig")(),
    "comm": lambda c: _import("labkit.parallel.strategies.CountingComm")(),
    "exercise": lambda c: "00.1 demo", "attempt": lambda c: (lambda: 1), "results": lambda c: [],
    "full": lambda c: 10, "fast": lambda c: 2, "copies": lambda c: 2, "images": lambda c: _t(4, 1, 4, 4),
    "n_labelled": lambda c: 2, "event": lambda c: "step 1", "port": lambda c: 29500, "text": lambda c: "{}",
    "variable": lambda c: "LABKIT_FAST", "history": lambda c: _import("labkit.train.History")(),
    "memory": lambda c: {"parameters": 100, "gradients": 100, "optimizer_state": 200, "activations": 50},
    "fractions": lambda c: (0.5, 0.5), "y_path": lambda c: str(c.tmp / "y.npy"), "x_path": lambda c: str(c.tmp / "x.npy"),
    "transform": lambda c: (lambda t: t), "sizes_mb": lambda c: (1.0,), "segments": lambda c: 2,
    "in_features": lambda c: 4, "out_features": lambda c: 4, "dim": lambda c: 0, "width": lambda c: 8,
    "depth": lambda c: 2, "ranks": lambda c: 2, "w": lambda c: _import("labkit.parallel.strategies.Workload")(8, 2, 4, 2),
    "draw": lambda c: (lambda **kw: None), "controls": lambda c: {"a": (0, 1)}, "defaults": lambda c: {"a": 0},
})

OVERRIDES.update({
    "fold_batchnorm": {"model": _conv_model},
    "QuantizedConv2d": {"layer": lambda c: nn.Conv2d(1, 2, 3)},
    "distill": {"teacher": lambda c: nn.Sequential(nn.Flatten(), nn.Linear(4, 3))},
    "calibrate": {"model": _prepared},
    "prepare_": {"config": lambda c: _import("labkit.quantize.StaticActivationConfig")()},
    "round_scaled": {"scale": lambda c: torch.tensor(0.1), "zero_point": lambda c: torch.tensor(0)},
    "run_onnx": {"model": _onnx_file}, "OnnxModule": {"path": _onnx_file}, "onnx_session": {"path": _onnx_file},
    "quantize_onnx": {"path": _onnx_file}, "strip_onnx_metadata": {"path": _onnx_file},
    "load_int8_weight_onnx": {"path": _onnx_file},
    "quantize_onnx_static": {"path": _onnx_file, "calibration": lambda c: c.x}, "runtime_ops": {"path": _onnx_file},
    "CsrLinear": {"linear": lambda c: nn.Linear(4, 4)},
    "measure_steps": {"steps": lambda c: [_import("labkit.compress.Step")("a", c.model)]},
    "step_gains": {"rows": lambda c: [{"step": s, "size_kb": 1.0, "latency_ms": 1.0, "mflops": 1.0} for s in "ab"]},
    "pareto_front": {"rows": lambda c: [{"step": "a", "size_kb": 1.0, "accuracy": 0.9}], "x": lambda c: "size_kb"},
    "GradeReport": {"runs": lambda c: [_run(c)]}, "course_table": {"runs": lambda c: [_run(c)]},
    "SparsityReport": {"rows": lambda c: (), "params": lambda c: 2},
    "Splits": {"name": lambda c: "digits"},
    "load_torchvision": {"name": lambda c: "mnist", "root": lambda c: str(c.tmp)},
    "dataset_to_tensors": {"data": lambda c: torch.zeros(2, 2, 2, dtype=torch.uint8), "targets": lambda c: torch.tensor([0, 1])},
    "measure_runtimes": {"runtimes": lambda c: {"fp32": _import("labkit.quantize.runtimes.Runtime")("fp32", c.model, 100)}},
    "Runtime": {"name": lambda c: "fp32"},
    "DeviceInfo": {"name": lambda c: "a cpu"},
    "FeatureHint": {"student": lambda c: c.model, "teacher": lambda c: nn.Sequential(nn.Flatten(), nn.Linear(4, 8))},
    "run_stage": {"batch": lambda c: 4},
    "is_checked": {"cell": lambda c: _notebook(c).cells[1]},
    "expand_param": {"p": lambda c: torch.tensor(1.0)},
    "QuantizedLinear": {"layer": lambda c: nn.Linear(4, 2)},
    "FakeQuantized": {"layer": lambda c: nn.Linear(4, 2), "act": lambda c: None},
    "quantized_from": {"layer": lambda c: nn.Linear(4, 2)},
    "CheckpointedSequential": {"segments": lambda c: 2},
    "checkpoint_sweep": {"x": lambda c: _t(2, 4), "y": lambda c: _t(2, 4), "segments": lambda c: [1, 2]},
    "split_model": {"model": lambda c: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))},
    "partition": {"costs": lambda c: [1.0, 2.0, 3.0]},
    "make_schedule": {"name": lambda c: "gpipe"},
    "build_model": {"name": lambda c: "mlp"},
    "load_arrays": {"name": lambda c: "digits"},
    "torch_optimizer": {"name": lambda c: "sgd"},
    "stratified_split": {"y": lambda c: torch.tensor([0, 1] * 10)},
    "shard_batch": {"x": lambda c: _t(4, 3)},
    "shard": {"tensor": lambda c: _t(4, 4)},
    "chunk_bounds": {"numel": lambda c: 10}, "ring_bytes_sent": {"numel": lambda c: 10},
    "ring_all_reduce_": {"tensor": lambda c: _t(4)},
    "make_loaders": {"splits": lambda c: _import("labkit.data.load_dataset")("digits", limit=60)},
    "tensors": {"dataset": lambda c: c.loader.dataset},
    "make_student": {"nb": _notebook}, "exercise_names": {"nb": _notebook},
    "read": {"path": _notebook_file}, "refresh": {"path": _notebook_file},
    "run_notebook": {"path": _notebook_file},
    "restore_checks": {"submitted": _notebook, "source": _notebook},
    "verdicts_from_log": {"log": lambda c: str(c.tmp / "log.jsonl"), "expected": lambda c: ["00.1 demo"]},
    "pack_bits": {"codes": lambda c: torch.tensor([1, 2, 3, 0]), "bits": lambda c: 2,
                  "mask": lambda c: torch.tensor([True, False, True, True])},
    "unpack_bits": {"packed": lambda c: torch.tensor([1], dtype=torch.uint8), "bits": lambda c: 2,
                    "numel": lambda c: 4},
    "pack_int4": {"codes": lambda c: torch.tensor([1, -2, 3, 0])},
    "unpack_int4": {"packed": lambda c: torch.tensor([1, 2], dtype=torch.uint8), "numel": lambda c: 4},
    "magnitude_mask": {"weight": lambda c: _t(4, 4)},
    "write_memmap": {"x": lambda c: _t(4, 2), "y": lambda c: torch.tensor([0, 1, 0, 1])},
    "compare_latency": {"models": lambda c: {"a": c.model}},
    "model_report": {"name": lambda c: "mlp"},
    "Step": {"name": lambda c: "dense"},
    "kernel_excerpt": {"code": lambda c: "def kernel(): pass", "name": lambda c: "kernel"},
    "traffic_bytes": {"numel": lambda c: 1024},
    "break_even_steps": {"compile_seconds": lambda c: 1.0, "eager_step": lambda c: 0.01, "compiled_step": lambda c: 0.005},
    "pointwise_chain": {"x": lambda c: _t(8), "bias": lambda c: _t(8)},
    "round_to": {"x": lambda c: 0.1},
    "running_sum": {"step": lambda c: 0.1, "n": lambda c: 10},
    "flushed_to_zero": {"values": lambda c: _t(4)},
    "sgd_update": {"p": lambda c: _t(4), "g": lambda c: _t(4), "buf": lambda c: None, "lr": lambda c: 0.1},
    "adam_update": {"p": lambda c: _t(4), "g": lambda c: _t(4), "m": lambda c: torch.zeros(4),
                    "v": lambda c: torch.zeros(4), "t": lambda c: 1, "lr": lambda c: 0.1},
    "slot_at": {"stage": lambda c: 0, "t": lambda c: 0.5},
    "Slot": {"stage": lambda c: 0, "kind": lambda c: "F", "micro": lambda c: 0, "start": lambda c: 0.0,
             "end": lambda c: 1.0},
    "ring_traffic": {"nbytes": lambda c: 1024.0},
    "CostModel": {"alpha": lambda c: 1e-4, "bandwidth": lambda c: 1e9},
    "fit_cost_model": {"rows": lambda c: [{"impl": "gloo", "bytes": 1e6, "world_size": 2, "seconds": 1e-3},
                                          {"impl": "gloo", "bytes": 4e6, "world_size": 2, "seconds": 3e-3}]},
    "zero_memory": {"world_size": lambda c: 2},
    "few_labels": {"labels": lambda c: torch.tensor([0, 1, 2] * 4), "n_labelled": lambda c: 1},
    "teacher_logits": {"inputs": lambda c: c.x},
    "gap_closed": {"scratch": lambda c: 0.8, "distilled": lambda c: 0.85, "teacher": lambda c: 0.9},
    "distillation_loss": {"labels": lambda c: c.y},
    "soft_target_loss": {"temperature": lambda c: 2.0},
    "human_bytes": {"n": lambda c: 1024.0},
    "explorer": {"draw": lambda c: (lambda a: None), "controls": lambda c: {"a": [0, 1]}, "defaults": lambda c: {"a": 0}},
    "check_port": {"port": lambda c: 29500},
    "resolve": {"spec": lambda c: "labkit.parallel.examples:hello"},
    "parse_kwargs": {"text": lambda c: "{}"},
    "launch": {"world_size": lambda c: 2},
    "run_each": {"calls": lambda c: []},
    "build_student": {"src_dir": lambda c: str(c.tmp)},
    "lessons": {"notebooks_dir": lambda c: str(c.tmp)},
})

def _setup(c):
    import torch._dynamo  # noqa: F401 - imported whole before the walk refuses subprocesses
    import torch._inductor.config  # noqa: F401

    _onnx_file(c)


SETUP.append(_setup)

for _name in ("evaluate_lm", "decode_step", "generate", "prefill", "batch_sweep", "bytes_per_step",
              "kv_cache_speedup", "time_prefill", "time_decode", "decode_flops", "predicted_tokens_per_s"):
    OVERRIDES.setdefault(_name, {})["model"] = _gpt
OVERRIDES.setdefault("speculative_generate", {}).update(target=_gpt, draft=_gpt)
OVERRIDES.setdefault("kernel_fits", {})["linear"] = lambda c: nn.Linear(128, 16)
OVERRIDES.setdefault("int4_per_group", {}).update(weight=lambda c: torch.randn(16, 128), group_size=lambda c: 32)
OVERRIDES.setdefault("predict_naive_step", {})["model"] = lambda c: _import("labkit.parallel.cost.CostModel")(1e-4, 1e9)
OVERRIDES.setdefault("differences", {})["results"] = lambda c: [{"output": None, "grads": {}, "params": {}}]
OVERRIDES.setdefault("check_training", {}).update(steps=lambda c: 1, lr=lambda c: 0.1, seed=lambda c: 0)
OVERRIDES.setdefault("accept_or_resample", {}).update(p=lambda c: torch.tensor([0.5, 0.5]), q=lambda c: torch.tensor([0.5, 0.5]),
                                                      token=lambda c: 0)
OVERRIDES.setdefault("batch_sweep", {}).update(batches=lambda c: [1], bandwidth_gbs=lambda c: 10.0)
OVERRIDES.setdefault("speculative_generate", {})["prompt_ids"] = lambda c: torch.tensor([1, 2, 3])
OVERRIDES.setdefault("mfu", {}).update(tokens_per_second=lambda c: 100.0, peak_flops=lambda c: 1e12)
OVERRIDES.setdefault("course_windows", {}).update(config=lambda c: _import("labkit.lm.model.get_config")("tiny"),
                                                  windows=lambda c: 2)
OVERRIDES.setdefault("epoch_orders", {}).update(length=lambda c: 8, epochs=lambda c: 2)
OVERRIDES.setdefault("schedule_ops", {})["actions"] = lambda c: [None]
EXAMPLES.update({
    "ids": lambda c: torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(0)),
    "block_size": lambda c: 8, "batches": lambda c: 2, "seq_len": lambda c: 8, "config": _config,
    "token": lambda c: torch.tensor([[1]]), "cache": _cache, "prompt_ids": lambda c: torch.tensor([[1, 2, 3]]),
    "max_new_tokens": lambda c: 2, "idx": lambda c: torch.tensor([[1, 2, 3]]), "t_query": lambda c: 3,
    "t_key": lambda c: 3, "q": lambda c: torch.randn(1, 2, 3, 4), "k": lambda c: 2, "v": lambda c: torch.randn(1, 2, 3, 4),
    "settings": lambda c: _import("labkit.lm.train.TrainSettings")(steps=2, warmup=1, eval_every=1, val_batches=1, batch_size=2), "context": lambda c: 8,
    "length": lambda c: 4, "lengths": lambda c: [4], "bytes_per_weight": lambda c: 1.0, "weight_bytes": lambda c: 1000,
    "kv_bytes_per_sequence": lambda c: 100, "flops_per_token": lambda c: 1e6, "kv_bytes_per_position": lambda c: 64,
    "new_tokens": lambda c: 4, "target_calls": lambda c: 2, "draft_calls": lambda c: 8, "proposed": lambda c: 8,
    "judged": lambda c: 8, "accepted": lambda c: 4, "mean_overlap": lambda c: 0.5, "cost_ratio": lambda c: 0.1,
    "probs": lambda c: torch.tensor([0.25, 0.75]), "linear": lambda c: nn.Linear(128, 16),
    "bits": lambda c: 8, "params": lambda c: list(c.model.parameters()),
})

def _profile(c):
    """A finished ``torch.profiler.profile`` of one small op."""
    def build(c):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            torch.ones(4) + 1
        return prof

    return c.get("profile", build)


for _name, _examples in {
    "splice_solutions": {"submitted": lambda c: "x = 1"},
    "instructor_cells": {"source": _notebook},
    "recompile_trace": {"fn": lambda c: torch.sin, "sizes": lambda c: [2, 3]},
    "training_state_bytes": {"n_params": lambda c: 1000},
    "StepProfile": {"phases": lambda c: {"data": 0.1}, "wall": lambda c: 1.0, "table": lambda c: "",
                    "top_ops": lambda c: ()},
    "phase_times": {"events": lambda c: []},
    "top_operators": {"prof": _profile},
    "annotated_step": {"batches": lambda c: _import("labkit.efficiency.profiling.BatchStream")(c.loader)},
    "linear_intensity": {"tokens": lambda c: 4, "d_in": lambda c: 4, "d_out": lambda c: 4},
    "token_sweep": {"tokens": lambda c: [1, 2], "d_in": lambda c: 4, "d_out": lambda c: 4},
    "predict_naive_step": {"row": lambda c: {"compute": 1e-3, "optimizer": 1e-4, "tensor_bytes": [1024],
                                             "world_size": 2}},
    "compare_table": {"measured": lambda c: [{"DP": {}}]},
    "plot_similarity": {"similarity": lambda c: torch.eye(3)},
    "plot_tradeoff": {"points": lambda c: [{"segments": 2, "time_ratio": 1.2, "memory_ratio": 0.5}]},
    "plot_planned_vs_measured": {"t_forward": lambda c: 0.01, "t_backward": lambda c: 0.02},
    "plot_timeline": {"timeline": lambda c: {"events": [{"event": "launch", "t": 1e-3, "bucket": 0, "bytes": 1024}],
                                             "backward_end": 2e-3, "step_end": 3e-3}},
    "plot_lines": {"x": lambda c: [1, 2], "series": lambda c: {"a": [1.0, 2.0]}},
    "plot_accuracy_vs_sparsity": {"curves": lambda c: {"magnitude": [(0.5, 0.9), (0.9, 0.8)]}},
    "plot_sensitivity": {"result": lambda c: {"": [0.9, 0.9], "1": [0.8, 0.7]}, "amounts": lambda c: [0.5, 0.9]},
    "plot_weight_histogram": {"weights": lambda c: {"w": _t(4, 4)}},
    "plot_error_vs_bits": {"curves": lambda c: {"a": [{"bits": 8, "sqnr_db": 40.0, "mse": 1e-4}]}},
    "plot_grouped": {"table": lambda c: {"8": {"per_tensor": 1.0}}},
    "naive_attention": {"k": lambda c: torch.randn(1, 2, 3, 4)},
    "BatchLoss": {"loss": lambda c: torch.tensor(1.0)},
}.items():
    OVERRIDES.setdefault(_name, {}).update(_examples)
for _name in ("decode_curve", "decode_explorer"):
    OVERRIDES.setdefault(_name, {})["params"] = lambda c: 1000
OVERRIDES.setdefault("batch_sweep", {})["context"] = lambda c: 4


# --- the LLM compression modules (quantize.{groupwise,calibration,gptq,awq,migration,smoothquant,
# lm_study}, prune.{nm,wanda,llm}, distill.tokens) --------------------------------------------------

def _lm(c):
    """A one-block GPT wide enough for the LLM studies' defaults (group size 128, outlier channel 40)."""
    def build(c):
        torch.manual_seed(0)
        config = _import("labkit.lm.model.GPTConfig")(block_size=8, n_layer=1, n_head=2, n_embd=128)
        return _import("labkit.lm.model.GPT")(config).eval()

    return c.get("lm", build)


def _windows(c):
    return [torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))]


def _hessian(k):
    x = _t(2 * k, k)
    return x.T @ x / (2 * k)


for _name, _examples in {
    "labkit.prune.llm.norm_spread": {"sq_norms": lambda c: {"fc": _t(8).abs()}},
    "labkit.prune.nm.check_nm": {"n": lambda c: 2, "m": lambda c: 4},
    "labkit.prune.nm.nm_mask": {"scores": lambda c: _t(4, 8).abs()},
    "labkit.prune.nm.row_mask": {"scores": lambda c: _t(4, 8).abs(), "sparsity": lambda c: 0.5},
    "labkit.prune.wanda.compute_linear_masks": {"layers": lambda c: {"fc": nn.Linear(8, 4)}},
    "labkit.prune.wanda.wanda_scores": {"sq_norms": lambda c: _t(4).abs()},
    "labkit.quantize.awq.awq_scales": {"absmean": lambda c: _t(4).abs()},
    "labkit.quantize.calibration.capture_inputs": {"batches": lambda c: [c.x], "names": lambda c: ["1"]},
    "labkit.quantize.calibration.layer_error": {"w_hat": lambda c: _t(4, 4) + 0.01, "x": lambda c: _t(6, 4)},
    "labkit.quantize.gptq.column_update": {"w": lambda c: _t(4, 8), "i": lambda c: 2, "q": lambda c: _t(4).round(),
                                           "h_inv_row": lambda c: torch.linalg.inv(_hessian(8))[2]},
    "labkit.quantize.gptq.gptq_weight": {"weight": lambda c: _t(2, 128), "h": lambda c: _hessian(128)},
    "labkit.quantize.gptq.obs_reference": {"weight": lambda c: _t(4, 8), "h": lambda c: _hessian(8)},
    "labkit.quantize.groupwise.check_group": {"group_size": lambda c: 2, "in_features": lambda c: 4},
    "labkit.quantize.groupwise.fake_quant_columns": {"w": lambda c: _t(4, 8), "scale": lambda c: torch.full((4, 1), 0.1),
                                                     "zero": lambda c: torch.zeros(4, 1), "bits": lambda c: 4,
                                                     "symmetric": lambda c: True},
    "labkit.quantize.groupwise.group_qparams": {"lo": lambda c: -torch.ones(4), "hi": lambda c: torch.ones(4),
                                                "bits": lambda c: 4, "symmetric": lambda c: False},
    "labkit.quantize.groupwise.quantize_linears_": {"quantizer": lambda c: (lambda name, lin: lin.weight.detach().round())},
    "labkit.quantize.lm_study.gap_closed": {
        "rows": lambda c: [{"method": m, "bits": b, "group_size": g, "perplexity": p}
                           for m, b, g, p in (("fp32", 32, None, 4.0), ("rtn", 3, 128, 6.0), ("gptq", 3, 128, 5.0))],
        "method": lambda c: "gptq"},
    "labkit.quantize.lm_study.outlier_rows": {"model": _lm, "calib": _windows, "val": lambda c: _windows(c)[0][0]},
    "labkit.quantize.lm_study.weight_only_rows": {"model": _lm, "calib": _windows, "val": lambda c: _windows(c)[0][0]},
    "labkit.quantize.migration.inject_outliers_": {"model": _gpt, "channels": lambda c: [1, 3], "factor": lambda c: 10.0},
    "labkit.quantize.migration.migrate_scale_": {"prev": lambda c: nn.LayerNorm(4), "linear": lambda c: nn.Linear(4, 2),
                                                 "s": lambda c: _t(4).abs() + 0.5},
    "labkit.quantize.smoothquant.smooth_scales": {"act_absmax": lambda c: _t(4).abs()},
    "labkit.quantize.smoothquant.smooth_": {"model": _gpt, "batches": _windows},
    "labkit.quantize.awq.awq_quantize_": {"model": _lm, "batches": _windows},
    "labkit.quantize.gptq.gptq_quantize_": {"model": _lm, "batches": _windows},
    "labkit.quantize.groupwise.rtn_quantize_": {"model": _lm},
    "labkit.quantize.groupwise.rtn_weight": {"weight": lambda c: _t(4, 128)},
    "labkit.quantize.groupwise.bits_per_weight": {"bits": lambda c: 4, "group_size": lambda c: 128},
    "labkit.quantize.awq.awq_search": {"weight": lambda c: _t(4, 128), "x": lambda c: _t(6, 128)},
    "labkit.quantize.calibration.channel_stats": {"x": lambda c: _t(6, 4)},
    "labkit.quantize.calibration.hessian": {"x": lambda c: _t(6, 4)},
    "labkit.quantize.smoothquant.act_ranges": {"batches": lambda c: [c.x]},
    "labkit.prune.wanda.input_sq_norms": {"batches": lambda c: [c.x]},
    "labkit.quantize.formats.fake_quant_nf4": {"x": lambda c: _t(64)},
    "labkit.quantize.formats.format_points": {"x": lambda c: _t(64)},
    "labkit.quantize.migration.layernorm_pairs": {"model": _gpt},
    "labkit.prune.llm.pruning_table": {"model": _gpt},
    "labkit.distill.lm.train_student": {"teacher": _gpt},
    "labkit.distill.lm.compare_students": {"teacher": _gpt},
    "labkit.distill.tokens.token_kl": {"student_logits": lambda c: _t(2, 3, 5), "teacher_logits": lambda c: _t(2, 3, 5) + 1},
    "labkit.distill.tokens.token_distillation_loss": {"student_logits": lambda c: _t(2, 3, 5),
                                                      "teacher_logits": lambda c: _t(2, 3, 5) + 1,
                                                      "targets": lambda c: torch.tensor([[0, 1, 2], [3, 4, 0]])},
}.items():
    OVERRIDES.setdefault(_name, {}).update(_examples)


# --- lesson times (labkit.classroom.lesson_times) ----------------------------------------------------

def _times_file(c):
    path = c.tmp / "lesson_times.json"
    path.write_text('{"lessons": {}}')
    return str(path)


def _guide(c):
    path = c.tmp / "INSTRUCTORS.md"
    path.write_text(_GUIDE)
    return str(path)


_GUIDE = "| Lesson | run time, 2-core CPU | session time | exercises |\n|---|---|---|---|\n| **Total** | | | |\n"

for _name, _examples in {
    "labkit.classroom.lesson_times.record_runs": {"path": lambda c: str(c.tmp / "times.json"), "runs": lambda c: [],
                                                  "fast": lambda c: True},
    "labkit.classroom.lesson_times.instructors_table": {"text": lambda c: _GUIDE, "data": lambda c: {"lessons": {}},
                                                        "exercises": lambda c: {}},
    "labkit.classroom.lesson_times.sync": {"notebooks": lambda c: [], "times_file": _times_file, "instructors": _guide},
    "labkit.classroom.lesson_times.time_paragraph": {"entry": lambda c: {}},
}.items():
    OVERRIDES.setdefault(_name, {}).update(_examples)

SKIP.update({
    "labkit.parallel.data_parallel.logging_comm_hook": "a DDP comm hook: torch calls it with a GradBucket "
                                                       "that only exists inside DDP's backward",
    "labkit.parallel.comm.counting_allreduce_hook": "a DDP comm hook (as above)",
    "labkit.train.pick": "returns `full` or `fast` unchanged: every value is valid by design",
    "labkit.parallel.launch.WorkerError": "an exception the launcher raises, not built by users",
})

# --- transformer-block tensor/sequence parallelism and experts (labkit.parallel.tp_block, experts) ---
EXAMPLES.update({"n_embd": lambda c: 8, "n_head": lambda c: 2})
OVERRIDES.setdefault("labkit.parallel.tp_block.TensorParallelBlock", {}).update(
    block=lambda c: _import("labkit.lm.model.Block")(_config(c)))
EXAMPLES.update({"n_tokens": lambda c: 8, "n_experts": lambda c: 4})
OVERRIDES.setdefault("labkit.parallel.experts.MoE", {}).update(d=lambda c: 4, hidden=lambda c: 8)
OVERRIDES.setdefault("labkit.parallel.experts.ExpertParallelMoE", {}).update(
    moe=lambda c: _import("labkit.parallel.experts.MoE")(4, 8, 2))
