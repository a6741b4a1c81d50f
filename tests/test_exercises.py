"""Every exercise of lessons 00-09: its check passes the solution and fails plausible wrong answers.

Without running the notebooks. For each exercise the test reads the exercise cell (the code cell
whose ``check`` names it) with nbformat, runs the lesson's import statements (from its first code
cell) and the little state the cell needs in a fresh namespace, swaps ``check`` for a recorder,
then executes the cell three ways: as written (the instructor's solution must pass), with the
student stub (must be "not done") and once per wrong answer (must be "fail"). A wrong answer is
an edit of the solution block only - ``int(`` for ``round(``, a missing ``* T * T``, the pruned
weights returned instead of the mask - or a whole new body; the check line is never touched.

State the cells read from earlier in their notebook (see ``STATE``, keyed by lesson, then by
exercise number for state only one exercise needs): 00 loads the MNIST subset and its loaders as
the lesson does; 01 times a two-size matmul sweep with labkit's sweep and takes a made-up ridge
point; 02 measures a small MLP's memory breakdown instead of the 24-layer one; 03 loads the
digits and uses a made-up fitted cost model (alpha 0.2 ms, 3 GB/s, 0.1 ms per call), since
fitting one needs processes; 05.5 trains the lesson's fast-mode teacher (marked slow); 06.5
builds an MLP whose three layers are ranked differently by max|w|, by rms(w) and by their ratio
(the trap); 07.4 uses random logits whose band is T = 2-4; 08 uses made-up measured rows and
gains (the pure functions are what the exercises test), 08.4 exports a small untrained CNN to
ONNX three ways (marked slow); 09 uses a two-layer GPT and a made-up bandwidth instead of
measuring one.
"""

from __future__ import annotations

import ast
import re
import textwrap
from functools import cache
from pathlib import Path

import nbformat
import pytest

from labkit.checks import CheckResult, check

LESSONS = Path(__file__).parent.parent / "notebooks"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"

# code run after the lesson's imports, for the names the exercise cells read
STATE = {
    "00": ['mnist = data.load_dataset("mnist_subset")\n'
           'loaders = data.make_loaders(mnist, batch_size=64, generator=train.seed_everything(0))'],
    "00.4": ["mlp = models.MLP()"],
    "01": ['sweep = hardware.matmul_sweep((16, 64), (torch.float32,), device="cpu", min_run_time=0.01)\n'
           'ridge = 25.0  # FLOP/byte: 500 GFLOP/s over 20 GB/s'],
    "02": ["m = models.MLP((64,), hidden=(64, 64), num_classes=10)\n"
           "breakdown = {'Adam': memory.training_memory(m, torch.optim.Adam(m.parameters()), torch.randn(32, 64),\n"
           "                                            torch.randint(0, 10, (32,)))}\n"
           "n_params = models.count_parameters(m)"],
    # the lesson's 24-layer MLP, narrower and on a smaller batch (the byte ratios depend on neither)
    "02.6": ["plain = models.MLP((64,), hidden=(64,) * 24, num_classes=10)\n"
             "xd = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))\n"
             "plain_bytes = memory.saved_activation_bytes(plain.layers, xd)"],
    "03": ['DIGITS = load_arrays("digits")\nmodel = cost.CostModel(2e-4, 3e9, 1.0, 4, overhead=1e-4)'],
    # the lesson's fast-mode teacher (its first conv, 288 weights, is the layer 90% pruning breaks)
    "05.5": ['loaders = make_loaders(load_dataset("mnist_subset", limit=2000), batch_size=128, generator=seed_everything(0))\n'
             'seed_everything(0)\n'
             'teacher = SmallCNN(widths=(32, 64))\n'
             'fit(teacher, loaders["train"], epochs=2, lr=3e-3, device="cpu", progress=False)\n'
             'fit(teacher, loaders["train"], epochs=1, lr=3e-4, device="cpu", progress=False)\n'
             'teacher.eval()\n'
             'def val_acc(model):\n'
             '    return evaluate(model, loaders["val"], device="cpu")["accuracy"]\n'
             'sens = prune.sensitivity_analysis(teacher, loaders["val"], amounts=[0.5, 0.9], device="cpu")'],
    "06.5": ["fp32 = MLP((64,), hidden=(64, 64), num_classes=10)\n"
             "gen = torch.Generator().manual_seed(0)\n"
             "first, middle, last = [m for m in fp32.modules() if isinstance(m, torch.nn.Linear)]\n"
             "with torch.no_grad():\n"
             "    first.weight.uniform_(-0.1, 0.1, generator=gen)  # the largest max|w|, but flat: the best SQNR\n"
             "    middle.weight.normal_(0, 0.005, generator=gen)  # the smallest rms(w), a normal's crest factor\n"
             "    last.weight.normal_(0, 0.01, generator=gen)\n"
             "    last.weight[0, 0] = 0.09  # one outlier: the worst"],
    # rank 0's count on 4 ranks for the lesson's block (B=2, T=16, d=32): tests/test_tp_block.py asserts these formulas
    "04.5": ["RANKS, BLOCK = 4, dict(d=32, heads=4, seq=16, batch=2)\n"
             "b0 = {'sp': {'calls': ['all_gather', 'reduce_scatter'] * 4,\n"
             "             'bytes': {'all_gather': 4 * 2 * 16 * 32 * 4 // 4, 'reduce_scatter': 4 * 2 * 16 * 32 * 4}}}"],
    # logits whose averaged top-1 / runner-up band (runner-up >= 10%, top-1 >= 50%) is T = 2, 3, 4
    "07.4": ["z_test = 10 * torch.randn(300, 10, generator=torch.Generator().manual_seed(0))"],
    "08": ['rows = [{"step": "teacher", "latency_ms": 5.0, "accuracy": 0.99},\n'
           '        {"step": "student", "latency_ms": 1.0, "accuracy": 0.97},\n'
           '        {"step": "pruned", "latency_ms": 1.2, "accuracy": 0.96},\n'
           '        {"step": "int8", "latency_ms": 0.6, "accuracy": 0.97}]\n'
           'gains = [{"step": "student", "faster_x": 5.0}, {"step": "pruned", "faster_x": 0.83},\n'
           '         {"step": "int8", "faster_x": 2.0}]'],
    "08.4": ["_tmp = tempfile.TemporaryDirectory()  # removed when the test process ends\n"
             "workdir = Path(_tmp.name)\n"
             "x_train = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))\n"
             "folded = fold_batchnorm(SmallCNN(widths=(4, 8)).eval())\n"
             "int8 = quantize_(copy.deepcopy(folded), WeightOnlyConfig(bits=8))\n"
             "float_onnx = strip_onnx_metadata(export(folded, folded.example_inputs(2), workdir / 'float.onnx'))\n"
             "final_onnx = onnx_with_int8_weights(float_onnx, int8, workdir / 'final_int8.onnx')\n"
             "ort_dynamic = quantize_onnx(float_onnx, workdir / 'ort_dynamic_int8.onnx')"],
    # 40 kB, 2x, 1 point: BN folded (as accurate as pruned, smaller); each limit left out picks another row
    "08.5": ['rows = [{"step": "teacher", "size_kb": 400.0, "speedup": 1.0, "accuracy": 0.980},\n'
             '        {"step": "distilled student", "size_kb": 60.0, "speedup": 5.0, "accuracy": 0.978},\n'
             '        {"step": "pruned + fine-tuned", "size_kb": 30.0, "speedup": 6.0, "accuracy": 0.975},\n'
             '        {"step": "BN folded", "size_kb": 29.5, "speedup": 6.5, "accuracy": 0.975},\n'
             '        {"step": "int8 weights", "size_kb": 8.0, "speedup": 1.5, "accuracy": 0.977},\n'
             '        {"step": "ORT static int8 (QDQ)", "size_kb": 9.0, "speedup": 3.0, "accuracy": 0.972},\n'
             '        {"step": "final (ONNX Runtime)", "size_kb": 8.0, "speedup": 7.0, "accuracy": 0.965}]\n'
             'by = {r["step"]: r for r in rows}\n'
             'acc = {"teacher": 0.980}'],
    "09": ["CONTEXT = 32\n"
           "timing_cfg = GPTConfig(block_size=128, n_layer=2, n_head=4, n_embd=64)\n"
           "timing = GPT(timing_cfg).eval()\n"
           "w_bytes = decode_weight_bytes(timing)\n"
           "kv_read = kv_cache_bytes(timing_cfg, CONTEXT)\n"
           "bandwidth = 12.5  # GB/s, made up: the lesson measures it"],
}

# exercise -> plausible wrong answers: a list of (old, new) edits of the solution block, or a new body
WRONG = {
    "00.1 split sizes": [
        [("cut1 = round(", "cut1 = int("), ("cut2 = round(", "cut2 = int(")],  # floor instead of round
        """n = per_class * n_classes  # split the whole set, not each class
        train = round(n * (1 - val_fraction - test_fraction))
        val = round(n * (1 - test_fraction)) - train
        return {"train": train, "val": val, "test": n - train - val}""",
    ],
    "00.2 steps per epoch": [
        "return n_examples // batch_size",
        "return round(n_examples / batch_size)",
        "return n_examples // batch_size + 1",
    ],
    "00.3 Linear parameters": [
        "return in_features * out_features",
        [("(out_features if bias", "(in_features if bias")],
    ],
    "00.4 size on disk": [
        "return models.count_parameters(model)",  # a byte per number
        "return 8 * models.count_parameters(model)",  # Python floats are 8 bytes, tensors' are not
        "return 2 * models.count_parameters(model)",  # half precision assumed
    ],
    "01.1 peak": [
        [("lanes * 2 * fma_units", "lanes * fma_units")],  # an FMA counted as one FLOP
        [("lanes * 2 * fma_units", "lanes * 2")],  # one FMA unit
    ],
    "01.2 GFLOP/s": [
        "return n**3 / seconds / 1e9",
        "return 2 * n**3 / seconds / 1e6",
    ],
    "01.3 intensity": [
        [("3 * n * n", "2 * n * n")],  # forgot the output matrix
        [("* bytes_per_element", "* 4")],
    ],
    "01.4 bound": [
        'return "compute" if bandwidth_gbs * intensity < peak_gflops else "memory"',
        'return "memory" if intensity < bandwidth_gbs / peak_gflops else "compute"',  # ridge point upside down
    ],
    "01.5 decode vs training": [
        [('"memory" if intensity(b) < ridge_point else "compute"',
          '"compute" if intensity(b) < ridge_point else "memory"')],  # the comparison upside down
        'return {b: "memory" for b in (1, 4096)}',  # "a CPU is always memory-bound"
        [("intensity(b) < ridge_point", "intensity(b) < 1 / ridge_point")],  # ridge taken as bandwidth / peak
    ],
    "02.1 workers needed": [
        [("math.ceil", "math.floor")],
        [("math.ceil", "round")],
        "return int(data_s / compute_s) + 1",
    ],
    "02.2 exact integers": [
        "return 2 ** mantissa_bits",
        "return 2 ** (mantissa_bits + 1) - 1",
    ],
    "02.3 break-even": [
        [(" / 1e3", "")],  # milliseconds taken for seconds
        "return compile_s / ((eager_ms - compiled_ms) / 1e3)",  # a negative break-even when compiling is slower
    ],
    "02.4 Adam bytes": [
        "return 3 * n_params * bytes_per_value",
        "return 2 * n_params * bytes_per_value",
    ],
    "02.6 segments for a memory budget": [
        """return min(range(1, len(layers) + 1),
                  key=lambda s: memory.saved_activation_bytes(memory.CheckpointedSequential(layers, s), x))""",  # least memory
        "return round(math.sqrt(len(layers)))",  # the sqrt(n) rule of thumb, unmeasured
        "return len(layers)",  # "more segments, less memory"
        """return max(s for s in range(1, len(layers) + 1)
                   if memory.saved_activation_bytes(memory.CheckpointedSequential(layers, s), x) <= budget_bytes)""",
    ],
    "02.5 Adam step": [
        [("m / (1 - b1**t), v / (1 - b2**t)", "m, v")],  # no bias correction
        [("(1 - b2) * g * g", "(1 - b2) * g")],
    ],
    "03.1 shard gradients": [
        [("return total / p", "return total")],  # summed, not averaged
        [("        model.zero_grad()\n", "")],  # gradients accumulate across shards
    ],
    "03.2 ring bytes": [
        [("2 * (p - 1) / p", "(p - 1) / p")],  # one phase only
        "return 2 * nbytes",
    ],
    "03.3 cost model": [
        "return 2 * (p - 1) / p * nbytes / bandwidth",  # no start-up cost
        "return alpha + 2 * (p - 1) / p * nbytes / bandwidth",  # a single rank still pays alpha
    ],
    "03.5 bucket size": [
        [("latency = overhead + 2 * (p - 1) * alpha", "latency = overhead + alpha")],  # one ring step's latency
        [("latency = overhead + 2 * (p - 1) * alpha", "latency = 2 * (p - 1) * alpha")],  # no per-call overhead
        [("(latency / share - latency)", "latency / share")],  # share of the bandwidth term, not of the total
        [(" * p / (2 * (p - 1))", "")],  # the bytes sent, not the bucket (right at p = 2 only)
    ],
    "03.4 ZeRO-2": [
        "return 4 * P + 4 * P + 8 * P / p",  # stage 1
        "return (4 * P + 4 * P + 8 * P) / p",  # stage 3
    ],
    "03.6 sampler shards": [
        "return -(-length // p), -(-length // p)",  # rounded up, as drop_last=False pads the shards
        "return length // p, min(length, epochs * (length // p))",  # a fresh shard every epoch: set_epoch's behaviour
        "return length, length",  # every rank reads the whole dataset
        "return length // p, length",  # "over several epochs a rank sees everything"
    ],
    "04.1 bubble fraction": [
        "return (p - 1) / m",
        "return (p - 1) / (m + p)",
    ],
    "04.4 micro-batches for a 10% bubble": [
        [(">= max_bubble", "> max_bubble")],  # m = 27: exactly 10%, not under it
        "return int((p - 1) / max_bubble - p)",  # m = 26: off by one
        "return round((p - 1) / max_bubble)",  # m = 30: under 10%, but not the smallest
    ],
    "04.2 who runs when": [
        [("i = t - stage", "i = t + stage")],
        [("0 <= i < m", "0 <= i <= m")],
    ],
    "04.3 shard shapes": [
        'return {"column": (out_features, in_features // p), "row": (out_features // p, in_features)}',
        'return {"column": (in_features, out_features // p), "row": (in_features // p, out_features)}',
    ],
    "04.5 sequence-parallel collectives": [
        [('"all_gather": (4, act // p)', '"all_gather": (4, act)')],  # gathers whole activations, not shards
        [("(4, act // p), \"reduce_scatter\": (4, act)", "(2, act // p), \"reduce_scatter\": (2, act)")],  # forward only
        [("(4, act // p), \"reduce_scatter\": (4, act)", "(4, act), \"reduce_scatter\": (4, act // p)")],  # swapped
        [("act = batch * seq * d * nbytes", "act = batch * seq * d")],  # numbers, not bytes
    ],
    "05.1 magnitude mask": [
        [("return mask.view_as(weight)", "return weight * mask.view_as(weight)")],  # the pruned weights
        [("k = round(", "k = int(")],
        [("argsort()[:k]", "argsort(descending=True)[:k]")],  # prunes the largest
        [("return mask.view_as(weight)", "return mask")],  # flat
    ],
    "05.5 per-layer amounts from the sensitivity curves": [
        "return {n: 0.9 for n in prune.prunable_layers(model)}",  # the uniform choice it must beat
        [("rest = min(1.0, target * sum(sizes.values()) / others)", "rest = target")],  # spared, not paid for
        [("key=lambda n: sens[n][-1])", "key=lambda n: -sens[n][-1])")],  # spares the most robust layer
        [("target * sum(sizes.values()) / others", "target * len(sizes) / (len(sizes) - 1)")],  # layers, not weights
    ],
    "05.2 cubic schedule": [
        [("(1 - (1 - progress) ** 3)", "progress")],
        [("min(step / end_step, 1.0)", "step / end_step")],
    ],
    "05.3 bitmask storage": [
        [("-(-n // 8)", "n // 8")],
        [("round(sparsity * n)", "int(sparsity * n)")],
        [("-(-n // 8)", "n")],  # a byte per flag
    ],
    "05.4 conv FLOPs": [
        [("2 * c_out", "c_out")],  # multiply-adds, not FLOPs
        [("c_out * c_in", "c_out")],
    ],
    "05.6 wanda mask": [
        [("weight.abs() * sq_norms.sqrt()[None, :]", "weight.abs()")],  # magnitude: the inputs ignored
        [("sq_norms.sqrt()[None, :]", "sq_norms[None, :]")],  # the squared norm, not the norm
        [("torch.sort(scores, dim=1, stable=True)", "torch.sort(scores, dim=1, descending=True, stable=True)")],
        [("k = round(sparsity * weight.shape[1])", "k = round(sparsity * weight.shape[0])")],  # rows, not inputs
    ],
    "06.1 scale and zero-point": [
        [("int(qmin - round(lo / scale))", "qmin - lo / scale")],  # an unrounded zero-point
        [("round(lo / scale)", "int(lo / scale)")],
        [("(hi - lo) / (qmax - qmin)", "(hi - lo) / 2**bits")],
    ],
    "06.2 quantize a vector": [
        [("torch.round(x / scale + zero_point)", "torch.floor(x / scale + zero_point + 0.5)")],  # halves up
        "return torch.round(x / scale + zero_point).to(torch.int64)",  # not clamped
        [(".to(torch.int64)", "")],  # float codes
        [("torch.round(x / scale + zero_point)", "(x / scale + zero_point)")],  # truncated by the cast
    ],
    "06.5 predict the worst layer": [
        [(".abs().max() / m.weight.detach().pow(2).mean().sqrt()", ".abs().max()")],  # the widest range first
        [(".abs().max() / m.weight.detach().pow(2).mean().sqrt()", ".pow(2).mean().sqrt()"),
         ("reverse=True", "reverse=False")],  # the smallest typical weight first
        [("reverse=True", "reverse=False")],  # best first
        [("return sorted(crest, key=crest.get, reverse=True)", "return [max(crest, key=crest.get)]")],  # the worst only
    ],
    "06.3 pack two 4-bit values": [
        "return (high & 0xF) | ((low & 0xF) << 4)",
        [("<< 4", "<< 8")],
    ],
    "06.4 SQNR per bit": [
        [("10 * math.log10", "20 * math.log10")],
        "return 6 * extra_bits",
    ],
    "06.6 GPTQ column update": [
        [("/ h_inv_row[i]", "/ h_inv_row[i] ** 2")],  # the OBS error divides by [H^-1]_ii once
        [("w[:, i:] -=", "w[:, i + 1:] -="), ("h_inv_row[None, i:]", "h_inv_row[None, i + 1:]")],  # column i left unrounded
        [("w[:, i:] -=", "w[:, i:] +=")],  # the error pushed the wrong way
        [("(w[:, i] - q)", "(q - w[:, i])")],  # the sign of the error flipped
        "    err = (w[:, i] - q) / h_inv_row[i]\n    w[:, i] = q\n    return err",  # RTN: no feedback
    ],
    "07.1 softmax at temperature T": [
        [("    z = z - z.max(dim=-1, keepdim=True).values\n", "")],  # overflows on large logits
        [("z = logits / T", "z = logits")],
        [("e.sum(dim=-1", "e.sum(dim=0")],
    ],
    "07.4 which temperature": [
        "return temperatures[0]",  # no softening: the runner-up is invisible
        "return temperatures[-1]",  # as soft as possible: the top-1 is lost
        """return max(T for T in temperatures
                   if F.softmax(z / T, dim=1).topk(2, dim=1).values.mean(dim=0)[1] >= 0.10)""",  # top-1 ignored
        [("F.softmax(z / T, dim=1)", "F.softmax(z * T, dim=1)")],  # multiplied: sharper, never in the band
    ],
    "07.2 the distillation loss": [
        [(" * T * T", "")],
        [(".sum(dim=1).mean()", ".mean()")],  # KL averaged over classes too
        [("(1 - alpha) * hard + alpha * soft", "alpha * hard + (1 - alpha) * soft")],
    ],
    "07.3 gap closed": [
        "return (teacher - distilled) / (teacher - scratch)",  # the gap left
        "return (distilled - scratch) / teacher",
    ],
    "07.5 reverse KL": [
        [("(log_ps.exp() * (log_ps - log_pt))", "(log_pt.exp() * (log_pt - log_ps))")],  # the forward KL
        [(".mean() * T * T", ".mean()")],  # no T^2
        [(".sum(-1).mean()", ".mean()")],  # averaged over the vocabulary too
    ],
    "08.1 fold BatchNorm": [
        [("torch.sqrt(var + eps)", "torch.sqrt(var)")],
        [("s * (b - mean) + beta", "s * b + beta")],
        [("w * s.reshape(-1, 1, 1, 1)", "w * s")],  # broadcasts along the kernel width
    ],
    "08.4 which kernel runs the convolutions": [
        'return {"labkit int8 weights": "ConvInteger", "ORT dynamic int8": "ConvInteger", '
        '"ORT static int8 (QDQ)": "QLinearConv"}',  # int8 storage taken for int8 compute
        'return {"labkit int8 weights": "Conv", "ORT dynamic int8": "QLinearConv", '
        '"ORT static int8 (QDQ)": "QLinearConv"}',  # dynamic taken for fused
        'return {"labkit int8 weights": "Conv", "ORT dynamic int8": "ConvInteger", '
        '"ORT static int8 (QDQ)": "Conv"}',  # QDQ taken for fake quantization run in float
    ],
    "08.2 the step that buys the most latency": [
        [("max(gains", "min(gains")],
        [('["step"]', "")],  # the row, not its name
    ],
    "08.3 Pareto front": [
        """return [r["step"] for r in rows
                if not any(o[x] < r[x] and o["accuracy"] > r["accuracy"] for o in rows)]""",  # ties never dominate
        """return [r["step"] for r in rows
                if not any(o[x] <= r[x] and o["accuracy"] >= r["accuracy"] for o in rows)]""",  # everything beats itself
    ],
    "08.5 ship under a budget": [
        [('budget["max_kb"] and r["speedup"] >= budget["min_speedup"]', 'budget["max_kb"]')],  # no speed limit
        [('r["size_kb"] <= budget["max_kb"] and ', "")],  # no size limit
        [('key=lambda r: (r["accuracy"], -r["size_kb"])', 'key=lambda r: r["accuracy"]')],  # ties not broken by size
        [('max(ok, key=lambda r: (r["accuracy"], -r["size_kb"]))', 'min(ok, key=lambda r: r["size_kb"])')],  # smallest
        [('["step"] if ok', " if ok")],  # the row, not its name
    ],
    "09.1 predicted tokens/s": [
        "return bandwidth_gbs * 1e9 / weight_bytes",  # the KV cache left out
        "return batch * bandwidth_gbs * 1e9 / (batch * (weight_bytes + kv_bytes))",  # weights read per sequence
        "return bandwidth_gbs * 1e9 / (weight_bytes + batch * kv_bytes)",  # one token per step, whatever the batch
    ],
    "09.2 KV cache bytes": [
        [("2 * config.n_layer", "config.n_layer")],  # K only
        "return 2 * config.n_layer * seq_len * config.n_embd * bytes_per_number",  # one sequence
        [("config.n_embd", "config.n_head")],  # heads, not their width
    ],
    "09.3 expected tokens per target call": [
        [("alpha ** (k + 1)", "alpha ** k")],  # the bonus token left out
        [("return (1 - alpha ** (k + 1)) / (1 - alpha)", "return 1 + k * alpha")],  # linear in alpha
        [("return k + 1", "return k")],  # every draft accepted, no bonus token
    ],
}


@cache
def _notebook(lesson: str):
    (path,) = LESSONS.glob(f"{lesson}_*.ipynb")
    return nbformat.read(path, as_version=4)


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code" and c.get("id") != "colab-setup"]


@cache
def _lesson_namespace(lesson: str) -> dict:
    """The lesson's imports (the import statements of its first code cell after the Colab
    install cell) plus ``STATE[lesson]``."""
    tree = ast.parse(_code(_notebook(lesson))[0])
    imports = ast.Module([n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
    ns: dict = {}
    exec(compile(imports, f"<{lesson} imports>", "exec"), ns)
    for source in STATE.get(lesson, []):
        exec(compile(source, f"<{lesson} state>", "exec"), ns)
    return ns


@cache
def _namespace(number: str) -> dict:
    """The lesson's namespace plus ``STATE[number]`` (``number`` is e.g. "05.5")."""
    ns = dict(_lesson_namespace(number[:2]))
    for source in STATE.get(number, []):
        exec(compile(source, f"<{number} state>", "exec"), ns)
    return ns


def _exercise_cell(lesson: str, name: str) -> str:
    (source,) = [s for s in _code(_notebook(lesson)) if f'check("{name}"' in s]
    return source


def _edit(source: str, change) -> str:
    """``source`` with its solution block edited: (old, new) pairs inside the block, or a new body."""
    begin, end = source.index(BEGIN), source.index(END)
    block = source[begin:end]
    if isinstance(change, str):
        indent = block.split("\n")[-1]  # the whitespace before END on its line
        body = textwrap.indent(textwrap.dedent(change if change.startswith(" ") else " " * 8 + change).strip("\n"), indent)
        body = "\n".join(line if line.strip() else "" for line in body.split("\n"))
        new = f"{BEGIN}\n{body}\n{indent}"
    else:
        new = block
        for old, replacement in change:
            assert old in new, f"{old!r} is not in the solution block"
            new = new.replace(old, replacement)
    assert new != block
    return source[:begin] + new + source[end:]


def _verdict(number: str, source: str) -> CheckResult:
    ns = dict(_namespace(number))
    results: list[CheckResult] = []

    def record(*args, **kwargs):
        results.append(check(*args, **{**kwargs, "quiet": True}))
        return results[-1]

    ns["check"] = record
    exec(compile(source, f"<exercise {number}>", "exec"), ns)
    assert len(results) == 1, f"the cell ran {len(results)} checks"
    return results[0]


def test_every_exercise_of_lessons_00_to_09_has_wrong_answers_here():
    found = [n for p in sorted(LESSONS.glob("0[0-9]_*.ipynb")) for s in _code(_notebook(p.name[:2]))
             for n in re.findall(r'check\("(\d\d\.\d+ [^"]*)"', s)]
    assert found == list(WRONG)
    numbers = [n.split()[0] for n in found]
    assert len(set(numbers)) == len(numbers), f"two exercises share a number: {numbers}"


# the two that train or export a model, for `make quick` to skip
SLOW = {"05.5 per-layer amounts from the sensitivity curves", "08.4 which kernel runs the convolutions"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in WRONG])
def test_check_passes_the_solution_and_fails_wrong_answers(name):
    number = name.split()[0]
    source = _exercise_cell(number[:2], name)
    right = _verdict(number, source)
    assert right.status == "pass", right.message
    stub = _verdict(number, _edit(source, "raise NotImplementedError"))
    assert stub.status == "not done"
    for change in WRONG[name]:
        wrong = _verdict(number, _edit(source, change))
        assert wrong.status == "fail", f"{change!r} was judged {wrong.status}: {wrong.message}"
        assert wrong.message
