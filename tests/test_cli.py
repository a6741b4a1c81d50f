"""The labkit command line and the doctor report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import cli, doctor
from labkit.parallel.run import main as run_main

ROOT = Path(__file__).resolve().parents[1]


def test_doctor_describes_this_machine(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "threads", "cpu", "bf16", "environment complete"):
        assert word in out


def test_doctor_flags_missing_packages():
    versions = {n: "1.0" for n in doctor.REQUIRED}
    versions["mlxtend"] = None
    assert doctor.missing_required(versions) == ["mlxtend"]
    assert doctor.package_versions(("surely_not_a_package_xyz",)) == {"surely_not_a_package_xyz": None}


@pytest.mark.slow
def test_bench_quick_prints_a_table(capsys):
    assert cli.main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "achieved / peak" in out


def test_unknown_command_exits():
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])


# --- a user's mistake is one line on stderr and exit code 2, never a traceback ----------------


def _one_line_error(capsys, code, *words):
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("argv, words", [
    (["frobnicate"], ["invalid choice", "frobnicate"]),
    (["doctor", "--nope"], ["unrecognized arguments", "--nope"]),
    (["nb", "polish", "x.ipynb"], ["invalid choice", "polish"]),
])
def test_unknown_commands_and_arguments(capsys, argv, words):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    _one_line_error(capsys, info.value.code, *words)


@pytest.mark.parametrize("action", ["strip", "lint"])
@pytest.mark.parametrize("name, text, word", [
    ("missing.ipynb", None, "not a notebook file"),
    ("corrupt.ipynb", "{not json", "is not a readable notebook"),
    ("other.ipynb", '{"a": 1}', "is not a readable notebook"),
    ("notes.txt", "hello", "not a notebook file"),
])
def test_nb_tools_on_bad_files(tmp_path, capsys, action, name, text, word):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    _one_line_error(capsys, cli.main(["nb", action, str(path)]), word, "labkit nb", name)
    if text is not None:
        assert path.read_text() == text  # left as it was


@pytest.mark.parametrize("argv, words", [
    (["labkit.parallel.examples.hello"], ["module:function"]),
    (["no_such_module_xyz:f"], ["cannot import", "no_such_module_xyz"]),
    (["labkit.parallel.examples:nope"], ["no function", "nope"]),
    (["labkit.parallel.examples:hello", "--kwargs", "{steps: 5}"], ["--kwargs", "not valid JSON"]),
    (["labkit.parallel.examples:hello", "--kwargs", "[1, 2]"], ["--kwargs", "JSON object"]),
    (["labkit.parallel.examples:hello", "--backend", "mpi"], ["--backend", "invalid choice"]),
])
def test_run_module_bad_worker_or_kwargs(capsys, argv, words):
    with pytest.raises(SystemExit) as info:
        run_main(argv)
    _one_line_error(capsys, info.value.code, *words)


def test_run_module_in_a_real_process_prints_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "labkit.parallel.run", "labkit.parallel.examples:hello",
                           "--kwargs", "{bad"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "--kwargs" in proc.stderr
