"""GPU slots: concurrently running GPU jobs get distinct devices (fake ids, real processes)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest
from conftest import REPO, tool

from marseval import gpu

JOB = Path(__file__).parent / "support" / "gpu_job.py"


def _env(tmp_path: Path, devices: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PYTHONPATH=str(REPO), MARSEVAL_GPU_LOCKS=str(tmp_path / "locks"))
    if devices is not None:
        env["MARSEVAL_GPUS"] = devices
    return env


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _assert_distinct_while_overlapping(records: list[dict]) -> None:
    for a, b in combinations(records, 2):
        overlap = a["start"] < b["end"] and b["start"] < a["end"]
        if overlap:
            assert a["device"] != b["device"], (a, b)


def test_parallel_jobs_get_distinct_devices(tmp_path: Path) -> None:
    out = tmp_path / "slots.jsonl"
    env = _env(tmp_path, "0,1")
    jobs = [subprocess.Popen([sys.executable, str(JOB), str(out), "1.5"], env=env)
            for _ in range(4)]
    assert [j.wait(timeout=120) for j in jobs] == [0, 0, 0, 0]
    records = _records(out)
    assert len(records) == 4
    assert {r["device"] for r in records} == {"0", "1"}
    assert all(r["visible"] == r["device"] and r["source"] == "lock" for r in records)
    _assert_distinct_while_overlapping(records)
    # two devices, four 1.5 s jobs: two waves, never three jobs at once
    for r in records:
        at_once = sum(o["start"] < r["start"] < o["end"] for o in records)
        assert at_once <= 1


def test_a_killed_job_frees_its_device(tmp_path: Path) -> None:
    env = _env(tmp_path, "7")
    holder = subprocess.Popen([sys.executable, str(JOB), str(tmp_path / "a.jsonl"), "60"],
                              env=env)
    lock = tmp_path / "locks" / "gpu7.lock"
    for _ in range(300):  # wait until the holder has written its pid into the lock
        if lock.exists() and lock.read_text().strip() == str(holder.pid):
            break
        time.sleep(0.05)
    with pytest.raises(TimeoutError, match=r"no free GPU among \['7'\]"):
        gpu.acquire(["7"], tmp_path / "locks", timeout=0.5)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    slot = gpu.acquire(["7"], tmp_path / "locks", timeout=5)
    assert slot.device == "7"
    slot.release()


def test_a_scheduler_device_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "slots.jsonl"
    env = dict(_env(tmp_path, "0,1"), CUDA_VISIBLE_DEVICES="3")
    subprocess.run([sys.executable, str(JOB), str(out), "0"], env=env, check=True)
    [record] = _records(out)
    assert record == {**record, "device": "3", "source": "scheduler", "visible": "3"}
    assert not (tmp_path / "locks").exists()


def test_no_gpu_runs_on_the_cpu_with_a_note(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("MARSEVAL_GPUS", "")
    monkeypatch.setattr(gpu, "_held", None)
    with caplog.at_level(logging.WARNING, logger="marseval.gpu"):
        slot = gpu.claim_gpu()
    assert slot.device is None and slot.source == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert "no GPU on this machine" in caplog.text


@pytest.mark.parametrize("resource", [2, 4])
def test_snakemake_gpu_resource_and_slots_together(tmp_path: Path, resource: int) -> None:
    # 5 GPU jobs, 4 cores, 2 fake GPUs. With --resources gpu=2 Snakemake runs two at once;
    # with gpu=4 (more than the machine has) the slots make the extra jobs wait. Either way
    # jobs running at once hold different devices.
    out = tmp_path / "slots.jsonl"
    (tmp_path / "Snakefile").write_text(f"""
rule all:
    input: expand("done{{i}}", i=range(5))

rule job:
    output: "done{{i}}"
    resources: gpu=1
    shell: "{sys.executable} {JOB} {out} 1.0 && touch {{output}}"
""")
    result = subprocess.run([tool("snakemake"), "--cores", "4", "--resources", f"gpu={resource}"],
                            cwd=tmp_path, env=_env(tmp_path, "0,1"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    records = _records(out)
    assert len(records) == 5 and {r["device"] for r in records} <= {"0", "1"}
    _assert_distinct_while_overlapping(records)


@pytest.mark.parametrize(("argv", "claims"), [
    (["features", "--device", "auto"], True),
    (["features", "--device", "cuda"], True),  # a bare `cuda` is any GPU: take a free one
    (["features", "--device", "cuda:1"], False),  # a named device is left as named
    (["embed", "--device", "cpu"], False),
    (["index", "--use-gpu", "yes"], True),  # requests gpu=1 like the other GPU jobs
    (["index", "--use-gpu", "auto"], False),
    (["select"], False),
])
def test_which_commands_claim_a_gpu_slot(argv: list[str], claims: bool) -> None:
    from marseval.cli import build_parser, claims_gpu

    required = {"features": ["--dataset-dir", "d", "--model", "m", "--out", "o"],
                "embed": ["--dataset-dir", "d", "--model", "m", "--shard", "0", "--shards", "1",
                          "--out", "o"],
                "index": ["--out", "o", "s"], "select": ["--out", "o", "s"]}
    assert claims_gpu(build_parser().parse_args([*argv, *required[argv[0]]])) is claims
