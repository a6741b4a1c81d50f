"""Issue 11: each of these was wrong for a new user (a hang, a silent wrong answer, or another
library's error); each now raises ValueError/TypeError naming the argument."""

from __future__ import annotations

import math

import pytest
import torch
from nbformat.v4 import new_notebook
from torch import nn

import labkit.plots as P
from labkit.classroom.grading import instructor_cells
from labkit.efficiency.profiling import BatchStream, StepProfile, annotated_step
from labkit.lm.model import GPT, Block, CausalSelfAttention, GPTConfig
from labkit.lm.train import TrainSettings, lr_factor
from labkit.parallel.comm import CountingComm
from labkit.parallel.pipeline import partition, run_stage, split_model
from labkit.parallel.schedule import gpipe
from labkit.parallel.strategies import Workload, compare_table, format_table, strategy_table
from labkit.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear, shard
from labkit.plots.efficiency import plot_memory_breakdown
from labkit.plots.parallel import plot_planned_vs_measured
from labkit.plots.serving import decode_curve
from labkit.quantize import QuantizedConv2d, QuantizedLinear, WeightSpec
from labkit.serving import decode

NAN_INF = [math.nan, math.inf, -math.inf]


def test_quantized_linear_refuses_a_convolution():
    with pytest.raises(TypeError, match=r"layer must be nn.Linear, got Conv2d"):
        QuantizedLinear(nn.Conv2d(1, 2, 3), WeightSpec())
    with pytest.raises(TypeError, match=r"layer must be nn.Conv2d, got Linear"):
        QuantizedConv2d(nn.Linear(4, 2), WeightSpec())
    with pytest.raises(TypeError, match="spec must be a labkit.quantize.WeightSpec"):
        QuantizedLinear(nn.Linear(4, 2), {"bits": 8})
    assert isinstance(QuantizedLinear(nn.Linear(4, 2), WeightSpec())(torch.ones(1, 4)), torch.Tensor)


@pytest.mark.parametrize("fractions, exc, word", [
    ((math.nan,), ValueError, r"fractions\[0\] must be a finite number"),
    ((0.5, math.inf), ValueError, r"fractions\[1\]"),
    ((0.5, 0.4), ValueError, "fractions must sum to 1"),
    ((0.0, 1.0), ValueError, r"fractions\[0\] must be > 0"),
    (0.5, TypeError, "fractions must be a tuple"),
    (("0.5", "0.5"), TypeError, r"fractions\[0\] must be a number"),
])
def test_stratified_split_fractions(fractions, exc, word):
    from labkit.data import stratified_split

    with pytest.raises(exc, match=word):
        stratified_split(torch.tensor([0, 1] * 5), fractions)


@pytest.mark.parametrize("y, exc, word", [
    (torch.tensor([0.0, 1.0, 1.0, 0.0]), TypeError, "y must be an integer tensor"),
    (torch.zeros(4, 2, dtype=torch.long), ValueError, "y must have 1 dimensions"),
    (torch.zeros(0, dtype=torch.long), ValueError, "y must not be empty"),
    ([0, 1, 0, 1], TypeError, "y must be a torch.Tensor"),
])
def test_stratified_split_labels(y, exc, word):
    from labkit.data import stratified_split

    with pytest.raises(exc, match=word):
        stratified_split(y, (0.5, 0.5))


@pytest.mark.parametrize("raw, static", [("on", True), ("YES", True), ("1", True), ("off", False), ("0", False)])
def test_static_widgets_flag_reads_like_every_other_flag(monkeypatch, raw, static):
    from labkit import widgets

    monkeypatch.setenv(widgets.STATIC_ENV, raw)
    if static:
        assert widgets.widgets_available() is False
    monkeypatch.setenv(widgets.STATIC_ENV, "maybe")
    with pytest.raises(ValueError, match="LABKIT_STATIC_WIDGETS.*'maybe'"):
        widgets.widgets_available()


@pytest.mark.parametrize("threshold, exc", [(math.nan, ValueError), (math.inf, ValueError), (-0.1, ValueError),
                                            ("0.1", TypeError), (None, TypeError)])
def test_soft_threshold_refuses_nan_instead_of_wiping_the_weights(threshold, exc):
    from labkit.prune import soft_threshold_

    model = nn.Sequential(nn.Linear(4, 4))
    before = model[0].weight.detach().clone()
    with pytest.raises(exc, match="threshold"):
        soft_threshold_(model, threshold)
    assert torch.equal(model[0].weight, before)  # untouched, not NaN


# --- training, distillation --------------------------------------------------------------------


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    return model, [(x, y)]


def test_fit_refuses_an_optimizer_over_another_models_parameters():
    from labkit.train import fit, train_epoch

    model, loader = _tiny()
    other = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    before = model[1].weight.detach().clone()
    for call in (lambda: fit(model, loader, optimizer=opt, progress=False),
                 lambda: train_epoch(model, loader, opt, progress=False)):
        with pytest.raises(ValueError, match="optimizer does not hold this model's parameters"):
            call()
    assert torch.equal(model[1].weight, before)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        train_epoch(model, loader, "sgd", progress=False)


@pytest.mark.parametrize("lr", NAN_INF + [0.0, -1e-3])
def test_learning_rates_must_be_finite_and_positive(lr):
    from labkit.distill import distill
    from labkit.train import fit, make_train_step

    model, loader = _tiny()
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = loader[0]
    for call in (lambda: fit(model, loader, lr=lr, progress=False),
                 lambda: distill(model, teacher, loader, lr=lr, progress=False),
                 lambda: make_train_step(model, x, y, lr=lr)):
        with pytest.raises(ValueError, match="lr must be a"):
            call()
    with pytest.raises(ValueError, match="optimizer's lr"):
        fit(model, loader, optimizer=_sgd_with_lr(model, lr), progress=False)


def _sgd_with_lr(model, lr):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.param_groups[0]["lr"] = lr  # torch checks lr only at construction (and lets nan through)
    return opt


@pytest.mark.parametrize("labels, exc, word", [
    (torch.tensor([0.0, 1.0, 2.0, 0.5]), TypeError, "labels must be an integer tensor"),
    (None, TypeError, "labels must be a torch.Tensor"),
    (torch.tensor([0, 1, 2, 7]), ValueError, r"labels must be in \[0, 3\)"),
    (torch.tensor([0, 1, 2]), ValueError, r"labels must have shape \(4,\)"),
])
def test_hard_label_loss_checks_its_labels(labels, exc, word):
    from labkit.distill import hard_label_loss

    with pytest.raises(exc, match=word):
        hard_label_loss(torch.randn(4, 3), labels)


def test_pseudo_labels_refuses_a_label_past_the_classes():
    from labkit.distill.transfer_set import pseudo_labels

    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        pseudo_labels(logits, labels=torch.tensor([0, 99, -100, 1]))
    assert pseudo_labels(logits, labels=torch.tensor([2, -100, -100, 1]))[0] == 2


@pytest.mark.parametrize("lr", NAN_INF)
def test_reference_runs_refuse_a_non_finite_lr(lr):
    from labkit.parallel.data_parallel import train_single_process
    from labkit.parallel.problem import reference_run

    with pytest.raises(ValueError, match="lr must be a finite number"):
        train_single_process(lr=lr)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        reference_run(lr=lr)


def test_compare_compiled_refuses_zero_rounds_before_compiling():
    from labkit.efficiency.compiling import compare_compiled

    calls = []
    for rounds, exc in ((0, ValueError), (1.5, TypeError)):
        with pytest.raises(exc, match="rounds"):
            compare_compiled(lambda: None, lambda: calls.append(1), rounds=rounds)
    assert calls == []  # nothing ran (no ZeroDivisionError after compiling)


@pytest.mark.parametrize("value", NAN_INF)
def test_timing_never_hangs_on_a_non_finite_run_time(value):
    from labkit.metrics import latency
    from labkit.timing import time_fn

    with pytest.raises(ValueError, match="min_run_time must be a finite number"):
        time_fn(lambda: None, min_run_time=value)
    with pytest.raises(ValueError, match="min_run_time must be a finite number"):
        latency(nn.Linear(2, 2), torch.ones(1, 2), min_run_time=value)


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", ""])
def test_write_memmap_stays_in_its_folder(tmp_path, name):
    from labkit.efficiency.loading import write_memmap

    inner = tmp_path / "inner"
    inner.mkdir()
    with pytest.raises(ValueError, match="name must be a plain file name"):
        write_memmap(torch.zeros(2, 3), torch.zeros(2), inner, name=name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["inner"]


# --- checks added to reach the walk's target (tests/test_public_api.py) -------------------------

def test_batch_sweep_checks_everything_before_timing(monkeypatch):
    timed = []
    monkeypatch.setattr(decode, "time_decode", lambda *a, **k: timed.append(k))
    model = GPT(GPTConfig(block_size=8, n_layer=1, n_head=2, n_embd=8)).eval()
    with pytest.raises(ValueError, match="bandwidth_gbs must be a finite number"):
        decode.batch_sweep(model, [1, 2], context=4, bandwidth_gbs=math.nan)
    with pytest.raises(ValueError, match="context must be an int between 1 and 7"):
        decode.batch_sweep(model, [1], context=8, bandwidth_gbs=10.0)
    with pytest.raises(TypeError, match="batches must be a list of batch sizes"):
        decode.batch_sweep(model, None, context=4, bandwidth_gbs=10.0)
    assert timed == []  # nothing was timed before the bad argument was found


def test_tensor_parallel_layers_check_sizes_and_comm():
    with pytest.raises(TypeError, match="in_features must be an int"):
        ColumnParallelLinear(None, 4, comm=CountingComm())
    with pytest.raises(ValueError, match="out_features must be an int >= 1, got 0"):
        RowParallelLinear(4, 0, comm=CountingComm())
    with pytest.raises(TypeError, match="bias must be True or False"):
        RowParallelLinear(4, 4, comm=CountingComm(), bias="yes")
    with pytest.raises(TypeError, match="comm must be a labkit.parallel.comm.CountingComm"):
        ColumnParallelLinear(4, 4, comm=None)
    with pytest.raises(ValueError, match="dim must be an int between -2 and 1, got 2"):
        shard(torch.zeros(4, 4), 2, 0, 2)
    with pytest.raises(TypeError, match="world_size must be an int"):
        shard(torch.zeros(4, 4), 0, 0, 2.0)


def test_pipeline_checks_costs_and_ops():
    with pytest.raises(ValueError, match=r"costs\[1\] must be a finite number"):
        partition([1.0, math.nan], 1)
    with pytest.raises(TypeError, match="costs must be a list or tuple"):
        partition(None, 1)
    with pytest.raises(TypeError, match="stages must be an int"):
        split_model(nn.Sequential(nn.Linear(2, 2)), "2")
    stage = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"ops\[0\] must be an \('F' or 'B', micro-batch\) pair"):
        run_stage(stage, [("X", 0)], CountingComm(), batch=2)
    with pytest.raises(TypeError, match="comm must be a labkit.parallel.comm.CountingComm"):
        run_stage(stage, [("F", 0)], "gloo", batch=2)


def test_language_model_pieces_check_their_config_and_step():
    for cls in (Block, CausalSelfAttention):
        with pytest.raises(TypeError, match="config must be GPTConfig"):
            cls({"n_embd": 8, "n_head": 2})
    settings = TrainSettings(steps=10, warmup=2, eval_every=5)
    assert lr_factor(0, settings) == 0.5  # (0 + 1) / warmup
    with pytest.raises(ValueError, match="step must be an int >= 0, got -1"):
        lr_factor(-1, settings)
    with pytest.raises(TypeError, match="settings must be TrainSettings"):
        lr_factor(0, {"warmup": 2})


def test_annotated_step_wants_a_batch_stream_not_a_loader():
    model = nn.Linear(4, 3)
    loader = [(torch.zeros(2, 4), torch.tensor([0, 1]))]
    with pytest.raises(TypeError, match="batches must be a labkit.efficiency.profiling.BatchStream, got list"):
        annotated_step(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))
    assert annotated_step(model, BatchStream(loader), torch.optim.SGD(model.parameters(), lr=0.1)).ndim == 0
    with pytest.raises(TypeError, match="wall must be float"):
        StepProfile({"data": 0.1}, "1 ms", 1, "", ())


@pytest.mark.parametrize("call, exc, word", [
    (lambda P: P.plot_roofline(math.nan, 10.0), ValueError, "peak_gflops must be a finite number"),
    (lambda P: P.plot_roofline(100.0, 10.0, [{"gflops": 1.0}]), ValueError, r"points\[0\] lacks \['intensity'\]"),
    (lambda P: P.plot_bars([1.0, 2.0]), TypeError, r"values must be a dict \{name: value\}"),
    (lambda P: P.plot_images("digits.png"), TypeError, "images must be a tensor or array"),
])
def test_shared_plots_check_their_arguments(call, exc, word):
    with pytest.raises(exc, match=word):
        call(P)


def test_topic_plots_check_their_arguments():
    parts = {"parameters": 1, "gradients": 1, "optimizer_state": 1, "activations": 1}
    with pytest.raises(ValueError, match="unit must be a number > 0"):
        plot_memory_breakdown({"SGD": parts}, unit=0)
    with pytest.raises(ValueError, match="bandwidth_gbs must be a number > 0"):
        decode_curve(bits=8, context=4, params=100, kv_bytes_per_position=8, bandwidth_gbs=-1.0, peak_gflops=10.0)
    with pytest.raises(ValueError, match="t_backward must be a finite number"):
        plot_planned_vs_measured(gpipe(2, 2), 1.0, math.inf)


def test_strategy_tables_check_rows_and_measurements():
    rows = strategy_table(Workload(8, 2, 4, 2))
    with pytest.raises(TypeError, match=r"measured\[0\] must be dict"):
        compare_table(rows, [["DP"]])
    with pytest.raises(ValueError, match=r"rows\[0\] lacks"):
        format_table([{"strategy": "DP"}])


def test_instructor_cells_names_the_argument_that_is_not_a_notebook():
    with pytest.raises(TypeError, match=r"nb must be a notebook \(nbformat.NotebookNode\), got str"):
        instructor_cells("lesson.ipynb", new_notebook())
    assert instructor_cells(new_notebook(), new_notebook()) == {}
