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


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_constraints_pin_every_dependency_within_pyproject_bounds():
    """constraints.txt (what CI passed with) pins each of pyproject's packages, torch aside, at a
    version that pyproject's lower bound admits: the two files stay in step."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    assert "torch" not in pins and "labkit" not in pins
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        if name == "torch":
            continue
        assert name in pins, f"{name} is in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (name, str(req.specifier), pins[name])


def test_make_installs_with_the_constraints_by_default():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*\$\(if \$\(CONSTRAINTS\),-c \$\(CONSTRAINTS\)\) -e", make)
    assert re.search(r"CONSTRAINTS \?= .*constraints\.txt", make)


def test_lab_ships_settings_that_turn_off_the_news_prompt():
    """JupyterLab asks every new user whether to fetch news from the internet; the kit's lab
    answers 'never' through an overrides file, valid against JupyterLab's own schema."""
    import json

    overrides = json.loads((ROOT / "jupyter" / "settings" / "overrides.json").read_text())
    notification = overrides["@jupyterlab/apputils-extension:notification"]
    assert notification == {"fetchNews": "false", "checkForUpdates": False}
    assert "--LabApp.app_settings_dir=$(HERE)jupyter/settings" in (ROOT / "Makefile").read_text()
    import sys
    schema = Path(sys.prefix) / "share/jupyter/lab/schemas/@jupyterlab/apputils-extension/notification.json"
    if not schema.exists():
        pytest.skip("JupyterLab's schemas are not installed in this environment")
    props = json.loads(schema.read_text())["properties"]
    assert {c["const"] for c in props["fetchNews"]["oneOf"]} >= {"false"}
    assert props["checkForUpdates"]["type"] == "boolean"


def test_readme_lesson_map_names_real_modules_and_tests():
    """Every module and test file the README's lesson table names exists (the map follows the layout)."""
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if re.match(r"\| \d\d \|", line)]
    assert len(rows) == len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert (ROOT / "notebooks" / f"{cells[1].strip('`')}.ipynb").exists(), cells[1]
        for name in re.findall(r"`([\w.]+)`", cells[3]):
            path = ROOT / "labkit" / Path(*name.split("."))
            found = path.with_suffix(".py").exists() or path.is_dir()
            if not found and "." not in name:  # a sub-module listed after its package: `prune` (`masks`, ...)
                found = bool(list((ROOT / "labkit").glob(f"*/{name}.py")))
            assert found, f"README names labkit.{name}, which does not exist"
        for test in re.findall(r"`(test_[\w*]+)`", cells[4]):
            assert list((ROOT / "tests").glob(f"{test}.py")), f"README names {test}, which matches no test file"
