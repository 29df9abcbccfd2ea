"""Interrupted jobs, full disks and unsafe loading: what happens when things go wrong."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from marseval import atomic
from marseval.atomic import atomic_directory, atomic_write_json
from marseval.bench.training import HParams
from marseval.data.standardize import standardize
from marseval.data.synthetic.generate import generate_benchmark
from marseval.data.synthetic.writers import write_zenodo
from marseval.registry import get_dataset
from marseval.retrieval.shards import write_shard

SEGMENTER = "unet:resnet18"


@pytest.fixture(scope="module")
def craters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("craters")
    spec = get_dataset("mb-crater_binary_seg")
    # 24 images of 32 px: six steps an epoch, enough for a kill between two checkpoints
    write_zenodo(generate_benchmark(spec, seed=0, size=32,
                                    samples={"train": 24, "val": 8, "test": 8}), spec,
                 root / "raw")
    standardize(root / "raw", root / "data", spec.name, "synthetic", [1.0], [])
    best = HParams(lr=0.01, weight_decay=0.0, batch_size=4, optimizer="adamw",
                   lr_schedule="cosine", max_epochs=6, patience=6, loss="cross_entropy")
    atomic_write_json(root / "best.json", {"trial_id": "t0", "hyperparameters": asdict(best)})
    return root


def _train(root: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), MARSEVAL_GPUS="")
    return subprocess.Popen(
        [sys.executable, "-m", "marseval", "train", "--dataset-dir", str(root / "data"),
         "--model", SEGMENTER, "--best", str(root / "best.json"), "--partition", "default",
         "--seeds", "5", "--no-pretrained", "--input-size", "32", "--device", "cpu",
         "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def _record(path: Path) -> dict:
    record = json.loads(path.read_text())
    record.pop("timing")
    return record


def test_a_killed_training_job_resumes_to_the_uninterrupted_record(craters: Path) -> None:
    reference = craters / "reference" / "seed5.json"
    assert _train(craters, reference).wait(timeout=600) == 0

    out = craters / "killed" / "seed5.json"
    checkpoint = out.with_name(".seed5.ckpt")
    job = _train(craters, out)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # into the next epoch
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL, job.stdout.read()
    assert checkpoint.exists() and not out.exists()

    rerun = _train(craters, out)
    log, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, log
    assert re.search(r"resuming training from .*\.seed5\.ckpt after epoch [1-5]\b", log), log
    assert _record(out) == _record(reference)
    assert not checkpoint.exists()  # removed once the record is written


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_a_write_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                                        monkeypatch) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"old": 1})
    monkeypatch.setattr(atomic.os, "fsync", _disk_full)  # the data reaches the disk here
    with pytest.raises(OSError, match="No space left on device"):
        atomic_write_json(target, {"new": 2})
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_full_disk_while_writing_a_shard_keeps_no_half_folder(tmp_path: Path,
                                                                monkeypatch) -> None:
    vectors = np.eye(4, dtype=np.float32)
    ids = pd.DataFrame({"id": list("abcd")})
    real_save = np.save

    def save_then_fail(file, array, *args, **kwargs):
        real_save(file, array[: len(array) // 2], *args, **kwargs)  # part of it got written
        _disk_full()

    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left on device"):
        write_shard(tmp_path / "shard0", vectors, ids)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_folder_write_is_never_mistaken_for_a_finished_one(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "done.txt").write_text("first")
    with pytest.raises(KeyboardInterrupt), atomic_directory(target) as tmp:
        (tmp / "done.txt").write_text("half")
        raise KeyboardInterrupt
    assert (target / "done.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# Calls that would unpickle: no code path may use them on data it downloads or reads back.
UNSAFE = [
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
    (re.compile(r"\bread_pickle\("), "pandas.read_pickle"),
    (re.compile(r"\bjoblib\.load\("), "joblib.load"),
    (re.compile(r"weights_only\s*=\s*False"), "torch.load(weights_only=False)"),
]


def test_no_code_unpickles_what_it_reads() -> None:
    found = []
    for path in sorted((REPO / "marseval").rglob("*.py")):
        text = path.read_text()
        for pattern, what in UNSAFE:
            found += [f"{path.relative_to(REPO)}: {what}" for _ in pattern.finditer(text)]
        # every torch.load names weights_only=True
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in call.group(1):
                found.append(f"{path.relative_to(REPO)}: torch.load without weights_only=True")
    assert found == []


def test_leftovers_of_killed_writers_are_removed_by_the_next_writer(tmp_path: Path) -> None:
    target = tmp_path / "shard0.parquet"
    writer = subprocess.Popen(  # a writer SIGKILLed inside its atomic block
        [sys.executable, "-c", "import time; from marseval.atomic import atomic_writer\n"
         f"with atomic_writer({str(target)!r}) as f:\n    f.write(b'half'); f.flush(); "
         "print('writing', flush=True); time.sleep(60)"],
        env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    [left] = tmp_path.glob(".shard0.parquet.*.tmp")
    live = tmp_path / f".shard0.parquet.{left.name.split('.')[2]}.abc.tmp"
    live = live.with_name(live.name.replace(f"-{writer.pid}.", f"-{os.getpid()}."))
    live.write_bytes(b"a live writer's")  # this process: alive, so kept
    other_host = tmp_path / ".shard0.parquet.elsewhere-1.abc.tmp"
    other_host.write_bytes(b"another node's")
    atomic.atomic_write_bytes(target, b"complete")
    assert target.read_bytes() == b"complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, live.name, other_host.name])
