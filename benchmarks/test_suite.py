"""How long CI takes: `bash .ci/run` from a fresh clone, install included, and its slowest tests.

`python benchmarks/test_suite.py` clones this repository's HEAD into a temporary folder, times
`make install` (uv, the lock) and then `bash .ci/run` (apt packages for the SLURM test where
needed, then `make test` with `--durations=30 --cpu-durations=30`), and writes
`results/test_suite.json`: both times, their sum, pytest's counts, the slowest tests and the
tests that used the most CPU. `--log FILE --install-s S --total-s S`
records a run made by hand instead (the log of `bash .ci/run`).

The target (README, Testing): the whole `bash .ci/run` under 20 minutes on the 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from record import REPO, machine, write_results

DURATION = re.compile(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$", re.M)
CPU_LINE = re.compile(r"^\s*([\d.]+) s CPU\s+([\d.]+) s wall  (\S+)$", re.M)
CPU_SESSION = re.compile(r"^session: (\d+) s CPU in (\d+) s wall on (\d+) cores$", re.M)
PYTEST_ARGS = "--durations=30 --cpu-durations=30"
SUMMARY = re.compile(r"^=+ (.*) in ([\d.]+)s(?: \(.*\))? =+$", re.M)


def parse_log(text: str) -> dict[str, Any]:
    """pytest's final counts and wall time, the slowest phases it listed and the tests that
    used the most CPU (tests/support/cpu_accounting.py)."""
    summary = SUMMARY.findall(text)
    if not summary:
        raise SystemExit("no pytest summary line in the log: did the run finish?")
    counts_text, seconds = summary[-1]
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", counts_text)}
    slowest = [{"seconds": float(s), "phase": phase, "test": name}
               for s, phase, name in DURATION.findall(text)]
    most_cpu = [{"cpu_seconds": float(cpu), "wall_seconds": float(wall), "test": name}
                for cpu, wall, name in CPU_LINE.findall(text)]
    session = CPU_SESSION.findall(text)
    cpu = ({"cpu_seconds": int(session[-1][0]), "wall_seconds": int(session[-1][1]),
            "cores": int(session[-1][2])} if session else None)
    return {"pytest_seconds": float(seconds), "counts": counts, "slowest": slowest,
            "session_cpu": cpu, "most_cpu": most_cpu}


def timed(command: list[str], cwd: Path, log: Path) -> float:
    started = time.perf_counter()
    with log.open("a") as out:
        code = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTEST_ARGS": PYTEST_ARGS}).returncode
    if code != 0:  # the clone is temporary: keep its log
        kept = Path(tempfile.gettempdir()) / "marseval-test-suite-failed.log"
        shutil.copyfile(log, kept)
        raise SystemExit(f"{' '.join(command)} failed (exit {code}); log: {kept}")
    return time.perf_counter() - started


def measure(work: Path) -> dict[str, Any]:
    clone = work / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    log = work / "ci.log"
    install = timed(["make", "install"], clone, log)
    ci = timed(["bash", ".ci/run"], clone, log)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True,
                            text=True, check=True).stdout.strip()
    return {"commit": commit, "install_seconds": install, "ci_run_seconds": ci,
            "total_seconds": install + ci, **parse_log(log.read_text())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "test_suite.json")
    parser.add_argument("--log", type=Path, help="the log of a `bash .ci/run` made by hand")
    parser.add_argument("--install-s", type=float, help="with --log: its install seconds")
    parser.add_argument("--total-s", type=float, help="with --log: its whole wall time")
    parser.add_argument("--note", default="", help="what else was running, and so on")
    args = parser.parse_args(argv)
    if args.log:
        if args.total_s is None:
            parser.error("--log needs --total-s")
        record = {"install_seconds": args.install_s, "total_seconds": args.total_s,
                  **parse_log(args.log.read_text())}
    else:
        with tempfile.TemporaryDirectory() as work:
            record = measure(Path(work))
    record["target_seconds"] = 20 * 60
    record["under_target"] = record["total_seconds"] < record["target_seconds"]
    record["load_avg_1m_end"] = os.getloadavg()[0]
    write_results(args.out, {"machine": machine(), "note": args.note, **record})
    print(f"{record['total_seconds'] / 60:.1f} min in all "
          f"({record['pytest_seconds'] / 60:.1f} min of tests): {record['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
