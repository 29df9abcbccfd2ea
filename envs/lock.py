#!/usr/bin/env python3
"""Generate requirements.lock and the per-rule conda envs (envs/*.yaml) from one resolution.

Usage, from the repository root (``make lock`` runs the first form):

    python3 envs/lock.py
        Builds a fresh virtualenv in a temporary folder (``python3 -m venv``), installs what
        ``make install`` used to install unpinned (``pip install -e ".[test]"``, then
        ``pip install "arch>=8"``), writes ``pip freeze --all --exclude-editable`` (less
        marseval and pip) to requirements.lock, then regenerates envs/*.yaml from that
        lock and that venv's package metadata. ``--python PATH`` picks the interpreter that
        makes the venv; ``--keep`` leaves the temporary folder in place.

    .venv/bin/python envs/lock.py --envs-only        (``make lock-envs``)
        Regenerates only envs/*.yaml from the current requirements.lock. The dependency
        closure is read from the metadata installed in the interpreter that runs the script,
        which must hold the locked versions (``make install`` installs them).

Each env lists its direct requirements (``DIRECT`` below) and their full dependency closure
(``Requires-Dist`` of the installed distributions, extras followed, environment markers
evaluated for this platform and Python), every package pinned ``name==version`` as in the
lock. tests/test_pins.py checks the result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
ENVS = REPO / "envs"

# What `make install` installs on top of the project and its test extra: rliable caps arch
# below 8, but arch 7 does not import under pandas 3, and rliable works with arch 8.
EXTRA = ("arch>=8",)
# Left out of the lock: the project itself (installed with `pip install --no-deps -e .`) and
# the installer (the Makefile upgrades pip on its own).
UNLOCKED = frozenset({"marseval", "pip"})

# Each env's direct requirements (pyproject.toml dependencies, by name); the env files add
# their dependency closure. Edit here, then run `make lock` (or `--envs-only`).
BASE = (
    "numpy",
    "pandas",
    "pyarrow",
    "pillow",
    "pyyaml",
    "requests",
    "scipy",
    "jsonschema",
    "tqdm",
    "huggingface_hub",
    "rasterio",
)
DIRECT: dict[str, tuple[str, ...]] = {
    "data": BASE,
    "report": (*BASE, "matplotlib", "seaborn", "tabulate", "jinja2"),
    "retrieval": (
        *BASE,
        "torch",
        "torchvision",
        "open_clip_torch",
        "transformers",
        "peft",
        "qwen-vl-utils",
        "timm",
        "faiss-cpu",
    ),
    "torch": (
        *BASE,
        "torch",
        "torchvision",
        "timm",
        "torchgeo",
        "segmentation-models-pytorch",
        "monai",
        "ultralytics",
        "pycocotools",
        "torchmetrics",
    ),
}

# The FAISS GPU wheel for the index, shard_index and search rules where retrieval.index_gpu
# is not "no" (envs/gpu/faiss.yaml): the data env (no torch, whose CUDA 13 libraries would
# clash with the wheel's CUDA 12) plus these pins. Not in the lock: faiss-gpu-cu12 and
# faiss-cpu install the same `faiss` module. Checked on a CPU-only machine (no GPU seen:
# it searches on the CPU); the wheel is built for compute capability 7.0-8.9 (README).
FAISS_GPU = (
    "faiss-gpu-cu12==1.14.1.post1",
    "nvidia-cublas-cu12==12.9.3.13",
    "nvidia-cuda-nvrtc-cu12==12.9.86",
    "nvidia-cuda-runtime-cu12==12.9.79",
)
FAISS_GPU_ENV = ENVS / "gpu" / "faiss.yaml"

GENERATED = "# Generated from requirements.lock"
OLD_NOTE = "# Pins repeat pyproject.toml"


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def run(*cmd: str | Path, capture: bool = False) -> str:
    """Run a command (echoed to stderr), fail on a non-zero exit, return its stdout."""
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    done = subprocess.run(
        [str(c) for c in cmd], check=True, text=True, stdout=subprocess.PIPE if capture else None
    )
    return done.stdout if capture else ""


def read_lock(path: Path = LOCK) -> dict[str, tuple[str, str]]:
    """The lock's pins: canonical name -> (name as written, version)."""
    pins: dict[str, tuple[str, str]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version:
            raise SystemExit(f"{path.name}: not an exact pin: {line!r}")
        pins[canonical(name)] = (name.strip(), version.strip())
    return pins


def freeze_to_lock(python: Path, out: Path = LOCK) -> int:
    """Write the venv of `python` (pip freeze, less UNLOCKED) to `out`; return the count."""
    # --all: plain `pip freeze` hides setuptools, which torch requires (>=77) at run time
    frozen = run(python, "-m", "pip", "freeze", "--all", "--exclude-editable", capture=True)
    lines = []
    for line in frozen.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "==" not in line:
            raise SystemExit(f"pip freeze gave a line that is not an exact pin: {line!r}")
        if canonical(line.split("==", 1)[0]) in UNLOCKED:
            continue
        lines.append(line)
    lines.sort(key=lambda pin: canonical(pin.split("==", 1)[0]))
    version = run(
        python, "-c", "import platform; print(platform.python_version())", capture=True
    ).strip()
    pip = run(python, "-m", "pip", "--version", capture=True).split()[1]
    extra = " ".join(f'"{spec}"' for spec in EXTRA)
    header = [
        "# Exact versions of everything a clean",
        f'#   pip install ".[test]" {extra}',
        "# puts into a fresh venv (marseval itself and pip left out).",
        "# Generated by `make lock` (python3 envs/lock.py); do not edit by hand.",
        f"# Python {version} ({platform.system()} {platform.machine()}), pip {pip}, "
        f"{dt.datetime.now(dt.UTC).date().isoformat()}.",
        "# Install (what `make install` does):",
        "#   pip install --no-deps -r requirements.lock && pip install --no-deps -e .",
        "# --no-deps because rliable declares arch<8 while the lock holds arch 8 (see Makefile).",
    ]
    out.write_text("\n".join(header + lines) + "\n")
    return len(lines)


def installed_distributions() -> dict[str, metadata.Distribution]:
    """The distributions this interpreter sees, by canonical name (first on sys.path wins)."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        found.setdefault(canonical(dist.metadata["Name"]), dist)
    return found


def dependency_closure(direct: Iterable[str]) -> set[str]:
    """Canonical names of `direct` and everything they require, in this interpreter.

    Reads Requires-Dist of the installed distributions, follows requested extras, and keeps
    a requirement only when its environment marker holds here.
    """
    from packaging.requirements import Requirement

    installed = installed_distributions()
    seen: set[tuple[str, str]] = set()
    todo = [(canonical(name), "") for name in direct]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        if name not in installed:
            raise SystemExit(f"{name} is required but not installed in {sys.prefix}")
        for text in installed[name].requires or []:
            req = Requirement(text)
            if req.marker is None:
                if extra:
                    continue  # already taken with the base package
            elif not req.marker.evaluate({"extra": extra}):
                continue
            dep = canonical(req.name)
            todo.append((dep, ""))
            todo.extend((dep, canonical(x)) for x in req.extras)
    return {name for name, _ in seen}


def header_comment(path: Path) -> list[str]:
    """The descriptive comment lines at the top of an env file (not the generated ones)."""
    lines: list[str] = []
    if not path.exists():
        return lines
    for line in path.read_text().splitlines():
        if not line.startswith("#") or line.startswith(GENERATED):
            break
        if not line.startswith(OLD_NOTE):
            lines.append(line)
    return lines


def write_envs(lock: Path = LOCK) -> None:
    """Regenerate envs/<name>.yaml for every env in DIRECT from `lock` and this interpreter."""
    pins = read_lock(lock)
    installed = installed_distributions()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    for env, direct in DIRECT.items():
        names = dependency_closure(direct)
        wrong = []
        for name in sorted(names):
            if name not in pins:
                wrong.append(f"{name} is not in {lock.name}")
            elif (have := installed[name].version) != pins[name][1]:
                wrong.append(f"{name} {have} is installed, {lock.name} has {pins[name][1]}")
        if wrong:
            raise SystemExit(
                f"envs/{env}.yaml: {sys.prefix} does not match {lock.name} "
                f"(run `make install` or `make lock`):\n  " + "\n  ".join(wrong)
            )
        first = [canonical(n) for n in direct]
        rest = sorted(names - set(first))
        path = ENVS / f"{env}.yaml"
        lines = header_comment(path) + [
            f"{GENERATED} by `make lock` (or `make lock-envs`: envs/lock.py --envs-only);",
            "# do not edit the pins by hand. The direct requirements (DIRECT in envs/lock.py) come",
            "# first, then their full dependency closure, as resolved on "
            f"{platform.system()} {platform.machine()}, Python {python}.",
            f"name: marseval-{env}",
            "channels:",
            "  - conda-forge",
            "  - nodefaults",
            "dependencies:",
            f"  - python={python}",
            "  - pip",
            "  - pip:",
            "      # direct requirements",
            *(f'      - "{pins[n][0]}=={pins[n][1]}"' for n in first),
            "      # their dependencies",
            *(f'      - "{pins[n][0]}=={pins[n][1]}"' for n in rest),
        ]
        path.write_text("\n".join(lines) + "\n")
        print(
            f"{path.relative_to(REPO)}: {len(first)} direct, {len(rest)} dependencies",
            file=sys.stderr,
        )
        if env == "data":
            write_faiss_gpu_env(lines)


def write_faiss_gpu_env(data_lines: list[str]) -> None:
    """envs/gpu/faiss.yaml: the data env's pins and FAISS_GPU."""
    body = data_lines[data_lines.index("name: marseval-data") + 1:]
    lines = [
        "# FAISS on GPUs: the index, shard_index and search rules with retrieval.index_gpu: auto",
        "# or yes. The data env's pins (no torch) and faiss-gpu-cu12 with its CUDA 12 libraries",
        "# (FAISS_GPU in envs/lock.py).",
        f"{GENERATED} by `make lock` (or `make lock-envs`); do not edit the pins by hand.",
        "name: marseval-faiss-gpu",
        *body,
        "      # the GPU build of faiss",
        *(f'      - "{pin}"' for pin in FAISS_GPU),
    ]
    FAISS_GPU_ENV.parent.mkdir(exist_ok=True)
    FAISS_GPU_ENV.write_text("\n".join(lines) + "\n")
    print(f"{FAISS_GPU_ENV.relative_to(REPO)}: data env + {len(FAISS_GPU)}", file=sys.stderr)


def lock(python: str, keep: bool) -> None:
    """Resolve in a fresh venv, write requirements.lock, then the env files from that venv."""
    tmp = Path(tempfile.mkdtemp(prefix="marseval-lock-"))
    try:
        venv = tmp / "venv"
        run(python, "-m", "venv", venv)
        py = venv / "bin" / "python"
        run(py, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        run(py, "-m", "pip", "install", "--quiet", "-e", f"{REPO}[test]")
        run(py, "-m", "pip", "install", "--quiet", *EXTRA)
        count = freeze_to_lock(py)
        print(f"{LOCK.name}: {count} packages", file=sys.stderr)
        # rliable's arch<8 is the one expected complaint; show what pip says either way
        subprocess.run([str(py), "-m", "pip", "check"], check=False)
        run(py, Path(__file__).resolve(), "--envs-only")
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--envs-only",
        action="store_true",
        help="regenerate envs/*.yaml from the current lock and this interpreter",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that creates the fresh venv (default: this one)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary venv")
    args = parser.parse_args(argv)
    if args.envs_only:
        write_envs()
    else:
        lock(args.python, args.keep)


if __name__ == "__main__":
    main()
