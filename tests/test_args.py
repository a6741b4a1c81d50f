"""labkit._args: the one validation layer. Wrong types -> TypeError, wrong values -> ValueError,
and every message names the argument."""

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from labkit import _args

BAD_TYPES = [None, "3", [1], 2.5j, object()]


@pytest.mark.parametrize("value", BAD_TYPES + [True, 2.0])
def test_positive_int_rejects_wrong_types(value):
    with pytest.raises(TypeError, match="steps"):
        _args.positive_int("steps", value)


@given(st.integers(max_value=0))
def test_positive_int_rejects_non_positive(value):
    with pytest.raises(ValueError, match=f"steps must be an int >= 1, got {value}"):
        _args.positive_int("steps", value)


@given(st.integers(min_value=1))
def test_positive_int_accepts_and_returns_int(value):
    assert _args.positive_int("steps", value) == value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0, 0.0, -1e-9])
def test_positive_float_rejects(value):
    with pytest.raises(ValueError, match="lr"):
        _args.positive_float("lr", value)


@pytest.mark.parametrize("value", BAD_TYPES + [False, torch.tensor(1.0)])
def test_positive_float_rejects_types(value):
    with pytest.raises(TypeError, match="lr"):
        _args.positive_float("lr", value)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=1e-300))
def test_positive_float_accepts(value):
    assert _args.positive_float("lr", value) == value


@given(st.one_of(st.floats(max_value=-1e-12), st.floats(min_value=1 + 1e-12), st.just(math.nan)))
def test_fraction_rejects_out_of_range(value):
    with pytest.raises(ValueError, match="amount"):
        _args.fraction("amount", value)


def test_fraction_bounds_inclusive():
    assert _args.fraction("amount", 0) == 0.0 and _args.fraction("amount", 1) == 1.0


def test_choice():
    assert _args.choice("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match="mode must be one of 'a', 'b'; got 'c'"):
        _args.choice("mode", "c", ("a", "b"))
    with pytest.raises(ValueError, match="mode"):
        _args.choice("mode", ["unhashable"], {"a": 1})


def test_tensor_checks():
    x = torch.zeros(2, 3)
    assert _args.tensor("x", x, dtype="floating", ndim=2, shape=(None, 3), finite=True) is x
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        _args.tensor("x", [1.0])
    with pytest.raises(TypeError, match="x must be an integer tensor, got dtype torch.float32"):
        _args.tensor("x", x, dtype="integer")
    with pytest.raises(TypeError, match="torch.int64"):
        _args.tensor("x", x, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"shape \(\*, 4\)"):
        _args.tensor("x", x, shape=(None, 4))
    with pytest.raises(ValueError, match="1 dimensions"):
        _args.tensor("x", x, ndim=1)
    with pytest.raises(ValueError, match="finite"):
        _args.tensor("x", torch.tensor([1.0, math.nan]), finite=True)
    with pytest.raises(ValueError, match="empty"):
        _args.tensor("x", torch.zeros(0), non_empty=True)


def test_module_and_function():
    lin = nn.Linear(2, 2)
    assert _args.module("model", lin) is lin
    assert _args.module("layer", lin, nn.Linear) is lin
    with pytest.raises(TypeError, match="layer must be nn.Linear, got Conv2d"):
        _args.module("layer", nn.Conv2d(1, 1, 1), nn.Linear)
    with pytest.raises(TypeError, match="fn must be callable"):
        _args.function("fn", 3)


def test_paths(tmp_path):
    assert _args.path("p", str(tmp_path), must_exist=True) == Path(tmp_path)
    with pytest.raises(ValueError, match="no such file"):
        _args.path("p", tmp_path / "missing", must_exist=True)
    with pytest.raises(TypeError, match="p must be a non-empty path"):
        _args.path("p", None)
    with pytest.raises(ValueError, match=r"\.ipynb"):
        _args.path("p", "x.txt", suffix=".ipynb")
    for bad in ("../escape", "a/b", "..", ".hidden", ""):
        with pytest.raises(ValueError, match="name must be a plain file name"):
            _args.file_name("name", bad)
    assert _args.file_name("name", "ok.bin") == "ok.bin"


@pytest.mark.parametrize("raw,expected", [("1", True), ("TRUE", True), (" on ", True), ("yes", True),
                                          ("", False), ("0", False), ("off", False), ("No", False)])
def test_env_flag_words(raw, expected):
    assert _args.env_flag("LABKIT_FAST", {"LABKIT_FAST": raw}) is expected


def test_env_flag_unset_and_bad():
    assert _args.env_flag("LABKIT_FAST", {}) is False
    with pytest.raises(ValueError, match="LABKIT_FAST.*'maybe'"):
        _args.env_flag("LABKIT_FAST", {"LABKIT_FAST": "maybe"})


def test_boolean_text_sequence_mapping():
    assert _args.boolean("flag", False) is False
    for bad in (0, "no", None):
        with pytest.raises(TypeError, match="flag must be True or False"):
            _args.boolean("flag", bad)
    assert _args.text("label", "a") == "a"
    with pytest.raises(TypeError, match="label must be a str"):
        _args.text("label", 3)
    with pytest.raises(ValueError, match="label must be a non-empty str"):
        _args.text("label", " ")
    assert _args.sequence("rows", (1, 2), of=int) == [1, 2]
    with pytest.raises(TypeError, match="rows must be a list or tuple"):
        _args.sequence("rows", "ab")
    with pytest.raises(TypeError, match=r"rows\[1\] must be int"):
        _args.sequence("rows", [1, "2"], of=int)
    with pytest.raises(ValueError, match="rows must not be empty"):
        _args.sequence("rows", [], non_empty=True)
    with pytest.raises(TypeError, match="table must be a dict"):
        _args.mapping("table", [("a", 1)])


def test_fields_checks_a_dataclass_against_its_annotations():
    from dataclasses import dataclass

    @dataclass
    class Row:
        name: str
        count: int
        share: float
        note: str | None = None
        tags: tuple[str, ...] = ()

        def __post_init__(self):
            _args.fields(self)

    Row("a", 1, 2)  # an int is a fine float
    for kwargs, word in [({"name": None}, "name must be str"), ({"count": 1.0}, "count must be int"),
                         ({"count": True}, "count"), ({"share": "x"}, "share must be float"),
                         ({"note": 3}, "note"), ({"tags": ["a"]}, "tags")]:
        with pytest.raises(TypeError, match=word):
            Row(**{"name": "a", "count": 1, "share": 0.5, **kwargs})


def test_parameters_and_tensors():
    lin = nn.Linear(2, 2)
    assert len(_args.parameters("params", lin.parameters())) == 2
    with pytest.raises(ValueError, match="params must not be empty"):
        _args.parameters("params", nn.ReLU().parameters())
    with pytest.raises(TypeError, match="params must be an iterable of tensors"):
        _args.parameters("params", None)
    with pytest.raises(TypeError, match="got one tensor"):
        _args.parameters("params", lin.weight)
    with pytest.raises(TypeError, match=r"params\[0\]"):
        _args.parameters("params", [3])
    x = torch.ones(2)
    assert _args.tensors("inputs", x) == (x,) and _args.tensors("inputs", [x, x]) == (x, x)
    with pytest.raises(TypeError, match="inputs must be a tensor or a tuple of tensors"):
        _args.tensors("inputs", None)
    with pytest.raises(ValueError, match="inputs must not be empty"):
        _args.tensors("inputs", ())
    assert _args.number_or_tensor("scale", 2).item() == 2
    with pytest.raises(TypeError, match="scale must be a number or a tensor"):
        _args.number_or_tensor("scale", "2")
