"""What every benchmark script records: the machine it ran on, and its results file.

The results file is written atomically, so an interrupted benchmark never leaves a
half-written record behind.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from marseval.atomic import atomic_write_text  # noqa: E402


def machine(**extra: Any) -> dict[str, Any]:
    """CPU count, Python version and platform, plus any library versions given."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            **extra, "platform": platform.platform()}


def write_results(path: Path, results: dict[str, Any]) -> Path:
    """`results` as indented JSON at `path` (folders made as needed)."""
    return atomic_write_text(path, json.dumps(results, indent=2) + "\n")
