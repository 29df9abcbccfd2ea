"""benchmarks/gpu_check.py on the CPU: every step runs at tiny size and its record says so;
a failing step is recorded (a job: its log tail; the check's own code: the traceback) and
makes the exit status non-zero."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, guarded_env

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
TASKS = ("classification", "segmentation", "detection")
MODEL_STEPS = ("features:classification", "tune:classification", "train:classification",
               "tune:segmentation", "train:segmentation", "tune:detection", "train:detection",
               *(f"train-marsbench:{task}" for task in TASKS), "embed:retrieval")


@functools.cache
def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up while defined
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved  # it puts benchmarks/ first: keep that out of the other tests
    return module


def _check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny", "--out",
               str(out), "--work", str(tmp_path / "work"), *args]
    result = subprocess.run(command, env=guarded_env(tmp_path), capture_output=True, text=True,
                            timeout=900)
    assert out.is_file(), result.stdout + result.stderr
    return result, json.loads(out.read_text())


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess,
                                                               dict, Path]:
    # Over 30 s (this file: 3.5 min on the 2-core machine while another test run shared it):
    # the check is 16 marseval jobs, each its own Python process as in the workflow, and
    # each spends 5 to 8 s of CPU importing torch, torchvision, timm and torchmetrics (with
    # transformers) before a second or two of tiny-size work. --jobs 2 runs the four task
    # chains side by side on the two cores.
    tmp_path = tmp_path_factory.mktemp("gpu_check")
    result, record = _check(tmp_path, "--jobs", "2", "--budget-s", "1800")
    return result, record, tmp_path


def test_every_step_runs_on_the_cpu_and_says_so(cpu_run) -> None:
    result, record, tmp_path = cpu_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert record["device"] == "cpu" and record["size"] == "tiny" and record["ok"]
    assert "no CUDA path was exercised" in record["note"]
    assert "no CUDA path was exercised" in result.stdout
    steps = {step["name"]: step for step in record["steps"]}
    assert list(steps) == [step.name for step in _script().steps()]
    statuses = {name: step["status"] for name, step in steps.items()}
    assert statuses == {**dict.fromkeys(steps, "ok"), "faiss_gpu:retrieval": "skipped"}
    assert "faiss" in steps["faiss_gpu:retrieval"]["reason"]
    for name in MODEL_STEPS:
        assert steps[name]["images_per_s"] > 0, name
        assert steps[name]["command"], name
        assert not steps[name]["cuda_used"] and steps[name]["peak_gpu_mib"] is None, name
    assert steps["train:segmentation"]["device"] == "cpu"
    assert steps["embed:retrieval"]["device"] == "cpu"
    assert record["machine"]["torch"] and record["machine"]["gpu"] is None
    assert not (tmp_path / "connections.log").exists()  # offline: no connection attempted


def test_the_commands_are_the_rules_commands(cpu_run) -> None:
    _, record, _ = cpu_run
    steps = {step["name"]: step for step in record["steps"]}
    features = steps["features:classification"]["command"]
    assert features.startswith("python -m marseval features ")
    assert "--device cpu" in features and "--no-pretrained" in features
    assert "--offline" in features
    tune, select = steps["tune:classification"]["command"]
    assert "--features " in tune and "--head batchnorm_linear" in tune
    assert select.startswith("python -m marseval select ")
    assert "--input-size 64" in steps["train:detection"]["command"]
    for task in TASKS:  # the same final run in the reference protocol: online, no cache
        reference = steps[f"train-marsbench:{task}"]
        assert "--protocol marsbench" in reference["command"], task
        assert "--features" not in reference["command"], task
        assert (reference["protocol"], reference["precision"]) == ("marsbench", "16-mixed")
        assert steps[f"train:{task}"]["protocol"] == "probe"
    shared = steps["tune-shared:classification"]  # the grid in one pass and one at a time
    assert shared["trials"] == 4 and "--shared-pass-trials 4" in shared["command"]
    assert shared["max_best_val_loss_difference"] == 0.0 and shared["same_epochs"]
    assert shared["speedup"] > 1.0


def test_slots_go_to_distinct_fake_devices_and_a_third_claimer_waits(cpu_run) -> None:
    _, record, _ = cpu_run
    [slots] = [step for step in record["steps"] if step["name"] == "slots"]
    assert slots["fake_ids"] and sorted(slots["devices"]) == ["0", "1"]
    assert slots["waiter_waited_s"] >= 1.0 and "no free GPU" in slots["waiter_error"]
    assert slots["reclaimed_device"] in ("0", "1")


def test_a_failing_step_is_recorded_and_the_exit_status_is_nonzero(tmp_path: Path) -> None:
    result, record = _check(tmp_path, "--only", "classification",
                            "--classification-model", "timm:no_such_model_xyz")
    assert result.returncode == 1
    assert not record["ok"] and record["counts"]["failed"] == 1
    steps = {step["name"]: step for step in record["steps"]}
    failed = steps["features:classification"]
    assert failed["status"] == "failed" and failed["error"] == "exit status 1"
    assert "error: unknown timm model 'no_such_model_xyz'" in failed["log_tail"]
    assert failed["command"].startswith("python -m marseval features ")
    assert steps["data:classification"]["status"] == "ok"
    assert steps["tune:classification"]["reason"] == "needs features:classification (failed)"
    assert steps["slots"]["reason"] == "not selected (--only)"


def test_run_step_turns_an_exception_into_a_failed_record(tmp_path: Path) -> None:
    gc = _script()

    def broken(check) -> dict:
        raise ValueError("bad input")

    check = gc.Check("cpu", "tiny", tmp_path)
    record = gc.run_step(gc.Step("broken", "slots", (), broken), check)
    assert record["status"] == "failed" and record["error"] == "ValueError: bad input"
    assert 'raise ValueError("bad input")' in record["traceback"]
    after = gc.run_step(gc.Step("after", "slots", ("broken",), broken), check)
    assert after == {**after, "status": "skipped", "reason": "needs broken (failed)"}
    spent = gc.Check("cpu", "tiny", tmp_path, budget_s=0.0)
    late = gc.run_step(gc.Step("late", "slots", (), broken), spent)
    assert late["status"] == "skipped" and late["reason"].startswith("budget:")
    log = "INFO start\nTraceback (most recent call last):\n  File x\nKeyError: 'y'\n"
    assert gc.job_traceback(log) == log[len("INFO start\n"):]
    assert gc.job_traceback("error: one line\n") is None


# The CUDA-only logic, on records and a stand-in nvidia-smi: a CUDA run cannot happen here.


def test_a_cuda_run_fails_a_gpu_job_that_ran_on_the_cpu(tmp_path: Path) -> None:
    gc = _script()
    check = gc.Check("cuda", "full", tmp_path)
    on_gpu = {"cuda_initialized": True, "peak_allocated_mib": 812.5}
    gc._check_device(check, "train", gc.Job("c", tmp_path, "INFO GPU slot: device 0", on_gpu,
                                            1.0, None))
    fallback = "WARNING marseval.gpu: no GPU on this machine: this GPU job runs on the CPU"
    for log, probe in ((fallback, on_gpu), ("", {"cuda_initialized": False})):
        with pytest.raises(gc.StepFailed, match="ran on the CPU"):
            gc._check_device(check, "train", gc.Job("c", tmp_path, log, probe, 1.0, None))
    gc._check_device(check, "index", gc.Job("c", tmp_path, "", {}, 1.0, None))  # faiss-cpu


def test_a_cuda_slot_is_device_0_and_torch_sees_only_it(tmp_path: Path) -> None:
    gc = _script()
    check = gc.Check("cuda", "full", tmp_path)
    held = {"claimed": True, "source": "lock", "device": "0", "visible": "0", "pid": 7,
            "lock_holder": "7", "torch_device_count": 1, "tensor_sum": 1024.0}
    gc._verify_holders(check, [held])
    for wrong in ({"torch_device_count": 8}, {"device": "1", "visible": "1"},
                  {"visible": "0,1"}, {"lock_holder": "8"}):
        with pytest.raises(gc.StepFailed):
            gc._verify_holders(check, [{**held, **wrong}])


def test_device_memory_peaks_come_from_nvidia_smi(tmp_path: Path, monkeypatch) -> None:
    gc = _script()
    smi = tmp_path / "nvidia-smi"  # a stand-in printing samples as `-lms` does, then waiting
    smi.write_text("#!/bin/sh\nprintf '0, 100\\n1, 250\\n0, 300\\n'\nexec sleep 30\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with gc.GpuMemoryPoller(enabled=True) as poller:
        deadline = time.monotonic() + 10
        while (len(poller.peaks) < 2 or poller.peaks["0"] < 300) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert poller.peak_mib("0") == 300 and poller.peak_mib("1") == 250
    assert poller.peak_mib(None) == 300  # device unknown: the largest
    assert gc.GpuMemoryPoller(enabled=False).__enter__().peak_mib("0") is None
