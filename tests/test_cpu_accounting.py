"""--cpu-durations / --cpu-json (tests/support/cpu_accounting.py): a test's CPU time counts
the processes it started, and waiting does not count."""

from __future__ import annotations

import json

import pytest

BURN_S = 0.6  # CPU seconds the child process spends
SLEEP_S = 0.4

TESTS = f"""
import subprocess, sys, time

def test_child_burns_cpu():
    subprocess.run([sys.executable, "-c",
                    "import time\\nwhile time.process_time() < {BURN_S}: pass"], check=True)

def test_sleeps():
    time.sleep({SLEEP_S})
"""


def test_children_count_and_sleeping_does_not(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=TESTS)
    out = pytester.path / "cpu.json"
    result = pytester.runpytest("-p", "support.cpu_accounting", "--cpu-durations=1",
                                f"--cpu-json={out}")
    result.assert_outcomes(passed=2)
    tests = json.loads(out.read_text())["tests"]
    burn = tests["test_sample.py::test_child_burns_cpu"]
    sleep = tests["test_sample.py::test_sleeps"]
    assert burn["cpu_s"] >= BURN_S  # the child's own CPU time, reaped by the test
    assert burn["wall_s"] >= BURN_S
    assert sleep["cpu_s"] < 0.2 and sleep["wall_s"] >= SLEEP_S
    assert list(tests) == ["test_sample.py::test_child_burns_cpu", "test_sample.py::test_sleeps"]
    # the listing: only the top one, then the session's total
    result.stdout.fnmatch_lines(["*1 tests using the most CPU*",
                                 "* s CPU * s wall  test_sample.py::test_child_burns_cpu",
                                 "session: * s CPU in * s wall on * cores"])
    assert "test_sample.py::test_sleeps" not in result.stdout.str()
