"""Walk every public callable of labkit and feed it bad arguments, one required parameter at a time.

Method: import every module under ``labkit`` (``pkgutil.walk_packages``; private modules such as
``labkit._args`` are skipped); public = ``__all__`` where a module defines it, else the functions
and classes it defines whose names don't start with ``_``; each object is walked once, under its
defining module. For each parameter without a default, the call is made twice - with ``None``
and with ``object()`` in that position - while every other required parameter holds a valid
example from :data:`EXAMPLES` (by parameter name) or :data:`OVERRIDES` (by callable). A call
is answered *well* when it raises ``ValueError`` or ``TypeError`` whose message names the
parameter; *badly* on any other exception or a message that doesn't name it; *silently* when it
returns; *hung* when it runs past the per-call timeout (SIGALRM); *spawned* when it tried to
start a process or subprocess (both are patched to refuse during the walk).
"""

from __future__ import annotations

import importlib
import inspect
import multiprocessing.process
import pkgutil
import signal
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import labkit

BAD_VALUES = {"None": lambda: None, "object()": object}


class _Hung(BaseException):
    pass


class _Spawned(BaseException):
    pass


class Ctx:
    """Valid objects that fit together (a model, its optimizer, inputs of its shape), built lazily."""

    def __init__(self, folder: Path):
        self.tmp = folder
        self._cache = {}

    def get(self, key, build):
        if key not in self._cache:
            self._cache[key] = build(self)
        return self._cache[key]

    @property
    def model(self):  # 4 input features, 3 classes; prunable, quantizable
        return self.get("model", lambda c: nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))

    @property
    def x(self):
        return self.get("x", lambda c: torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0)))

    @property
    def y(self):
        return self.get("y", lambda c: torch.tensor([0, 1, 2, 0, 1, 2]))

    @property
    def loader(self):
        return self.get("loader", lambda c: torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(c.x, c.y), batch_size=3))

    @property
    def optimizer(self):
        return self.get("optimizer", lambda c: torch.optim.SGD(c.model.parameters(), lr=0.1))


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# Valid examples by parameter name, shared by every module (a callable taking the Ctx).
EXAMPLES: dict[str, Callable[[Ctx], object]] = {}
# Valid examples for one callable ("qualname" or "module.qualname") when the shared one doesn't fit.
OVERRIDES: dict[str, dict[str, Callable[[Ctx], object]]] = {}
# Callables the walker does not call, each with the reason.
SKIP: dict[str, str] = {}
# Run once before the walk, outside its guards (slow examples to cache, heavy imports that may
# start a subprocess: an import refused half-way would leave a broken module behind).
SETUP: list[Callable[[Ctx], None]] = []


@dataclass
class Outcome:
    callable: str
    parameter: str
    bad: str
    verdict: str  # good | bad | silent | hung | spawned
    detail: str = ""


@dataclass
class Walk:
    callables: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    no_example: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict:
        c = Counter(o.verdict for o in self.outcomes)
        tried = len(self.outcomes)
        return {"callables walked": len(self.callables), "callables skipped": len(self.skipped),
                "callables without examples": len(self.no_example), "bad inputs tried": tried,
                "answered well": c["good"], "answered badly": c["bad"], "silently accepted": c["silent"],
                "hung": c["hung"], "spawned": c["spawned"],
                "good %": round(100 * c["good"] / tried, 1) if tried else 0.0}

    def report(self) -> str:
        lines = [f"{k}: {v}" for k, v in self.counts().items()]
        for o in self.outcomes:
            if o.verdict != "good":
                lines.append(f"  {o.verdict:<7} {o.callable}({o.parameter}={o.bad}): {o.detail}")
        lines += [f"  no example for {k}: {v}" for k, v in self.no_example.items()]
        return "\n".join(lines)


def public_callables() -> dict[str, object]:
    """``{"module.qualname": object}`` for every public function and class of labkit, once each."""
    found: dict[int, tuple[str, object]] = {}
    for info in pkgutil.walk_packages(labkit.__path__, "labkit."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        names = getattr(module, "__all__", None)
        if names is None:
            names = [k for k, v in vars(module).items() if not k.startswith("_")
                     and getattr(v, "__module__", None) == module.__name__]
        for name in names:
            obj = getattr(module, name)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and id(obj) not in found:
                found[id(obj)] = (f"{obj.__module__}.{obj.__qualname__}", obj)
    return dict(sorted(found.values(), key=lambda kv: kv[0]))


def required_parameters(obj) -> list[inspect.Parameter]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _accepts_none(p: inspect.Parameter) -> bool:
    return "None" in str(p.annotation) and "-> None" not in str(p.annotation)


def _example(key: str, obj, name: str):
    for k in (key, obj.__qualname__):
        if name in OVERRIDES.get(k, {}):
            return OVERRIDES[k][name]
    return EXAMPLES.get(name)


@contextmanager
def _guards(seconds: float):
    """Refuse to start processes and interrupt calls that run past ``seconds``."""
    def refuse(*args, **kwargs):
        raise _Spawned("tried to start a process")

    def alarm(signum, frame):
        raise _Hung()

    saved = (multiprocessing.process.BaseProcess.start, subprocess.Popen.__init__)
    multiprocessing.process.BaseProcess.start = refuse
    subprocess.Popen.__init__ = refuse
    old = signal.signal(signal.SIGALRM, alarm)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        multiprocessing.process.BaseProcess.start, subprocess.Popen.__init__ = saved


def _call(obj, kwargs: dict, seconds: float):
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return obj(**kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _judge(key, name, bad, obj, kwargs, seconds) -> Outcome:
    try:
        _call(obj, kwargs, seconds)
    except _Hung:
        return Outcome(key, name, bad, "hung", f"still running after {seconds} s")
    except _Spawned:
        return Outcome(key, name, bad, "spawned", "tried to start a process before checking its arguments")
    except (TypeError, ValueError) as err:
        text = str(err)
        if name in text:
            return Outcome(key, name, bad, "good", f"{type(err).__name__}: {text}")
        return Outcome(key, name, bad, "bad", f"{type(err).__name__} not naming {name!r}: {text[:160]}")
    except Exception as err:  # noqa: BLE001 - classifying every other failure is the point
        return Outcome(key, name, bad, "bad", f"{type(err).__name__}: {str(err)[:160]}")
    return Outcome(key, name, bad, "silent", "returned normally")


def walk(seconds: float = 5.0, only: Callable[[str], bool] | None = None) -> Walk:
    """Feed every public callable bad inputs; returns the outcomes (see the module docstring)."""
    result = Walk()
    with tempfile.TemporaryDirectory() as folder:
        for hook in SETUP:
            hook(Ctx(Path(folder)))
        with _guards(seconds):
            _walk_all(result, Path(folder), seconds, only)
    return result


def _walk_one(result: Walk, key: str, obj, folder: Path, seconds: float) -> None:
    params = required_parameters(obj)
    if not params:
        return
    missing = [p.name for p in params if _example(key, obj, p.name) is None]
    if missing:
        result.no_example[key] = ", ".join(missing)
        return
    result.callables.append(key)
    for p in params:
        if p.kind is p.POSITIONAL_ONLY:
            raise RuntimeError(f"{key}: positional-only parameters are not supported")
        for bad, make in BAD_VALUES.items():
            if bad == "None" and _accepts_none(p):
                continue  # None is a valid value here (``x: T | None``)
            ctx = Ctx(Path(tempfile.mkdtemp(dir=folder)))
            try:
                kwargs = {q.name: _example(key, obj, q.name)(ctx) for q in params if q.name != p.name}
            except Exception as err:  # noqa: BLE001
                raise RuntimeError(f"the walker's example for {key} is broken: {err!r}") from err
            kwargs[p.name] = make()
            result.outcomes.append(_judge(key, p.name, bad, obj, kwargs, seconds))


def _walk_all(result: Walk, folder: Path, seconds: float, only) -> None:
    for key, obj in public_callables().items():
        if only is not None and not only(key):
            continue
        if key in SKIP:
            result.skipped[key] = SKIP[key]
            continue
        _walk_one(result, key, obj, folder, seconds)
