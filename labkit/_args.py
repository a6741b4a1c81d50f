"""Argument checks shared by every public labkit function: one place, one wording.

Each check returns the value (normalised where that helps: an int, a float, a ``Path``) or
raises. The rule is the same everywhere:

* a value of the wrong *type* (``None``, a string for a number, ``2.0`` or ``True`` for an int)
  raises ``TypeError``;
* a value of the right type but outside its range (``0`` for a positive int, ``nan`` or ``inf``
  for a finite float, ``1.5`` for a fraction, an unknown choice) raises ``ValueError``.

Every message names the argument, shows the value and says what was expected, e.g.
``ValueError: lr must be a finite float > 0, got nan``.
"""

from __future__ import annotations

import math
import numbers
import os
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def integer(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (bools and floats are refused), optionally within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {_show(value)}")
    value = int(value)
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"{name} must be an int between {minimum} and {maximum}, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}, got {value}")
    return value


def positive_int(name: str, value) -> int:
    """An int >= 1 (counts, sizes, world sizes, steps)."""
    return integer(name, value, minimum=1)


def non_negative_int(name: str, value) -> int:
    """An int >= 0 (seeds, indices, warm-up steps)."""
    return integer(name, value, minimum=0)


def real(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
         strict_minimum: bool = False, finite: bool = True) -> float:
    """``value`` as a float (ints accepted, bools refused); finite unless ``finite=False``.

    ``minimum`` is inclusive unless ``strict_minimum``; ``maximum`` is inclusive.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {_show(value)}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if minimum is not None and (value <= minimum if strict_minimum else value < minimum):
        op = ">" if strict_minimum else ">="
        raise ValueError(f"{name} must be a number {op} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be a number <= {maximum}, got {value}")
    return value


def positive_float(name: str, value) -> float:
    """A finite number > 0 (learning rates, temperatures, times, bandwidths)."""
    return real(name, value, minimum=0.0, strict_minimum=True)


def non_negative_float(name: str, value) -> float:
    """A finite number >= 0 (penalties, tolerances, weight decay)."""
    return real(name, value, minimum=0.0)


def fraction(name: str, value) -> float:
    """A number in [0, 1] (sparsities, mixing weights, split fractions)."""
    return real(name, value, minimum=0.0, maximum=1.0)


def choice(name: str, value, choices: Collection):
    """``value`` if it is one of ``choices`` (a string is compared case-sensitively)."""
    try:
        ok = value in choices
    except TypeError:
        ok = False
    if not ok:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}; got {_show(value)}")
    return value


def boolean(name: str, value) -> bool:
    """``True`` or ``False`` (numbers, strings and None are refused: ``"no"`` is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {_show(value)}")
    return value


def text(name: str, value, *, non_empty: bool = True) -> str:
    """A ``str`` (non-empty unless ``non_empty=False``)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {_show(value)}")
    if non_empty and not value.strip():
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    return value


def sequence(name: str, value, *, of: type | tuple[type, ...] | None = None, non_empty: bool = False,
             what: str | None = None) -> list:
    """A list or tuple (a str is refused) as a list, each item an instance of ``of`` if given."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be {what or 'a list or tuple'}, got {type(value).__name__} {_show(value)}")
    if non_empty and not value:
        raise ValueError(f"{name} must not be empty")
    if of is not None:
        for i, item in enumerate(value):
            instance(f"{name}[{i}]", item, of)
    return list(value)


def iterable(name: str, value, what: str | None = None):
    """Something a ``for`` loop can walk (a DataLoader, a list of batches); a str is refused."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be {what or 'iterable'}, got {type(value).__name__} {_show(value)}")
    return value


def mapping(name: str, value, *, non_empty: bool = False, what: str | None = None) -> Mapping:
    """A dict-like ``Mapping``."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be {what or 'a dict'}, got {type(value).__name__} {_show(value)}")
    if non_empty and not value:
        raise ValueError(f"{name} must not be empty")
    return value


def parameters(name: str, value) -> list:
    """What an optimizer takes: an iterable (``model.parameters()``) of tensors or param-group
    dicts, as a non-empty list (a generator is consumed: use the list returned)."""
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be an iterable of tensors (model.parameters()), got one tensor")
    items = list(iterable(name, value, "an iterable of tensors (model.parameters())"))
    if not items:
        raise ValueError(f"{name} must not be empty (a model without parameters?)")
    for i, p in enumerate(items):
        instance(f"{name}[{i}]", p, (torch.Tensor, dict), "a tensor or a param-group dict")
    return items


def rows(name: str, value, *, keys: Collection[str] = (), non_empty: bool = True) -> list:
    """A list of dicts (table rows), each holding ``keys``."""
    items = sequence(name, value, non_empty=non_empty, what="a list of dicts (rows)")
    for i, row in enumerate(items):
        mapping(f"{name}[{i}]", row)
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"{name}[{i}] lacks {missing}: every row needs {list(keys)}")
    return items


def instance(name: str, value, types: type | tuple[type, ...], what: str | None = None):
    """``value`` if it is an instance of ``types``, else a TypeError saying what was expected."""
    if not isinstance(value, types):
        if what is None:
            kinds = types if isinstance(types, tuple) else (types,)
            what = " or ".join(t.__name__ for t in kinds)
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {_show(value)}")
    return value


def module(name: str, value, kind: type | tuple[type, ...] = nn.Module) -> nn.Module:
    """An ``nn.Module`` (or the given subclass, e.g. ``nn.Linear``)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    what = " or ".join("an nn.Module" if k is nn.Module else f"nn.{k.__name__}" for k in kinds)
    return instance(name, value, kind, what)


def function(name: str, value) -> Callable:
    """A callable."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__} {_show(value)}")
    return value


_DTYPE_FAMILIES = {
    "floating": lambda d: d.is_floating_point,
    "integer": lambda d: not d.is_floating_point and not d.is_complex and d != torch.bool,
    "bool": lambda d: d == torch.bool,
}
_DTYPE_WORDS = {"floating": "a floating-point tensor", "integer": "an integer tensor", "bool": "a bool tensor"}


def tensor(name: str, value, *, dtype: torch.dtype | str | tuple | None = None, ndim: int | tuple[int, ...] | None = None,
           shape: tuple | None = None, finite: bool = False, non_empty: bool = False) -> torch.Tensor:
    """A ``torch.Tensor`` with the given dtype (a dtype, a tuple of them, or ``"floating"`` /
    ``"integer"`` / ``"bool"``), number of dimensions, shape (``None`` entries match any size),
    and, with ``finite=True``, no NaN or infinity."""
    instance(name, value, torch.Tensor, "a torch.Tensor")
    if dtype is not None:
        if isinstance(dtype, str):
            ok, want = _DTYPE_FAMILIES[dtype](value.dtype), _DTYPE_WORDS[dtype]
        else:
            ok, want = value.dtype in (dtype if isinstance(dtype, tuple) else (dtype,)), f"a tensor of dtype {dtype}"
        if not ok:
            raise TypeError(f"{name} must be {want}, got dtype {value.dtype}")
    if ndim is not None and value.dim() not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if shape is not None:
        if value.dim() != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
            want = ", ".join("*" if s is None else str(s) for s in shape)
            raise ValueError(f"{name} must have shape ({want}), got {tuple(value.shape)}")
    if non_empty and value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} must hold only finite values (no NaN or inf)")
    return value


def number_or_tensor(name: str, value) -> torch.Tensor:
    """A real number or a tensor of them, as a tensor (scales, zero-points, observed minima)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__} {_show(value)}")
    return torch.as_tensor(float(value) if not isinstance(value, numbers.Integral) else int(value))


def tensors(name: str, value) -> tuple[torch.Tensor, ...]:
    """A model's inputs: one tensor, or a non-empty tuple/list of tensors, as a tuple."""
    if isinstance(value, torch.Tensor):
        return (value,)
    return tuple(sequence(name, value, of=torch.Tensor, non_empty=True, what="a tensor or a tuple of tensors"))


def path(name: str, value, *, must_exist: bool = False, suffix: str | None = None) -> Path:
    """A filesystem path (str or PathLike); optionally existing and with a given suffix."""
    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str) and not value):
        raise TypeError(f"{name} must be a non-empty path (str or os.PathLike), got {_show(value)}")
    p = Path(value)
    if must_exist and not p.exists():
        raise ValueError(f"{name}: no such file or folder: {str(p)!r}")
    if suffix is not None and p.suffix != suffix:
        raise ValueError(f"{name} must be a {suffix} file, got {str(p)!r}")
    return p


def file_name(name: str, value) -> str:
    """A bare file name with no folder part, no '..' and no leading dot (safe to join to a folder)."""
    instance(name, value, str, "a str")
    if not value or value in (".", "..") or "/" in value or "\\" in value or value.startswith(".") \
            or os.sep in value or "\x00" in value:
        raise ValueError(f"{name} must be a plain file name (no folders, no '..'), got {_show(value)}")
    return value


def env_flag(variable: str, environ: Mapping[str, str] | None = None) -> bool:
    """Read an on/off environment variable: ``1/true/yes/on`` is on, ``0/false/no/off`` or unset
    is off (case-insensitive); anything else is a ValueError naming the variable."""
    environ = os.environ if environ is None else environ
    raw = environ.get(variable, "")
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"environment variable {variable} must be one of "
                     f"{'/'.join(TRUE_WORDS)} or {'/'.join(w for w in FALSE_WORDS if w)}, got {raw!r}")


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is typing.Any or isinstance(hint, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is not None:
        hint = origin
    if not isinstance(hint, type):
        return True  # a string or special form we don't interpret
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, (str, os.PathLike))
    return isinstance(value, hint)


def fields(record) -> None:
    """Check every field of a dataclass ``record`` against its annotation (call it from
    ``__post_init__``): ``int`` refuses bools and floats, ``float`` takes ints, ``X | None``
    takes None, ``list[...]``/``tuple[...]``/``dict[...]`` check the container only."""
    hints = typing.get_type_hints(type(record))
    for f in record.__dataclass_fields__.values():
        value = getattr(record, f.name)
        if f.name in hints and not _matches(value, hints[f.name]):
            want = getattr(hints[f.name], "__name__", None) or str(hints[f.name]).replace("typing.", "")
            raise TypeError(f"{f.name} must be {want}, got {type(value).__name__} {_show(value)}")
