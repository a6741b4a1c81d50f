"""labkit.checks: verdicts for right, wrong, unfinished and crashing answers, and the grading log."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

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
