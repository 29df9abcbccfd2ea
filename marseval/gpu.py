"""GPU slots on one machine: concurrently running GPU jobs get distinct devices.

`snakemake --resources gpu=8` caps how many GPU jobs run at once but tells no job which GPU
to use. Every GPU command (`features`, `tune`, `train`, `embed`, `queries` on device `auto` or
`cuda`, and `index --use-gpu yes`) therefore claims a slot before CUDA starts: it takes an
exclusive `flock` on `gpu<id>.lock` in a lock folder shared by all jobs of the machine, and
exports `CUDA_VISIBLE_DEVICES=<id>`. The lock belongs to the process, so it is released when
the job ends in any way, SIGKILL included: no stale slots, nothing to clean up.

- A device set by a scheduler (SLURM exports CUDA_VISIBLE_DEVICES for `--gpus` jobs) or by
  the user is left alone.
- Without a GPU the job runs on the CPU, with a note in its log.
- `MARSEVAL_GPUS` (comma-separated ids) overrides device discovery, e.g. to keep some GPUs
  out of the workflow, or for tests with fake ids; `MARSEVAL_GPU_LOCKS` moves the lock folder
  (default `<tmp>/marseval-gpu-locks-<uid>`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
GPU_COMMANDS = frozenset({"features", "tune", "train", "embed", "queries"})
POLL_SECONDS = 2.0


@dataclass
class Slot:
    """How a job got its device: `device` is None on the CPU or when left to the scheduler."""

    device: str | None
    source: str  # "lock", "scheduler", "cpu"
    handle: IO | None = None  # the open, locked file: the claim lasts while it stays open

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


_held: Slot | None = None  # this process's slot, kept open for the process lifetime


def lock_dir() -> Path:
    configured = os.environ.get("MARSEVAL_GPU_LOCKS")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"marseval-gpu-locks-{os.getuid()}"


def discover_devices() -> list[str]:
    """GPU ids on this machine: MARSEVAL_GPUS, else nvidia-smi, else none."""
    configured = os.environ.get("MARSEVAL_GPUS")
    if configured is not None:
        return [d.strip() for d in configured.split(",") if d.strip()]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listed = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        log.warning("nvidia-smi failed (%s): treating this machine as having no GPU", exc)
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def _try_lock(folder: Path, device: str) -> IO | None:
    handle = open(folder / f"gpu{device}.lock", "a+")  # noqa: SIM115  (held past this call)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")  # who holds it, for a person looking at the folder
    handle.flush()
    return handle


def acquire(devices: list[str], folder: Path, timeout: float | None = None) -> Slot:
    """Lock the first free device of `devices`, waiting while all are taken (more GPU jobs
    than GPUs: `--resources gpu=N` larger than the machine has)."""
    folder.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    waited = False
    while True:
        for device in devices:
            handle = _try_lock(folder, device)
            if handle is not None:
                return Slot(device, "lock", handle)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"no free GPU among {devices} in {folder} after {timeout} s")
        if not waited:
            log.warning("all %d GPUs are taken by other jobs (locks in %s); waiting",
                        len(devices), folder)
            waited = True
        time.sleep(POLL_SECONDS)


def claim_gpu(timeout: float | None = None) -> Slot:
    """Give this process a GPU (module docstring); idempotent within a process."""
    global _held
    if _held is not None:
        return _held
    preset = os.environ.get("CUDA_VISIBLE_DEVICES")
    if preset is not None:
        log.info("CUDA_VISIBLE_DEVICES=%s was set by the scheduler or user: left alone", preset)
        _held = Slot(preset, "scheduler")
        return _held
    devices = discover_devices()
    if not devices:
        log.warning("no GPU on this machine: this GPU job runs on the CPU")
        _held = Slot(None, "cpu")
        return _held
    folder = lock_dir()
    slot = acquire(devices, folder, timeout)
    # nvidia-smi numbers GPUs in PCI bus order; CUDA must count the same way
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = slot.device
    log.info("GPU slot: device %s (lock %s)", slot.device, folder / f"gpu{slot.device}.lock")
    _held = slot
    return slot
