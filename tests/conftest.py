"""Shared fixtures and helpers: the workflow as users run it (a repository copy, the
embedded default run once per session), and a local HTTP server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SUPPORT = Path(__file__).parent / "support"
pytest_plugins = ["support.cpu_accounting", "pytester"]  # --cpu-durations, --cpu-json

# One intra-op thread for torch in the test process and the jobs it starts (Snakemake sets each
# workflow job's own): the embedded default runs in the background on the same cores, and
# OpenMP's spinning barriers with more threads than free cores slow torch several times (the
# detection overfitting test: 220 s with 2 threads beside other work, 26 s with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def tool(name: str) -> str:
    """A console script of this environment (snakemake, ruff, snakefmt)."""
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def make_workflow_env() -> dict[str, str]:
    """Environment for snakemake subprocesses: this interpreter first, no network proxies."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture
def workflow_env() -> dict[str, str]:
    return make_workflow_env()


# What a user's checkout holds; a copy of it is where workflow tests run, from its root.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", ".snakemake", "results", "raw", "hf_cache",
                                    "ultralytics", "__pycache__", "*.egg-info", ".pytest_cache",
                                    ".ruff_cache")


def repo_copy(dest: Path) -> Path:
    """A copy of the repository root, as a user's checkout (configs, profiles, Snakefile)."""
    shutil.copytree(REPO, dest, ignore=NOT_COPIED, dirs_exist_ok=True)
    return dest


def snakemake(args: list[str], env: dict[str, str], cwd: Path = REPO,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """`snakemake ARGS` typed in `cwd` (a repository copy): its Snakefile, config/ and
    profiles/ (profiles/default applies, as for a user)."""
    return subprocess.run([tool("snakemake"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def embedded_args() -> list[str]:
    """`make run`'s snakemake arguments on this 2-core machine."""
    return ["--cores", "2", "--configfile", "config/embedded.yaml"]


def guarded_env(workdir: Path) -> dict[str, str]:
    """The workflow environment with every outgoing connection logged (tests/support)."""
    env = make_workflow_env()
    return dict(env, MARSEVAL_NETLOG=str(workdir / "connections.log"),
                PYTHONPATH=f"{SUPPORT}{os.pathsep}{env['PYTHONPATH']}")


EMBEDDED_TIMEOUT_S = 1800  # about 9 minutes alone on the 2-core machine (README, Testing)


@dataclass
class BackgroundRun:
    """A `snakemake` run started in the background, its output going to files."""

    workdir: Path
    args: list[str]
    process: subprocess.Popen
    stdout: Path
    stderr: Path
    deadline: float  # time.monotonic() by which it must have finished

    def result(self) -> subprocess.CompletedProcess:
        """Wait for it (killing it at the deadline) and return what it did."""
        try:
            self.process.wait(timeout=max(self.deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return subprocess.CompletedProcess(self.args, self.process.returncode,
                                           self.stdout.read_text(), self.stderr.read_text())

    def kill(self) -> None:
        if self.process.poll() is None:
            kill_process_group(self.process)


def kill_process_group(process: subprocess.Popen) -> None:
    """SIGKILL to a process started with `start_new_session=True` and everything it started
    (Snakemake and its running jobs), then reap it."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def uses_embedded_default(item: pytest.Item) -> bool:
    return "embedded_default" in getattr(item, "fixturenames", ())


def _session_order(item: pytest.Item) -> int:
    if uses_embedded_default(item):
        return 2
    return 0 if "slurm_run" in getattr(item, "fixturenames", ()) else 1


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that read the embedded default's run go last: the run starts in the
    background with the session (`_embedded_default_started`) and every other test runs
    meanwhile, on the cores the workflow leaves idle. The SLURM run goes first: most of its
    time is Snakemake waiting between status checks of the cluster."""
    items.sort(key=_session_order)  # stable: files and tests keep their order otherwise


@pytest.fixture(scope="session", autouse=True)
def _embedded_default_started(request: pytest.FixtureRequest,
                              tmp_path_factory: pytest.TempPathFactory):
    """Start the embedded default from scratch in a checkout when the session begins, if any
    selected test reads it."""
    if not any(uses_embedded_default(item) for item in request.session.items):
        yield None
        return
    workdir = repo_copy(tmp_path_factory.mktemp("embedded"))
    logs = tmp_path_factory.mktemp("embedded-output")
    args = [tool("snakemake"), *embedded_args()]
    with (logs / "stdout").open("w") as out, (logs / "stderr").open("w") as err:
        process = subprocess.Popen(args, cwd=workdir, env=guarded_env(workdir), stdout=out,
                                   stderr=err, start_new_session=True)
    run = BackgroundRun(workdir, args, process, logs / "stdout", logs / "stderr",
                        time.monotonic() + EMBEDDED_TIMEOUT_S)
    yield run
    run.kill()  # a session that ends early (-x, Ctrl-C) leaves nothing running


@pytest.fixture(scope="session")
def embedded_default(_embedded_default_started: BackgroundRun | None):
    """One run of the embedded default from scratch in a checkout (`make run`'s command),
    shared by every test that reads its outputs: end to end, reports, the HTML report, the
    determinism and resume reruns, SLURM. Returns (checkout, CompletedProcess)."""
    run = _embedded_default_started
    assert run is not None, "pytest_collection_modifyitems did not see this test"
    return run.workdir, run.result()


@contextlib.contextmanager
def local_http_server(handler: type[BaseHTTPRequestHandler], **attributes: object) -> Iterator[int]:
    """A threaded HTTP server on 127.0.0.1 at a free port (yielded); `attributes` are set on
    the server object, where handlers reach them as `self.server.<name>`."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    for name, value in attributes.items():
        setattr(httpd, name, value)
    # short poll interval: shutdown() otherwise waits up to 0.5 s per test
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
