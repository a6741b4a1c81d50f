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
import numbers
import os
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from IPython import get_ipython
from IPython.display import display

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

    def _ipython_display_(self) -> None:
        """Show the banner, unless :func:`check` already showed it in the cell running now.

        ``check(...)`` as a cell's last expression would otherwise appear twice: once from
        ``check`` itself and once from Jupyter echoing the returned value. Showing the same
        result again in a later cell still works.
        """
        shell = _shell()
        if shell is not None and getattr(self, "_shown_in", None) == shell.execution_count:
            return
        _show(self, shell)


def _shell():
    """The running IPython shell (a notebook's kernel), or None in plain Python."""
    return get_ipython()


def _show(result: CheckResult, shell) -> None:
    """Display ``result`` once (HTML in Jupyter, text elsewhere) and remember the cell it was shown in."""
    if shell is None:
        print(result)
        return
    display({"text/plain": str(result), "text/html": result._repr_html_()}, raw=True)
    object.__setattr__(result, "_shown_in", shell.execution_count)


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _tensor_difference(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str:
    if got.dtype != expected.dtype:
        return f"dtype {got.dtype}, expected {expected.dtype}"
    if got.shape != expected.shape:
        return f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    g, e = got.detach().cpu(), expected.detach().cpu()
    if g.is_floating_point() or g.is_complex():
        bad = ~torch.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
    else:
        bad = g != e
    if not bad.any():
        return ""
    where = tuple(bad.nonzero()[0].tolist())
    return (f"{int(bad.sum())} of {bad.numel()} values differ, first at index {where}: "
            f"got {g[where].item()!r}, expected {e[where].item()!r}")


def _difference(got: Any, expected: Any, rtol: float, atol: float) -> str:
    """"" when ``got`` matches ``expected``, else what differed (used by :func:`check`).

    Tensors must agree in dtype and shape exactly (a float tensor is not a bool mask, an unrounded
    float is not an integer code, a (6, 7) is not a (42,)), then in value: with tolerance
    ``|got - expected| <= atol + rtol * |expected|`` for floating dtypes, exactly otherwise.
    Python numbers: an int expected must come back as that exact int; a float expected allows
    the same tolerance. Lists, tuples and dicts are compared item by item.
    """
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"got a {type(got).__name__}, expected a tensor"
        return _tensor_difference(got, expected, rtol, atol)
    if isinstance(expected, np.ndarray):
        got_array = np.asarray(got)
        if got_array.shape != expected.shape:
            return f"shape {got_array.shape}, expected {expected.shape}"
        return _tensor_difference(torch.as_tensor(got_array, dtype=torch.as_tensor(expected).dtype),
                                  torch.as_tensor(expected), rtol, atol)
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"got a {type(got).__name__}, expected a {type(expected).__name__}"
        if len(got) != len(expected):
            return f"got {len(got)} items, expected {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            if why := _difference(g, e, rtol, atol):
                return f"item {i}: {why}"
        return ""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"got a {type(got).__name__}, expected a dict"
        if got.keys() != expected.keys():
            return f"keys {sorted(map(str, got))}, expected {sorted(map(str, expected))}"
        for k in expected:
            if why := _difference(got[k], expected[k], rtol, atol):
                return f"[{k!r}]: {why}"
        return ""
    if _number(expected) and not isinstance(expected, numbers.Integral):
        if not _number(got):
            return f"got {_short(got)} ({type(got).__name__}), expected the number {expected!r}"
        return "" if math.isclose(got, expected, rel_tol=rtol, abs_tol=atol) else f"got {got!r}, expected {expected!r}"
    if _number(expected):  # an int: counts, sizes, codes are exact
        if not _number(got) or not isinstance(got, numbers.Integral):
            return f"got {_short(got)} ({type(got).__name__}), expected the int {expected!r}"
        return "" if got == expected else f"got {got!r}, expected {expected!r}"
    if isinstance(expected, bool) and not isinstance(got, (bool, np.bool_)):
        return f"got {_short(got)} ({type(got).__name__}), expected the bool {expected!r}"
    if (expected is None or isinstance(expected, str)) and type(got) is not type(expected):
        return f"got {_short(got)} ({type(got).__name__}), expected {_short(expected)}"
    return "" if got == expected else f"got {_short(got)}, expected {_short(expected)}"


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
                why = _difference(got, expected, rtol, atol)
                ok = why == ""
        except Exception as err:
            ok, why = False, f"could not judge the result {_short(got)}: {err}"
        result = CheckResult(exercise, PASS if ok else FAIL, "correct" if ok else why, hint)
    _log(result)
    if not quiet:
        _show(result, _shell())
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
