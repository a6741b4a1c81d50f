"""Checked exercises: the format every notebook uses.

An exercise is a function the learner completes between nbgrader's solution markers, then a
call to :func:`check` that runs it and prints a clear verdict with a hint::

    def peak_gflops(cores, ghz, flops_per_cycle):
        ### BEGIN SOLUTION
        return cores * ghz * flops_per_cycle
        ### END SOLUTION

    check("01.1 peak", lambda: peak_gflops(2, 3.0, 32), expected=192.0,
          hint="cores x clock (GHz) x FLOPs per cycle per core")

In the student version the solution is replaced by ``raise NotImplementedError``; ``check``
then reports "not done" instead of crashing, so the rest of the notebook still runs. Keep the
learner's work inside a function for that reason, and never let later cells depend on it.

When ``$LABKIT_CHECK_LOG`` names a file, every verdict is also appended there as one JSON line,
which is how ``labkit grade`` collects results from notebooks it runs headless.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from labkit import _args

LOG_ENV = "LABKIT_CHECK_LOG"
PASS, FAIL, NOT_DONE, ERROR = "pass", "fail", "not done", "error"


@dataclass(frozen=True)
class CheckResult:
    exercise: str
    status: str  # pass | fail | not done | error
    message: str
    hint: str = ""

    def __post_init__(self):
        _args.fields(self)

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        icon = {PASS: "PASS", FAIL: "FAIL", NOT_DONE: "NOT DONE", ERROR: "ERROR"}[self.status]
        text = f"[{icon}] exercise {self.exercise}: {self.message}"
        if self.status != PASS and self.hint:
            text += f"\n        hint: {self.hint}"
        return text

    def _repr_html_(self) -> str:
        colour = {PASS: "#1a7f37", FAIL: "#b42318", NOT_DONE: "#8a6d00", ERROR: "#b42318"}[self.status]
        hint = f"<br><i>hint: {self.hint}</i>" if self.status != PASS and self.hint else ""
        return (f'<div style="border-left:4px solid {colour};padding:4px 8px">'
                f"<b style='color:{colour}'>{self.status.upper()}</b> exercise {self.exercise}: {self.message}{hint}</div>")


def _close(got: Any, expected: Any, rtol: float, atol: float) -> bool:
    if isinstance(expected, torch.Tensor) or isinstance(got, torch.Tensor):
        g, e = torch.as_tensor(got), torch.as_tensor(expected)
        if g.shape != e.shape:
            return False
        if g.dtype == torch.bool or e.dtype == torch.bool or not (g.is_floating_point() or e.is_floating_point()):
            return bool(torch.equal(g.to(e.dtype), e))
        return bool(torch.allclose(g.double(), e.double(), rtol=rtol, atol=atol))
    if isinstance(expected, np.ndarray):
        return _close(torch.as_tensor(np.asarray(got)), torch.as_tensor(expected), rtol, atol)
    if isinstance(expected, (list, tuple)):
        return (isinstance(got, (list, tuple)) and len(got) == len(expected)
                and all(_close(g, e, rtol, atol) for g, e in zip(got, expected)))
    if isinstance(expected, dict):
        return isinstance(got, dict) and got.keys() == expected.keys() and all(
            _close(got[k], expected[k], rtol, atol) for k in expected)
    if isinstance(expected, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return math.isclose(got, expected, rel_tol=rtol, abs_tol=atol)
    return got == expected


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check(exercise: str, attempt: Callable[[], Any], *, expected: Any = None,
          test: Callable[[Any], bool | str] | None = None, hint: str = "", rtol: float = 1e-4,
          atol: float = 1e-6, quiet: bool = False) -> CheckResult:
    """Run ``attempt()`` and judge its result, printing (and returning) a :class:`CheckResult`.

    Give either ``expected`` (compared with tolerance for numbers and tensors, ``==`` otherwise)
    or ``test``, a function of the result returning True/False or an error message string
    ("" or True means pass). A ``NotImplementedError`` means "not done"; any other exception is
    reported with its last line, never raised.
    """
    _args.text("exercise", exercise)
    _args.function("attempt", attempt)
    if test is not None:
        _args.function("test", test)
    _args.text("hint", hint, non_empty=False)
    _args.non_negative_float("rtol", rtol)
    _args.non_negative_float("atol", atol)
    _args.boolean("quiet", quiet)
    if (expected is None) == (test is None):
        raise ValueError("give exactly one of expected= or test=")
    try:
        got = attempt()
    except NotImplementedError:
        result = CheckResult(exercise, NOT_DONE, "not done yet: replace `raise NotImplementedError` with your code", hint)
    except Exception as err:  # the learner's bug: report it, don't crash the notebook
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        result = CheckResult(exercise, ERROR, f"your code raised {last}", hint)
    else:
        try:
            if test is not None:
                verdict = test(got)
                if isinstance(verdict, str):
                    ok, why = verdict == "", verdict
                else:
                    ok, why = bool(verdict), f"got {_short(got)}"
            else:
                ok = _close(got, expected, rtol, atol)
                why = "" if ok else f"got {_short(got)}, expected {_short(expected)}"
        except Exception as err:
            ok, why = False, f"could not judge the result {_short(got)}: {err}"
        result = CheckResult(exercise, PASS if ok else FAIL, "correct" if ok else why, hint)
    _log(result)
    if not quiet:
        try:
            from IPython import get_ipython
            from IPython.display import display

            if get_ipython() is not None:
                display(result)
            else:
                print(result)
        except ImportError:
            print(result)
    return result


def _log(result: CheckResult) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(asdict(result)) + "\n")


def summary(results: list[CheckResult]) -> str:
    """``'3/4 exercises passed'`` plus one line per exercise."""
    _args.sequence("results", results, of=CheckResult, what="a list of CheckResult")
    done = sum(r.passed for r in results)
    return "\n".join([f"{done}/{len(results)} exercises passed"] + [str(r) for r in results])
