"""The student set, broken on purpose: each lesson's final asserts catch its technique broken,
and a learner's unfinished notebook runs to them with every exercise reported "not done".

CI runs the lessons with ``LABKIT_FAST=1``. For each lesson this test builds the *student*
version (solutions stubbed, as ``labkit student`` writes it) and, for lessons 01-08, inserts right
after its imports a cell that swaps ONE central labkit function for a plausibly broken version
(everywhere it is bound: its module, the labkit modules that imported it, the notebook's own
names). It runs the copy headless in fast mode, like ``labkit grade``, and asserts that

* every exercise reports "not done" (a stubbed solution never crashes the notebook), and
* the run stops in the LAST code cell - the lesson's asserts - with an AssertionError, at the assert
  that checks the broken technique (``CAUGHT_BY``); lessons 00 and 09, not broken, run to the end
  with no error. An earlier crash, or another assert failing first, would prove nothing about the
  asserts, so it fails the test.

One run per lesson checks both, which halves what the suite spends on running notebooks. That the
unbroken student notebooks would *pass* their final asserts follows from nbval's run of the real
lessons plus ``test_final_asserts_never_use_a_learners_answer``: the final cell reads nothing that
a solution computes.

Workers that run in other processes (lessons 03 and 04) import labkit afresh, so a patch in the
notebook's kernel never reaches them; those lessons break a function the notebook itself calls
and whose result the final cell checks (the single-process reference of 03, the schedule
simulator of 04). Each run costs about half a minute: the lessons run once each, in fast mode, with one
thread per kernel, two at a time (the fixture ``student_runs``).
"""

from __future__ import annotations

import ast
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from labkit.classroom import exercise_names, make_student, run_notebook

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

# lesson -> the final-cell assert that must catch its broken function (a piece of that line): failing
# some other assert first (a flaky timing, a crash of the cell's own making) would prove nothing
CAUGHT_BY = {
    "01": 'r["gflops"], 2 * r["n"] ** 3',
    "02": "assert acc_equal",
    "03": '(r["params"] - reference)',
    "04": "sched.peak_in_flight(sched.one_f_one_b(",
    "05": "assert all(masks_match.values())",
    "06": "assert all(codes_equal.values())",
    "07": "distillation_loss(zc, zc",
    "08": "assert fold_diff < 1e-4",
}


def _lesson(lesson: str) -> tuple[Path, nbformat.NotebookNode]:
    (path,) = LESSONS.glob(f"{lesson}_*.ipynb")
    return path, nbformat.read(path, as_version=4)


def _student_copy(lesson: str):
    """The student version of a lesson; for lessons in BROKEN, with the patch cell after the imports."""
    path, nb = _lesson(lesson)
    student = make_student(nb, name=path.name)
    if lesson in BROKEN:
        module, name, broken = BROKEN[lesson]
        first = next(i for i, c in enumerate(student.cells)
                     if c.cell_type == "code" and c.get("id") != "colab-setup")
        student.cells.insert(first + 1, new_code_cell(PATCH.format(module=module, name=name, broken=broken.strip()),
                                                      id="broken-on-purpose"))
    return path, nb, student


def _code_cells(nb) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]


def _traceback(cell) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(line for o in cell.outputs if o.get("output_type") == "error"
                                                 for line in o["traceback"]))


ALL_LESSONS = sorted(p.name[:2] for p in LESSONS.glob("[0-9][0-9]_*.ipynb"))


# Kernels running side by side get one thread each: two kernels with torch's default two threads on two
# cores spin against each other (lessons 05 + 06 together: 104 s at two threads, 62 s at one).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run_student(lesson: str):
    path, source, student = _student_copy(lesson)
    return path, source, run_notebook(path, nb=student, fast=True, timeout=600, env=ONE_THREAD)


TEST = "test_student_lesson_reports_not_done_and_its_final_asserts_catch_the_broken_technique"


@pytest.fixture(scope="module")
def student_runs(request):
    """The selected lessons' runs, started in test order TWO AT A TIME, one thread each (two
    kernels keep both cores busy where one leaves one idle: kernel start, imports, single-threaded
    Python); each test waits for its own. Under pytest-xdist (``make test``) the other worker keeps
    the second core busy, so the runs go one at a time."""
    lessons = [item.callspec.params["lesson"] for item in request.session.items
               if getattr(item, "originalname", None) == TEST]  # nbval's cells have no originalname
    workers = 1 if hasattr(request.config, "workerinput") else 2
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="student-run")
    yield {lesson: pool.submit(_run_student, lesson) for lesson in lessons}
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("lesson", [pytest.param(k, marks=pytest.mark.dist) if k in ("03", "04") else k
                                    for k in ALL_LESSONS])
def test_student_lesson_reports_not_done_and_its_final_asserts_catch_the_broken_technique(lesson, student_runs):
    path, source, run = student_runs[lesson].result()
    problems = []
    names = exercise_names(source)
    statuses = {v.exercise: v.status for v in run.verdicts}
    if len(names) < 3 or list(statuses) != names:
        problems.append(f"exercises {names}, reported {list(statuses)}")
    problems += [f"{n} is '{s}', not 'not done'" for n, s in statuses.items() if s != "not done"]
    if run.timed_out or run.kernel_died:
        problems.append(f"{run.state}: {run.errors}")
    code = _code_cells(run.nb)
    if lesson not in BROKEN:
        if not run.ran_to_end or run.errors:
            problems.append(f"the unbroken student notebook did not run to the end: {run.state} {run.errors}")
    else:
        patch = next(i for i, c in enumerate(run.nb.cells) if c.get("id") == "broken-on-purpose")
        if "broken on purpose" not in str(run.nb.cells[patch].outputs):
            problems.append("the patch did not run")
        final = f"cell {code[-1]}: AssertionError"
        if len(run.errors) != 1 or not run.errors[0].startswith(final):
            problems.append(f"expected one error, an AssertionError in the final asserts (cell {code[-1]}); "
                            f"got {run.errors}")
        else:
            failed = next((ln.strip() for ln in _traceback(run.nb.cells[code[-1]]).splitlines()
                           if re.match(r"\s*-+>\s*\d+ ", ln)), "?")  # IPython's arrow: "----> 4", "---> 11"
            if CAUGHT_BY[lesson] not in failed:
                problems.append(f"the final asserts failed at {failed!r}, not at the one that checks "
                                f"{BROKEN[lesson][0]}.{BROKEN[lesson][1]} ({CAUGHT_BY[lesson]!r})")
            print(f"lesson {lesson}: the final asserts failed as they should, at {failed}")
    assert not problems, f"{path.name} (student version, {run.seconds:.0f} s):\n" + "\n".join(problems)


_INNER_SCOPES = (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.ListComp, ast.SetComp,
                 ast.DictComp, ast.GeneratorExp)


def _names(node, ctx) -> set[str]:
    """Names ``node`` reads (``ast.Load``, inner scopes included) or binds in its own scope (``ast.Store``)."""
    if ctx is ast.Load:
        return {x.id for x in ast.walk(node) if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Load)}
    found, todo = set(), [node]
    while todo:
        x = todo.pop()
        if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Store):
            found.add(x.id)
        todo += [c for c in ast.iter_child_nodes(x) if not isinstance(c, _INNER_SCOPES)]
    return found


def _solution_names(nb) -> set[str]:
    """Names whose value a learner's solution decides: functions and classes holding a solution block,
    names bound inside one, and (in notebook order) any top-level name assigned from those."""
    tainted: set[str] = set()
    for i in _code_cells(nb):
        src = nb.cells[i].source
        lines = src.splitlines()
        inside, solution_lines = False, set()
        for n, line in enumerate(lines, 1):
            if "### BEGIN SOLUTION" in line:
                inside = True
            elif "### END SOLUTION" in line:
                inside = False
            elif inside:
                solution_lines.add(n)
        try:
            tree = ast.parse(src)
        except SyntaxError:  # IPython magics: no solution blocks there
            continue
        for node in tree.body:
            span = set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
            reads = _names(node, ast.Load)
            bound = ({node.name} if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     else _names(node, ast.Store))
            if span & solution_lines or reads & tainted:
                tainted |= bound
    return tainted


@pytest.mark.parametrize("lesson", ALL_LESSONS)
def test_final_asserts_never_use_a_learners_answer(lesson):
    """A learner who skips the exercises still passes the lesson's own final asserts."""
    _, nb = _lesson(lesson)
    final = ast.parse(nb.cells[_code_cells(nb)[-1]].source)
    used = _names(final, ast.Load) - _names(final, ast.Store)  # its own loop variables are its own
    assert not used & _solution_names(nb), f"the final cell reads {sorted(used & _solution_names(nb))}"


def test_solution_names_follow_answers_through_assignments():
    nb = nbformat.v4.new_notebook(cells=[
        new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n\ndata = 3"),
        new_code_cell("y = f(data)\nz = data + 1"),
        new_code_cell("w = [y]\ncheck(lambda: [f(k) for k in range(3)])"),
    ])
    assert _solution_names(nb) == {"f", "y", "w"}  # not data, z, nor the comprehension's k


def _update(w, i, q, h_inv_row, *, power=1, sign=1, flip=False):
    err = ((q - w[:, i]) if flip else (w[:, i] - q)) / h_inv_row[i] ** power
    w[:, i:] -= sign * err[:, None] * h_inv_row[None, i:]
    return err


BROKEN_GPTQ = {  # GPTQ's one-column update (exercise 06.6), broken the ways a learner or a refactoring might
    "error pushed the wrong way": lambda w, i, q, h: _update(w, i, q, h, sign=-1),
    "error divided by [H^-1]_ii squared": lambda w, i, q, h: _update(w, i, q, h, power=2),
    "error sign flipped": lambda w, i, q, h: _update(w, i, q, h, flip=True),
}


def test_lesson_06_final_asserts_catch_a_broken_gptq_update(monkeypatch):
    """Lesson 06's GPTQ asserts, read from its final cell and run on a random layer with correlated
    inputs, pass with labkit's column update and fail with each broken one (the notebook-wide run
    above breaks the quantization formula instead; this costs a second, not a lesson run)."""
    import torch

    import labkit.quantize.gptq as gptq
    from labkit import quantize as Q

    _, nb = _lesson("06")
    final = nb.cells[_code_cells(nb)[-1]].source
    lines = [ln.strip() for ln in final.splitlines() if ln.startswith("assert") and "GPTQ" in ln]
    assert len(lines) == 2, lines
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g) @ torch.randn(64, 64, generator=g)
    w = torch.randn(32, 64, generator=g)
    h = Q.hessian(x, in_features=64)

    def lesson_asserts():
        w_hat = {"RTN": Q.rtn_weight(w, bits=3, group_size=32), "GPTQ": gptq.gptq_weight(w, h, bits=3, group_size=32)}
        ns = {"w_hat": w_hat, "w_obs": gptq.obs_reference(w, h, bits=3, group_size=32),
              "layer_err": {k: Q.layer_error(w, v, x) for k, v in w_hat.items()}}
        for line in lines:
            exec(line, ns)

    lesson_asserts()
    for name, broken in BROKEN_GPTQ.items():
        monkeypatch.setattr(gptq, "column_update", broken)
        with pytest.raises(AssertionError):
            lesson_asserts()
            print(f"not caught: {name}")


def test_each_broken_lesson_names_the_assert_that_catches_it():
    assert set(CAUGHT_BY) == set(BROKEN)
    for lesson, piece in CAUGHT_BY.items():
        _, nb = _lesson(lesson)
        final = nb.cells[_code_cells(nb)[-1]].source
        assert sum(piece in line for line in final.splitlines()) == 1, (lesson, piece)
