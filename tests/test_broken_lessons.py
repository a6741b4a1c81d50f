"""Fast mode still means something: each lesson's final asserts catch its central technique broken.

CI runs the lessons with ``LABKIT_FAST=1``. For each of lessons 01-08 this test copies the
notebook, inserts right after its imports a cell that swaps ONE central labkit function for a
plausibly broken version (everywhere it is bound: its module, the labkit modules that imported
it, the notebook's own names), runs the copy headless in fast mode, and asserts that the run
stops in the LAST code cell - the lesson's asserts - with an AssertionError. An earlier crash
would prove nothing about the asserts, so it fails the test.

Workers that run in other processes (lessons 03 and 04) import labkit afresh, so a patch in the
notebook's kernel never reaches them; those lessons break a function the notebook itself calls
and whose result the final cell checks (the single-process reference of 03, the schedule
simulator of 04). Each run costs about a minute of CPU: the lessons run once each, in fast mode.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell

LESSONS = Path(__file__).parent.parent / "notebooks"

PATCH = '''\
import copy
import importlib
import sys

import torch

_module = importlib.import_module({module!r})
_original = getattr(_module, {name!r})


{broken}


for _m in [m for n, m in list(sys.modules.items()) if n == "labkit" or n.startswith("labkit.")]:
    for _k, _v in list(vars(_m).items()):
        if _v is _original:
            setattr(_m, _k, _broken)
for _k, _v in list(globals().items()):
    if _v is _original and not _k.startswith("_"):
        globals()[_k] = _broken
print("broken on purpose: {module}.{name}")
'''

# lesson -> (module, function, a broken version named _broken; it may call _original)
BROKEN = {
    "01": ("labkit.hardware", "matmul_gflops", '''
def _broken(*args, **kwargs):
    """GFLOP/s counting the n^3 multiply-adds as the FLOPs (2 n^3 are)."""
    row = _original(*args, **kwargs)
    return {**row, "gflops": row["gflops"] / 2}'''),
    "02": ("labkit.efficiency.memory", "accumulation_step", '''
def _broken(model, optimizer, x, y, *, micro_batches, loss_fn=None):
    """Gradient accumulation that forgets to weight each micro-batch's loss by its share."""
    if micro_batches <= 0:
        raise ValueError(f"micro_batches must be positive, got {micro_batches}")
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for xs, ys in zip(x.tensor_split(micro_batches), y.tensor_split(micro_batches)):
        loss = loss_fn(model(xs), ys)
        loss.backward()
        total += float(loss.detach()) / micro_batches
    optimizer.step()
    return total'''),
    "03": ("labkit.parallel.data_parallel", "train_single_process", '''
def _broken(**kwargs):
    """The reference trained as data parallelism without averaging would: the gradients of 2
    ranks summed, which for plain SGD is the step at twice the learning rate."""
    return _original(**{**kwargs, "lr": 2 * kwargs.get("lr", 0.5)})'''),
    "04": ("labkit.parallel.schedule", "one_f_one_b_order", '''
def _broken(stages, micro_batches):
    """A "1F1B" that runs every forward before any backward: GPipe's order."""
    return _module.gpipe_order(stages, micro_batches)'''),
    "05": ("labkit.prune.masks", "magnitude_mask", '''
def _broken(weight, amount):
    """Magnitude pruning that sorts the wrong way: the largest weights go."""
    k = round(amount * weight.numel())
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    mask[weight.abs().flatten().argsort(descending=True)[:k]] = False
    return mask.view_as(weight)'''),
    "06": ("labkit.quantize.maths", "round_scaled", '''
def _broken(x, scale, zero_point):
    """Quantization without rounding: the cast to integers truncates x / s + z."""
    return torch.trunc(x.float() * (1.0 / scale.float()) + zero_point.float())'''),
    "07": ("labkit.distill.loss", "distillation_loss", '''
def _broken(student_logits, teacher_logits, labels, *, temperature, alpha, ignore_index=-100):
    """Distillation that ignores the teacher: plain cross-entropy on the labels."""
    return torch.nn.functional.cross_entropy(student_logits, labels, ignore_index=ignore_index)'''),
    "08": ("labkit.compress", "fold_batchnorm", '''
def _broken(model):
    """BatchNorm folding that forgets to subtract the running mean."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.zero_()
    return _original(model)'''),
}


def _broken_copy(lesson: str):
    (path,) = LESSONS.glob(f"{lesson}_*.ipynb")
    nb = nbformat.read(path, as_version=4)
    module, name, broken = BROKEN[lesson]
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("id") != "colab-setup")
    nb.cells.insert(first + 1, new_code_cell(PATCH.format(module=module, name=name, broken=broken.strip()),
                                             id="broken-on-purpose"))
    return path, nb


def _error(cell) -> tuple[str, str] | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return out["ename"], out["evalue"]
    return None


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("lesson", [pytest.param(k, marks=pytest.mark.dist) if k in ("03", "04") else k
                                    for k in sorted(BROKEN)])
def test_final_asserts_catch_the_broken_technique(lesson):
    path, nb = _broken_copy(lesson)
    env = {**os.environ, "LABKIT_FAST": "1", "LABKIT_STATIC_WIDGETS": "1"}
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    with pytest.raises(CellExecutionError):
        client.execute(env=env)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    errors = [(i, e) for i in code if (e := _error(nb.cells[i]))]
    patch = next(i for i, c in enumerate(nb.cells) if c.get("id") == "broken-on-purpose")
    assert nb.cells[patch].outputs and "broken on purpose" in str(nb.cells[patch].outputs), "the patch did not run"
    assert len(errors) == 1 and errors[0][0] == code[-1], f"stopped in cell {errors[0][0] if errors else None}, " \
        f"not the final asserts (cell {code[-1]}): {errors}"
    assert errors[0][1][0] == "AssertionError", errors
    tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(line for o in nb.cells[code[-1]].outputs
                                                  if o.get("output_type") == "error" for line in o["traceback"]))
    failed = next((line.strip() for line in tb.splitlines() if line.lstrip().startswith("---->")), "?")
    print(f"lesson {lesson}: the final asserts failed as they should, at {failed}")
