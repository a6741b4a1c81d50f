"""Every public labkit callable answers a missing or wrong-typed required argument with a
ValueError or TypeError naming that argument - never another exception, silence, a hang or a
process. The walker and its example table live in tests/support (see api_walker's docstring)."""

from __future__ import annotations

import pytest
import support.api_examples  # noqa: F401 - fills the walker's tables
from support.api_walker import walk


@pytest.mark.slow
@pytest.mark.timeout(1200, method="thread")
def test_every_public_callable_validates_its_required_arguments(capsys):
    result = walk(seconds=5.0)
    with capsys.disabled():
        print("\n" + result.report())
    counts = result.counts()
    assert counts["hung"] == 0 and counts["spawned"] == 0
    assert counts["silently accepted"] == 0
    assert counts["good %"] >= 97
    assert not result.no_example, "add valid examples for these callables to tests/support/api_examples.py"
