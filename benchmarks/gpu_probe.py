"""The process side of `gpu_check.py`: one marseval command or one GPU-slot claim, measured.

`python benchmarks/gpu_probe.py run OUT.json -- <marseval arguments>` runs
`marseval.cli.main(<arguments>)` in this process, exactly what `python -m marseval
<arguments>` runs, then writes what only the process itself can see to OUT.json: its exit
status, whether torch initialised CUDA, the device it was given (CUDA_VISIBLE_DEVICES after the
slot claim), and its peak memory: `torch.cuda.max_memory_allocated` / `max_memory_reserved`
(exact peaks of PyTorch's allocator; the CUDA context and non-torch allocations such as FAISS
are not in them) and the peak resident set size.

`python benchmarks/gpu_probe.py claim OUT.json --release FILE [--timeout S] [--torch]` claims a
GPU slot through `marseval.gpu.claim_gpu`, writes the slot to OUT.json, and holds it until FILE
exists; with `--torch`, torch is imported after the claim and must see exactly one CUDA device.
A claim that times out writes `"claimed": false` and exits 3.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIB = 1024 * 1024
HOLD_LIMIT_S = 300.0  # a holder whose parent died lets go after this long


def _write(path: Path, record: dict[str, Any]) -> None:
    """Write then rename: the parent polls for the file and must never read half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def cuda_usage() -> dict[str, Any]:
    """What this process did with CUDA through torch (nothing if it never imported torch)."""
    usage: dict[str, Any] = {"cuda_initialized": False, "peak_allocated_mib": None,
                             "peak_reserved_mib": None, "cuda_device_name": None}
    torch = sys.modules.get("torch")  # importing it here would cost seconds and prove nothing
    if torch is None or not torch.cuda.is_initialized():
        return usage
    usage.update(cuda_initialized=True,
                 peak_allocated_mib=torch.cuda.max_memory_allocated() / MIB,
                 peak_reserved_mib=torch.cuda.max_memory_reserved() / MIB,
                 cuda_device_name=torch.cuda.get_device_name())
    return usage


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> float:
    """User and system CPU time of this process and its finished DataLoader workers."""
    own, workers = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def run_command(out: Path, argv: list[str]) -> int:
    from marseval.cli import main

    code = 1  # an unexpected exception keeps its traceback (in the log) and exit status 1
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code if isinstance(exc.code, int) else 2
    finally:
        _write(out, {"returncode": code, "argv": argv,
                     "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                     **cuda_usage(), "peak_rss_mib": peak_rss_mib(),
                     "cpu_seconds": cpu_seconds()})
    return code


def _torch_view() -> dict[str, Any]:
    import torch

    count = torch.cuda.device_count()
    view: dict[str, Any] = {"torch_device_count": count, "torch_device_name": None}
    if count:
        # allocate for real: a device torch lists but cannot use would fail here
        view["torch_device_name"] = torch.cuda.get_device_name(0)
        view["tensor_sum"] = float(torch.ones(1024, device="cuda").sum().item())
    return view


def claim(out: Path, release: Path, timeout: float | None, with_torch: bool) -> int:
    from marseval.gpu import claim_gpu, lock_dir

    started = time.monotonic()
    try:
        slot = claim_gpu(timeout=timeout)
    except TimeoutError as exc:
        _write(out, {"claimed": False, "pid": os.getpid(), "error": str(exc),
                     "waited_s": time.monotonic() - started})
        return 3
    lock = lock_dir() / f"gpu{slot.device}.lock"
    record = {"claimed": True, "pid": os.getpid(), "device": slot.device,
              "source": slot.source, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "lock_holder": lock.read_text().strip() if lock.is_file() else None,
              "waited_s": time.monotonic() - started}
    if with_torch:
        record.update(_torch_view())
    _write(out, record)
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    run = modes.add_parser("run", help="run one marseval command and record its peaks")
    run.add_argument("out", type=Path)
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- then marseval arguments")
    hold = modes.add_parser("claim", help="claim a GPU slot and hold it")
    hold.add_argument("out", type=Path)
    hold.add_argument("--release", required=True, type=Path, help="let go once this exists")
    hold.add_argument("--timeout", type=float, help="give up waiting for a slot after S s")
    hold.add_argument("--torch", action="store_true", help="check torch's view of the GPUs")
    args = parser.parse_args(argv)
    if args.mode == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        return run_command(args.out, command)
    return claim(args.out, args.release, args.timeout, args.torch)


if __name__ == "__main__":
    sys.exit(main())
