"""Per-test CPU time: `--cpu-durations=N` lists the N tests that used the most CPU (the test
process and every child it reaped: Snakemake and its jobs, scripts), `--cpu-json=PATH` writes
all of them. On the 2-core machine the suite's wall time follows its CPU time, because the
embedded default runs in the background beside the other tests: wall time alone hides what a
test costs, CPU time does not."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import pytest


def _cpu_seconds() -> float:
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuAccounting:
    def __init__(self, top: int, json_path: str | None) -> None:
        self.top = top
        self.json_path = json_path
        self.tests: dict[str, dict[str, float]] = {}
        self.started = (time.monotonic(), _cpu_seconds())

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item):
        wall, cpu = time.monotonic(), _cpu_seconds()
        yield
        self.tests[item.nodeid] = {"cpu_s": round(_cpu_seconds() - cpu, 2),
                                   "wall_s": round(time.monotonic() - wall, 2)}

    def totals(self) -> dict[str, float]:
        wall, cpu = self.started
        return {"cpu_s": round(_cpu_seconds() - cpu, 1),
                "wall_s": round(time.monotonic() - wall, 1), "cores": os.cpu_count() or 1}

    def pytest_terminal_summary(self, terminalreporter) -> None:
        ranked = sorted(self.tests.items(), key=lambda kv: -kv[1]["cpu_s"])
        totals = self.totals()
        if self.top:
            terminalreporter.write_sep("=", f"{self.top} tests using the most CPU (setup, call "
                                            "and teardown; children included)")
            for nodeid, used in ranked[: self.top]:
                terminalreporter.write_line(f"{used['cpu_s']:8.1f} s CPU {used['wall_s']:8.1f} s "
                                            f"wall  {nodeid}")
            terminalreporter.write_line(f"session: {totals['cpu_s']:.0f} s CPU in "
                                        f"{totals['wall_s']:.0f} s wall on {totals['cores']} cores")
        if self.json_path:
            path = Path(self.json_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps({"session": totals, "tests": dict(ranked)}, indent=1))
            tmp.replace(path)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cpu accounting")
    group.addoption("--cpu-durations", type=int, default=0, metavar="N",
                    help="list the N tests that used the most CPU time (children included)")
    group.addoption("--cpu-json", default=None, metavar="PATH",
                    help="write every test's CPU and wall time to PATH (JSON)")


def pytest_configure(config: pytest.Config) -> None:
    top, path = config.getoption("--cpu-durations"), config.getoption("--cpu-json")
    if top or path:
        config.pluginmanager.register(CpuAccounting(top, path), "cpu_accounting")
