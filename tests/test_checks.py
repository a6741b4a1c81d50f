"""labkit.checks: verdicts for right, wrong, unfinished and crashing answers, and the grading log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from labkit.checks import CheckResult, check, summary


def _not_done():
    raise NotImplementedError


def test_pass_fail_not_done_error(capsys):
    assert check("1", lambda: 2.0000001, expected=2.0).status == "pass"
    wrong = check("2", lambda: 3, expected=2, hint="add one")
    assert wrong.status == "fail" and "expected 2" in wrong.message and "hint: add one" in str(wrong)
    assert check("3", _not_done, expected=1).status == "not done"
    err = check("4", lambda: 1 / 0, expected=1)
    assert err.status == "error" and "ZeroDivisionError" in err.message
    out = capsys.readouterr().out
    assert "[PASS] exercise 1" in out and "[NOT DONE] exercise 3" in out


def test_tensors_arrays_and_containers():
    t = torch.tensor([1.0, 2.0])
    assert check("t", lambda: t + 1e-7, expected=t, quiet=True)
    assert not check("shape", lambda: t[:1], expected=t, quiet=True)
    assert check("mask", lambda: torch.tensor([True, False]), expected=torch.tensor([True, False]), quiet=True)
    assert not check("int", lambda: torch.tensor([1, 2]), expected=torch.tensor([1, 3]), quiet=True)
    assert check("np", lambda: [1.0, 2.0], expected=np.array([1.0, 2.0]), quiet=True)
    assert check("dict", lambda: {"a": 1.0, "b": (1, 2)}, expected={"a": 1.0, "b": (1, 2)}, quiet=True)
    assert not check("dict keys", lambda: {"a": 1.0}, expected={"b": 1.0}, quiet=True)


def test_custom_test_functions():
    assert check("even", lambda: 4, test=lambda v: v % 2 == 0, quiet=True)
    r = check("msg", lambda: 5, test=lambda v: "" if v < 3 else f"{v} is too big", quiet=True)
    assert r.status == "fail" and r.message == "5 is too big"
    assert not check("none", lambda: 1, test=lambda v: None, quiet=True)  # forgetting `return` is a fail
    assert not check("raises", lambda: 1, test=lambda v: v.nope, quiet=True)


def test_bad_use_of_check():
    with pytest.raises(ValueError, match="exactly one"):
        check("x", lambda: 1)
    with pytest.raises(ValueError, match="exactly one"):
        check("x", lambda: 1, expected=1, test=bool)
    with pytest.raises(TypeError, match="callable"):
        check("x", 5, expected=5)
    with pytest.raises(ValueError, match="exercise must be a non-empty str"):
        check("", lambda: 1, expected=1)
    with pytest.raises(TypeError, match="exercise must be a str"):
        check(None, lambda: 1, expected=1)
    with pytest.raises(ValueError, match="rtol"):
        check("x", lambda: 1.0, expected=1.0, rtol=float("nan"))


def test_log_for_grading(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("LABKIT_CHECK_LOG", str(log))
    check("a", lambda: 1, expected=1, quiet=True)
    check("b", _not_done, expected=1, quiet=True)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["exercise"], r["status"]) for r in rows] == [("a", "pass"), ("b", "not done")]


def test_summary_and_html():
    rs = [CheckResult("a", "pass", "correct"), CheckResult("b", "fail", "got 1", "try 2")]
    assert summary(rs).startswith("1/2 exercises passed")
    assert "FAIL" in rs[1]._repr_html_() and "try 2" in rs[1]._repr_html_()
    with pytest.raises(TypeError):
        summary(["pass"])


def test_tensors_must_match_dtype_and_shape_exactly():
    mask = torch.tensor([[True, False], [False, True]])
    as_float = check("m", lambda: mask.float(), expected=mask, quiet=True)
    assert as_float.status == "fail" and "dtype torch.float32, expected torch.bool" in as_float.message
    flat = check("s", lambda: mask.flatten(), expected=mask, quiet=True)
    assert not flat and "shape (4,), expected (2, 2)" in flat.message
    codes = torch.tensor([3, 8, 15])
    unrounded = check("c", lambda: torch.tensor([3.2, 8.0, 15.0]), expected=codes, quiet=True)
    assert not unrounded and "dtype torch.float32, expected torch.int64" in unrounded.message
    assert not check("c2", lambda: torch.tensor([3, 8, 14]), expected=codes, quiet=True)
    assert check("c3", lambda: torch.tensor([3, 8, 15]), expected=codes, quiet=True)
    assert not check("list", lambda: [3, 8, 15], expected=codes, quiet=True)
    off = check("f", lambda: torch.tensor([1.0, 2.5]), expected=torch.tensor([1.0, 2.0]), quiet=True)
    assert not off and "1 of 2 values differ, first at index (1,): got 2.5, expected 2.0" in off.message
    assert check("tol", lambda: torch.tensor([1.0, 2.0]) + 1e-7, expected=torch.tensor([1.0, 2.0]), quiet=True)
    half = check("half", lambda: torch.tensor([1.0], dtype=torch.float16), expected=torch.tensor([1.0]), quiet=True)
    assert not half and "float16" in half.message


def test_ints_are_exact_floats_have_tolerance():
    assert not check("floor", lambda: 349, expected=350, quiet=True)
    cast = check("cast", lambda: 350.0, expected=350, quiet=True)
    assert not cast and "expected the int 350" in cast.message
    assert check("np int", lambda: np.int64(350), expected=350, quiet=True)
    assert not check("bool", lambda: True, expected=1, quiet=True)
    assert check("float", lambda: 350, expected=350.0, quiet=True)  # an int where a float is expected is fine
    assert check("rel", lambda: 1.00001, expected=1.0, quiet=True)
    assert not check("rel2", lambda: 1.01, expected=1.0, quiet=True)
    assert not check("str", lambda: "1.0", expected=1.0, quiet=True)
    assert check("inf", lambda: float("inf"), expected=float("inf"), quiet=True)
    nested = check("n", lambda: {"train": 350, "val": 49.0}, expected={"train": 350, "val": 50}, quiet=True)
    assert not nested and nested.message.startswith("['val']: got 49.0 (float), expected the int 50")
    assert "item 1: got 3, expected 4" in check("l", lambda: [1, 3], expected=[1, 4], quiet=True).message
    assert not check("none", lambda: 0, expected=[None], quiet=True)
    assert check("bools", lambda: [np.bool_(True), False], expected=[True, False], quiet=True)


def test_the_banner_shows_once_per_cell_in_a_kernel():
    """A cell ending in ``check(...)`` shows one banner (not check's plus Jupyter's echo of the result);
    showing the result again in a later cell still works."""
    nb = new_notebook(cells=[new_code_cell("from labkit.checks import check\nr = check('x.1', lambda: 1, expected=2)\nr"),
                             new_code_cell("check('x.2', lambda: 2, expected=2)"),
                             new_code_cell("r")])
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    shown = [[o["data"]["text/plain"] for o in c.outputs if "data" in o] for c in nb.cells]
    assert [len(s) for s in shown] == [1, 1, 1]
    assert shown[0][0].startswith("[FAIL] exercise x.1: got 1, expected 2")
    assert shown[1][0] == "[PASS] exercise x.2: correct" and shown[2] == shown[0]
    assert all("text/html" in o["data"] for c in nb.cells for o in c.outputs if "data" in o)
