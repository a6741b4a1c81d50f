"""The labkit command line and the doctor report."""

from __future__ import annotations

import pytest

from labkit import cli, doctor


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
