"""``labkit doctor``: is this environment complete, and what can this machine do?

Used by ``00_welcome_and_setup`` and the command line.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import platform
import sys

import torch

from labkit.devices import cpu_threads_env, device_report, format_report

REQUIRED = ("torch", "numpy", "jupyterlab", "ipywidgets", "matplotlib", "nbval", "tqdm", "sklearn", "mlxtend",
            "onnx", "onnxruntime", "nbformat", "nbclient")
OPTIONAL = ("torchao", "torchvision", "torch_xla", "hypothesis", "playwright")
DIST = {"sklearn": "scikit-learn"}
LOOK_ONLY = ("torchao", "torch_xla")


def package_versions(names=REQUIRED + OPTIONAL) -> dict[str, str | None]:
    """Installed version of each package (None when it is missing or does not import)."""
    out = {}
    for name in names:
        if name in LOOK_ONLY:  # heavy imports that print warnings: installed is enough to know
            if importlib.util.find_spec(name) is None:
                out[name] = None
                continue
        else:
            try:
                importlib.import_module(name)
            except Exception:
                out[name] = None
                continue
        try:
            out[name] = md.version(DIST.get(name, name).replace("_", "-"))
        except md.PackageNotFoundError:
            out[name] = "?"
    return out


def missing_required(versions: dict[str, str | None] | None = None) -> list[str]:
    versions = package_versions(REQUIRED) if versions is None else versions
    return [n for n in REQUIRED if versions.get(n) is None]


def doctor_report() -> str:
    """The full text report printed by ``labkit doctor``."""
    versions = package_versions()
    lines = [f"python {sys.version.split()[0]} on {platform.platform()}", f"torch {torch.__version__}", ""]
    lines.append("packages:")
    for name, v in versions.items():
        tag = "required" if name in REQUIRED else "optional"
        lines.append(f"  {name:<12} {v or 'MISSING':<14} ({tag})")
    lines += ["", "threads: " + ", ".join(f"{k}={v}" for k, v in cpu_threads_env().items())]
    lines += [f"quantized engines: {', '.join(torch.backends.quantized.supported_engines)}", ""]
    lines.append(format_report(device_report()))
    miss = missing_required(versions)
    lines += ["", "environment complete" if not miss else f"environment INCOMPLETE: missing {', '.join(miss)}"]
    return "\n".join(lines)
