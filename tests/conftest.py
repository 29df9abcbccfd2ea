"""Shared fixtures: small synthetic raw datasets written in either raw layout."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


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
