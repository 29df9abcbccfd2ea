"""Shared fixtures: small synthetic raw datasets written in either raw layout."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script of this environment (snakemake, ruff, snakefmt)."""
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


@pytest.fixture
def workflow_env() -> dict[str, str]:
    """Environment for snakemake subprocesses: this interpreter first, no network proxies."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    return env
