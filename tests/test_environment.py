"""environment.yml (conda / Binder) and pyproject.toml describe the same environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


def _names(requirements):
    return {re.split(r"[<>=!~\[ ]", r.strip(), maxsplit=1)[0].lower() for r in requirements if r.strip()}


def _conda_pip_list():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    out = []
    for line in lines[start + 1:]:
        m = re.match(r"\s+- (.+)", line)
        if not m:
            break
        out.append(m.group(1))
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"]) | _names(project["optional-dependencies"]["dev"])
    conda = [r for r in _conda_pip_list() if not r.startswith("-e")]
    assert _names(conda) == wanted, (sorted(_names(conda) - wanted), sorted(wanted - _names(conda)))


def test_torch_pins_agree():
    conda_torch = next(r for r in _conda_pip_list() if r.startswith("torch=="))
    make = (ROOT / "Makefile").read_text()
    assert re.search(rf"TORCH\s*\?=\s*{re.escape(conda_torch)}", make)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
    assert "exec make test" in (ROOT / ".ci/run").read_text()
