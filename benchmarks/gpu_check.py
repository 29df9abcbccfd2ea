"""One command that runs every CUDA path of marseval for real and records what ran.

On a machine with a GPU it runs, on CUDA, the jobs of the workflow on synthetic data: a
feature cache (autocast), a tune trial and a final run for classification, segmentation and
detection (pinned memory, device placement), one embedding shard with its queries, a FAISS
index with a search (on the GPU where the GPU build of faiss is installed), and the GPU slot
allocator handing out the real device. Without a GPU it runs the same steps on the CPU at tiny
size and says so. Each step is the command its Snakemake rule runs, with the flags the rule
builds (marseval.workflow's flag helpers on a config made from config/embedded.yaml), each in
its own process; a failing step is recorded with its log and does not stop the others.

Run: python benchmarks/gpu_check.py [--device auto|cuda|cpu] [--size auto|tiny|full]
         [--out PATH] [--budget-s 480] [--only PART,...] [--jobs N] [--work DIR]
         [--<task>-model NAME]
Writes benchmarks/results/gpu_check_<cuda|cpu>.json; exits 1 if any step failed.
benchmarks/README.md says what each step checks and how each figure is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).parent)]  # also when imported by the tests

from record import machine, write_results  # noqa: E402

from marseval import workflow as wf  # noqa: E402
from marseval.gpu import GPU_COMMANDS  # noqa: E402

PROBE = Path(__file__).with_name("gpu_probe.py")
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
EMBEDDED = REPO / "config" / "embedded.yaml"
PARTS = ("slots", "classification", "segmentation", "detection", "retrieval")
DATASETS = {"classification": "mb-frost_cls", "segmentation": "mb-crater_multi_seg",
            "detection": "mb-boulder_det", "retrieval": "mr-landforms"}
# what claim_gpu logs when a GPU job finds no GPU: a CUDA run must never see it
CPU_FALLBACK_NOTE = "no GPU on this machine"
SLOT_WAIT_S = 1.0  # how long the second claimer waits for a held device before giving up
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Size:
    """How much data and training a run gets."""

    image_size: int
    samples: dict[str, int]  # per split, for each Mars-Bench dataset
    landforms_per_class: int  # retrieval database: 8 classes
    epochs: int
    batch_size: int
    input_size: dict[str, int]  # segmentation/detection model input (detection: YOLO's 640)
    num_workers: int  # image-decoding DataLoader workers of tune and train
    models: dict[str, str]


SIZES = {
    # seconds on a CPU: the smallest data that still trains, validates and tests every step
    "tiny": Size(32, {"train": 8, "val": 4, "test": 4}, 2, 1, 8,
                 {"segmentation": 32, "detection": 64}, 0,
                 {"classification": "timm:resnet10t", "segmentation": "unet:resnet18",
                  "detection": "yolo11n", "retrieval": "tiny-clip"}),
    # a few minutes on one GPU: paper models at their input sizes, enough batches to time
    "full": Size(128, {"train": 1024, "val": 256, "test": 256}, 256, 3, 32,
                 {"segmentation": 224, "detection": 640}, 4,
                 {"classification": "resnet101", "segmentation": "unet:resnet34",
                  "detection": "yolo11n", "retrieval": "open_clip:ViT-B-16"}),
}


class StepFailed(Exception):
    """A step that ran and went wrong; `details` (command, log tail, ...) go into its record."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class StepSkipped(Exception):
    """A step that cannot run here, for a reason that is no failure (no GPU build of faiss)."""


@dataclass
class Step:
    name: str
    part: str
    needs: tuple[str, ...]
    action: Callable[[Check], dict[str, Any]]


@dataclass
class Check:
    """One run of the check: its settings, its folders and the records of finished steps."""

    device: str  # "cuda" or "cpu"
    size: str  # "tiny" or "full"
    work: Path
    budget_s: float = 480.0
    parts: tuple[str, ...] = PARTS
    models: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _retrieval_model: str | None = None

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    @property
    def results_dir(self) -> Path:
        return Path(self.config["results"])

    def data(self, task: str) -> Path:
        return self.results_dir / "data" / DATASETS[task]

    def out(self, stage: str, task: str, suffix: str = "") -> Path:
        """A step's output where the workflow keeps it: <results>/<stage>/<dataset>/<model>."""
        slug = wf.model_slug(self.models[task])
        return self.results_dir / stage / DATASETS[task] / f"{slug}{suffix}"

    def splits(self, task: str) -> dict[str, int]:
        return json.loads((self.data(task) / "meta.json").read_text())["splits"]


# ------------------------------------------------------------------------- config and env


def one_point_grid(size: Size) -> dict[str, list[Any]]:
    """One trial per task: fixed settings, `size.epochs` epochs, no early stop before them."""
    return {"lr_schedule": ["none"], "lr": [1e-3], "weight_decay": [0.0],
            "batch_size": [size.batch_size], "optimizer": ["adamw"],
            "max_epochs": [size.epochs], "patience": [size.epochs],
            "classification_loss": ["cross_entropy"], "segmentation_loss": ["cross_entropy"],
            "detection_loss": ["default"]}


def build_config(device: str, size: Size, models: dict[str, str], work: Path) -> dict[str, Any]:
    """The embedded default's config, cut to one dataset and model per task, validated
    with the workflow's schema defaults: the rules' flag helpers read it."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(EMBEDDED.read_text())
    job_device = "auto" if device == "cuda" else "cpu"  # auto: jobs claim a slot, as in runs
    config.update(results=str(work / "results"), resources=str(work / "resources"),
                  offline=True, source="synthetic", datasets=list(DATASETS.values()),
                  dataset_options={})
    config["synthetic"] = {"seed": 0, "image_size": size.image_size, "layout": "zenodo",
                           "samples": dict(size.samples),
                           "retrieval": {"landform_images_per_class": size.landforms_per_class}}
    config["bench"].update(
        models={task: [models[task]] for task in wf.BENCH_TASKS}, device=job_device,
        num_workers=size.num_workers, input_size=dict(size.input_size),
        grid=one_point_grid(size), grid_overrides={}, grid_shards=1, seeds=[0],
        feature_batch_size=size.batch_size * 2)
    config["retrieval"].update(
        models=[models["retrieval"]], device=job_device, embed_shards=1,
        embed_batch_size=size.batch_size * 2, index="exact",
        index_gpu="auto" if device == "cuda" else "no")
    validate(config, str(SCHEMA), set_default=True)
    wf.check_config(config)
    return config


def reference_config(config: dict[str, Any]) -> dict[str, Any]:
    """The same config in the Mars-Bench reference protocol (bench.protocol: marsbench): train
    mode, augmentation, last epoch, 16-mixed on CUDA, no feature cache, the paper's linear
    head."""
    reference = json.loads(json.dumps(config))
    reference["bench"].update(protocol="marsbench", head="linear", feature_cache=None,
                              augment=None, selection=None)
    wf.check_config(reference)
    return reference


def child_env(device: str, work: Path) -> dict[str, str]:
    """The environment of every job: this checkout first, offline, ultralytics' settings in
    the work folder; a CPU run hides every GPU so no CUDA path can run by accident."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(PYTHONUNBUFFERED="1", YOLO_OFFLINE="1", HF_HUB_OFFLINE="1",
               YOLO_CONFIG_DIR=str(work / "resources" / "ultralytics"))
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


# ------------------------------------------------------------------------- running commands


def display(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "marseval", *argv])


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def job_traceback(log: str) -> str | None:
    """The last Python traceback in a job's log (marseval's own errors print one line)."""
    start = log.rfind("Traceback (most recent call last):")
    return log[start:] if start >= 0 else None


# redirect_stdout swaps sys.stdout for every thread: in-process commands and progress lines
# take turns (--jobs runs parts in threads)
STDOUT_LOCK = threading.Lock()


def run_cli(argv: list[str]) -> str:
    """A marseval command in this process (commands that use no GPU): what `python -m
    marseval` runs, except that an error raises with its traceback instead of one line."""
    from marseval.cli import build_parser, run

    buffer = io.StringIO()
    try:
        with STDOUT_LOCK, contextlib.redirect_stdout(buffer):
            run(build_parser().parse_args(argv))
    except SystemExit as exc:  # argparse: bad arguments
        raise StepFailed(f"bad arguments (exit {exc.code})", command=display(argv)) from None
    return buffer.getvalue()


class GpuMemoryPoller:
    """Memory in use on each GPU, sampled by nvidia-smi every 200 ms while a step runs.

    Whole-device figures: they include the CUDA context and FAISS's own allocations (which
    torch's counters miss), and any other process on the same device."""

    def __init__(self, enabled: bool) -> None:
        self.peaks: dict[str, float] = {}
        self._smi = shutil.which("nvidia-smi") if enabled else None
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> GpuMemoryPoller:
        if self._smi:
            self._proc = subprocess.Popen(
                [self._smi, "--query-gpu=index,memory.used", "--format=csv,noheader,nounits",
                 "-lms", "200"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            index, _, used = line.partition(",")
            with contextlib.suppress(ValueError):
                mib = float(used)
                self.peaks[index.strip()] = max(mib, self.peaks.get(index.strip(), 0.0))

    def __exit__(self, *_: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._reader.join(timeout=10)

    def peak_mib(self, visible: str | None) -> float | None:
        """The peak of the device the job was given, else the largest of all devices."""
        if visible in self.peaks:
            return self.peaks[visible]
        return max(self.peaks.values()) if self.peaks else None


@dataclass
class Job:
    """A finished marseval command: its log, what its probe saw, and its timings."""

    command: str
    log_path: Path
    log: str
    probe: dict[str, Any]
    seconds: float
    device_peak_mib: float | None

    def fields(self) -> dict[str, Any]:
        probe = self.probe
        return {"command": self.command, "log": str(self.log_path),
                "job_seconds": round(self.seconds, 3),
                "cuda_used": bool(probe.get("cuda_initialized")),
                "cuda_device_name": probe.get("cuda_device_name"),
                "visible_devices": probe.get("visible_devices"),
                "peak_gpu_mib": probe.get("peak_allocated_mib"),
                "peak_gpu_reserved_mib": probe.get("peak_reserved_mib"),
                "gpu_memory_used_peak_mib": self.device_peak_mib,
                "peak_rss_mib": probe.get("peak_rss_mib"),
                "cpu_seconds": probe.get("cpu_seconds")}


def run_marseval(check: Check, step: str, argv: list[str]) -> Job:
    """`python -m marseval <argv>` in its own process (through gpu_probe.py, which runs the
    same entry point and records peak memory), killed when the budget runs out."""
    logs = check.results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stem = step.replace(":", "-")
    log_path, probe_path = logs / f"{stem}.log", logs / f"{stem}.probe.json"
    command = [sys.executable, str(PROBE), "run", str(probe_path), "--", *argv]
    timeout = max(check.remaining(), 1.0)
    details = {"command": display(argv), "log": str(log_path)}
    with GpuMemoryPoller(check.device == "cuda") as poller, log_path.open("w") as log:
        started = time.perf_counter()
        try:
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=check.env,
                                  cwd=check.work, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise StepFailed(f"killed after {timeout:.0f} s: the check's time budget ran out",
                             log_tail=tail(log_path.read_text(errors="replace")),
                             **details) from None
        seconds = time.perf_counter() - started
    text = log_path.read_text(errors="replace")
    probe = json.loads(probe_path.read_text()) if probe_path.is_file() else {}
    if code != 0:
        raise StepFailed(f"exit status {code}", log_tail=tail(text),
                         traceback=job_traceback(text), **details)
    job = Job(details["command"], log_path, text, probe, seconds,
              poller.peak_mib(probe.get("visible_devices")))
    _check_device(check, argv[0], job)
    return job


def _check_device(check: Check, command: str, job: Job) -> None:
    """A GPU job of a CUDA run must have run on CUDA; a CPU run must not have touched it."""
    used = bool(job.probe.get("cuda_initialized"))
    if check.device == "cpu" and used:
        raise StepFailed("a CPU run initialised CUDA", log_tail=tail(job.log), **job.fields())
    if check.device != "cuda" or command not in GPU_COMMANDS:
        return
    if CPU_FALLBACK_NOTE in job.log or not used or not job.probe.get("peak_allocated_mib"):
        raise StepFailed("this GPU job ran on the CPU (its log says so, or torch allocated "
                         "no CUDA memory)", log_tail=tail(job.log), **job.fields())


def rate(images: int, seconds: float, basis: str) -> dict[str, Any]:
    return {"images": images, "images_per_s": images / seconds if seconds > 0 else None,
            "images_per_s_basis": basis}


def expect_device(check: Check, reported: str, what: str) -> None:
    expected = "cuda" if check.device == "cuda" else "cpu"
    if not reported.startswith(expected):
        raise StepFailed(f"{what} says it ran on {reported!r}, expected {expected!r}")


# ------------------------------------------------------------------------- the steps


def data_step(task: str) -> Callable[[Check], dict[str, Any]]:
    """Synthetic raw data (the project's generator) and its standardized folder."""

    def action(check: Check) -> dict[str, Any]:
        name, config = DATASETS[task], check.config
        raw = Path(wf.raw_dir(config, name))
        commands = [
            ["download", "--dataset", name, "--source", wf.source_of(config, name), "--out",
             str(raw), "--options", wf.download_options(config, name), "--offline"],
            ["standardize", "--dataset", name, "--raw", str(raw), "--out", str(check.data(task)),
             "--source", wf.source_of(config, name),
             "--fractions", wf.csv(config["subsets"]["fractions"]),
             "--fewshot", wf.csv(config["subsets"]["fewshot"]),
             "--seed", str(config["subsets"]["seed"]),
             *shlex.split(wf.detection_format_flag(config, name))],
        ]
        for argv in commands:
            run_cli(argv)
        splits = check.splits(task)
        return {"dataset": name, "images": sum(splits.values()), "splits": splits,
                "command": [display(c) + "  # in-process" for c in commands]}

    return action


def features_step(check: Check) -> dict[str, Any]:
    task = "classification"
    out = check.out("features", task)
    argv = ["features", "--dataset-dir", str(check.data(task)), "--model", check.models[task],
            "--out", str(out), "--batch-size", str(check.config["bench"]["feature_batch_size"]),
            *shlex.split(wf.feature_flags(check.config))]
    job = run_marseval(check, "features:classification", argv)
    images = sum(json.loads((out / "meta.json").read_text())["counts"].values())
    return {"model": check.models[task], **job.fields(),
            **rate(images, job.seconds, "whole job: process start and model build included "
                   "(features records no timing of its own)")}


def _bench_args(check: Check, task: str, config: dict[str, Any] | None = None) -> list[str]:
    data = ["--dataset-dir", str(check.data(task)), "--model", check.models[task]]
    if wf.uses_feature_cache(config or check.config, task):
        data += ["--features", str(check.out("features", task))]
    return data


def tune_step(task: str) -> Callable[[Check], dict[str, Any]]:
    """One grid trial (`tune`), then `select` writes the best.json the final run reads."""

    def action(check: Check) -> dict[str, Any]:
        config, shard = check.config, check.out("tune", task) / "shard0.parquet"
        argv = ["tune", *_bench_args(check, task),
                "--grid", json.dumps(wf.task_grid(config, task)), "--shard", "0",
                "--shards", "1", "--seed", str(config["bench"]["tune_seed"]),
                *shlex.split(wf.setup_flags(config, task)), "--out", str(shard)]
        job = run_marseval(check, f"tune:{task}", argv)
        select = ["select", "--out", str(shard.with_name("best.json")), str(shard)]
        run_cli(select)
        import pandas as pd

        trial = pd.read_parquet(shard).iloc[0]
        splits = check.splits(task)
        images = int(trial["epochs_run"]) * (splits["train"] + splits["val"])
        fields = job.fields()
        fields["command"] = [fields["command"], display(select) + "  # in-process"]
        return {"model": check.models[task], **fields, "epochs": int(trial["epochs_run"]),
                "best_val_loss": float(trial["best_val_loss"]),
                **rate(images, float(trial["seconds"]), _fit_basis(check, task, "tune"))}

    return action


SHARED_TRIALS = 4  # the shared-pass step's grid: this many learning rates, one batch size


def shared_pass_step(check: Check) -> dict[str, Any]:
    """The classification grid of SHARED_TRIALS trials in the reference protocol (online,
    train-mode backbone, 16-mixed on CUDA), once in one shared pass and once one trial at a
    time: the speed-up, and how far apart the records are (equal on the CPU; CUDA kernels
    may round differently)."""
    import pandas as pd

    task = "classification"
    config = reference_config(check.config)
    grid = {**wf.task_grid(config, task), "lr": [10.0 ** -k for k in range(2, 2 + SHARED_TRIALS)]}
    runs = {}
    for trials in (SHARED_TRIALS, 1):
        shard = check.out("tune", task, f"-shared{trials}") / "shard0.parquet"
        argv = ["tune", *_bench_args(check, task, config), "--grid", json.dumps(grid),
                "--shard", "0", "--shards", "1", "--seed", "0",
                "--shared-pass-trials", str(trials),
                *shlex.split(wf.setup_flags(config, task)), "--out", str(shard)]
        job = run_marseval(check, f"tune-shared:{task} ({trials} a pass)", argv)
        runs[trials] = (job, pd.read_parquet(shard).sort_values("trial_id"))
    (shared_job, shared), (_, alone) = runs[SHARED_TRIALS], runs[1]
    differences = (shared["best_val_loss"].to_numpy() - alone["best_val_loss"].to_numpy())
    return {"model": check.models[task], "trials": len(shared), **shared_job.fields(),
            "seconds_shared": float(shared["seconds"].sum()),
            "seconds_one_at_a_time": float(alone["seconds"].sum()),
            "speedup": float(alone["seconds"].sum() / shared["seconds"].sum()),
            "max_best_val_loss_difference": float(abs(differences).max()),
            "same_epochs": bool((shared["epochs_run"].to_numpy()
                                 == alone["epochs_run"].to_numpy()).all())}


def _fit_basis(check: Check, task: str, command: str) -> str:
    what = ("cached feature rows (the probe protocol)" if wf.uses_feature_cache(check.config, task)
            else "images")
    return (f"{what} of every training and validation pass, over the fit seconds {command} "
            "records")


def train_step(task: str, protocol: str = "probe") -> Callable[[Check], dict[str, Any]]:
    """The final run: the selected settings, seed 0, the default partition, tested; with
    protocol "marsbench" the same run in the reference protocol (its own output folder)."""

    def action(check: Check) -> dict[str, Any]:
        config = check.config if protocol == "probe" else reference_config(check.config)
        tune_dir = check.out("tune", task)
        suffix = "" if protocol == "probe" else f"-{protocol}"
        out = check.out("runs", task, suffix) / "default" / "seed0.json"
        argv = ["train", *_bench_args(check, task, config),
                "--best", str(tune_dir / "best.json"), "--partition", "default", "--seeds", "0",
                *shlex.split(wf.setup_flags(config, task)), "--out", str(out)]
        name = f"train:{task}" if protocol == "probe" else f"train-{protocol}:{task}"
        job = run_marseval(check, name, argv)
        record = json.loads(out.read_text())
        expect_device(check, record["device"], f"the run record {out}")
        if record["protocol"]["name"] != config["bench"]["protocol"]:
            raise StepFailed(f"{out} records protocol {record['protocol']['name']!r}, "
                             f"not {config['bench']['protocol']!r}")
        images = record["epochs_run"] * (record["n_train"] + check.splits(task)["val"])
        # fit seconds only: the record's test_seconds also holds its versions() imports
        return {"model": check.models[task], **job.fields(), "device": record["device"],
                "epochs": record["epochs_run"],
                "protocol": record["protocol"]["name"],
                "precision": record["protocol"].get("precision"),
                "test": {"metric": record["test"]["metric"], "value": record["test"]["primary"]},
                **rate(images, record["timing"]["fit_seconds"],
                       _fit_basis(check, task, "train"))}

    return action


def retrieval_model(check: Check) -> str:
    """The retrieval model's name for the jobs. An untagged `open_clip:<architecture>` is
    built with random weights (no download here), saved as a checkpoint in the work folder
    and named `open_clip:<architecture>@<file>`: the loading path fine-tuned CLIPs take."""
    if check._retrieval_model is None:
        name = check.models["retrieval"]
        arch = name.removeprefix("open_clip:")
        if name.startswith("open_clip:") and "@" not in arch and ":" not in arch:
            import open_clip
            import torch

            path = check.work / "weights" / f"{arch}-random.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), path)
            name = f"{name}@{path}"
        check._retrieval_model = name
    return check._retrieval_model


EMBED_LINE = re.compile(r"(\d+) items in ([\d.]+) s \(([\d.]+) items/s\) with .+ on (\S+)$",
                        re.MULTILINE)


def embed_step(check: Check) -> dict[str, Any]:
    task = "retrieval"
    out = check.out("retrieval/embeddings", task) / "shard0"
    argv = ["embed", "--dataset-dir", str(check.data(task)), "--model", retrieval_model(check),
            "--shard", "0", "--shards", "1", *shlex.split(wf.embed_flags(check.config)),
            "--out", str(out)]
    job = run_marseval(check, "embed:retrieval", argv)
    found = EMBED_LINE.search(job.log)
    if found is None:
        raise StepFailed("the embed log has no 'N items in S s' line", log_tail=tail(job.log))
    expect_device(check, found[4], "the embed log")
    images, per_s = int(found[1]), float(found[3])
    return {"model": check.models[task], **job.fields(), "device": found[4], "images": images,
            "images_per_s": per_s or images / job.seconds,
            "images_per_s_basis": "embed's own log: model load, image decoding and both towers"}


def index_step(check: Check) -> dict[str, Any]:
    task = "retrieval"
    out = check.out("retrieval/index", task)
    argv = ["index", "--out", str(out), *shlex.split(wf.index_flags(check.config)),
            str(check.out("retrieval/embeddings", task) / "shard0")]
    job = run_marseval(check, "index:retrieval", argv)
    info = json.loads((out / "index.json").read_text())
    return {**job.fields(), "device": info["device"], "kind": info["kind"],
            "vectors": info["ntotal"], "build_seconds": info["build_seconds"]}


def queries_step(check: Check) -> dict[str, Any]:
    task = "retrieval"
    out = check.out("retrieval/queries", task, ".npz")
    argv = ["queries", "--dataset-dir", str(check.data(task)), "--model", retrieval_model(check),
            *shlex.split(wf.queries_flags(check.config)), "--out", str(out)]
    job = run_marseval(check, "queries:retrieval", argv)
    return {"model": check.models[task], **job.fields()}


def evaluate_step(check: Check) -> dict[str, Any]:
    """Text queries searched in the index: every database item ranked (faiss search)."""
    task = "retrieval"
    out = check.out("retrieval/eval", task)
    argv = ["evaluate", "--dataset-dir", str(check.data(task)),
            "--index", str(check.out("retrieval/index", task)), "--model", retrieval_model(check),
            "--queries", str(check.out("retrieval/queries", task, ".npz")),
            *shlex.split(wf.evaluate_flags(check.config)), "--out", str(out)]
    job = run_marseval(check, "evaluate:retrieval", argv)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"model": check.models[task], **job.fields(),
            "database_size": metrics["database_size"], "applicable": metrics["applicable"]}


def search_step(check: Check) -> dict[str, Any]:
    """The sharded layout's search job of the embedding shard (the whole database ranked for
    each text query, as landform retrieval asks), with the flags its rule builds: on the GPU
    where the GPU build of faiss is installed and sees one (`index_gpu: auto`)."""
    import numpy as np

    task = "retrieval"
    out = check.out("retrieval/search", task, ".npz")
    argv = ["search", "--shard", str(check.out("retrieval/embeddings", task) / "shard0"),
            "--queries", str(check.out("retrieval/queries", task, ".npz")), "--top-k", "all",
            *shlex.split(wf.index_flags(check.config)), "--out", str(out)]
    job = run_marseval(check, "search:retrieval", argv)
    with np.load(out) as record:
        devices, rows = [str(d) for d in record["devices"]], int(record["n"])
    return {**job.fields(), "devices": devices, "rows": rows,
            "faiss_gpu": faiss_gpu_missing(check.device) or "used where k <= 2,048"}


def rankings_step(check: Check) -> dict[str, Any]:
    """The merge of the search results into the global ranking (one shard here)."""
    task = "retrieval"
    out = check.out("retrieval/rankings", task)
    argv = ["rankings", "--top-k", "all", "--results",
            str(check.out("retrieval/search", task, ".npz")), "--shards",
            str(check.out("retrieval/embeddings", task) / "shard0"), "--out", str(out)]
    job = run_marseval(check, "rankings:retrieval", argv)
    info = json.loads((out / "rankings.json").read_text())
    return {**job.fields(), "k": info["k"], "rows": info["ntotal"]}


def faiss_gpu_missing(device: str) -> str | None:
    """Why FAISS cannot run on a GPU here, or None when it can."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return (f"faiss {faiss.__version__} here is the CPU build (faiss-cpu): there is no "
                "GPU index to build; install the GPU build of faiss to check it")
    if device != "cuda":
        return "a CPU run: FAISS on the GPU is checked in CUDA runs"
    from marseval.retrieval.index import gpu_available  # what `index --use-gpu` goes by

    if not gpu_available():
        return "the GPU build of faiss sees no GPU (faiss.get_num_gpus() is 0)"
    return None


def faiss_gpu_step(check: Check) -> dict[str, Any]:
    """An IVF index built on the GPU (k-means, add) and searched there (its recall@10
    against an exact GPU index), through `index --use-gpu yes`."""
    reason = faiss_gpu_missing(check.device)
    if reason:
        raise StepSkipped(reason)
    task = "retrieval"
    out = check.out("retrieval/index_gpu", task)
    argv = ["index", "--out", str(out), "--kind", "ivf", "--use-gpu", "yes",
            str(check.out("retrieval/embeddings", task) / "shard0")]
    job = run_marseval(check, "faiss_gpu:retrieval", argv)
    info = json.loads((out / "index.json").read_text())
    expect_device(check, info["device"], f"{out}/index.json")
    return {**job.fields(), "device": info["device"], "kind": info["kind"],
            "vectors": info["ntotal"], "build_seconds": info["build_seconds"],
            "recall_at_10_vs_exact": info.get("recall_at_10_vs_exact")}


# ------------------------------------------------------------------------- the slot allocator


def _start_claimer(check: Check, name: str, env: dict[str, str], timeout: float | None,
                   with_torch: bool) -> tuple[subprocess.Popen, Path]:
    out = check.work / "slots" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(PROBE), "claim", str(out),
               "--release", str(check.work / "slots" / "release")]
    command += ["--timeout", str(timeout)] if timeout is not None else []
    command += ["--torch"] if with_torch else []
    with out.with_suffix(".log").open("w") as log:  # the waiter's "waiting" warning goes here
        return subprocess.Popen(command, env=env, cwd=check.work, stdout=log,
                                stderr=subprocess.STDOUT), out


def _claim_record(proc: subprocess.Popen, out: Path, limit: float = 120.0) -> dict[str, Any]:
    """The claimer's record once written (it holds its slot after writing it)."""
    deadline = time.monotonic() + limit
    while not out.is_file():
        if proc.poll() is not None and not out.is_file():
            raise StepFailed(f"claimer {proc.pid} exited with {proc.returncode} and no record")
        if time.monotonic() > deadline:
            raise StepFailed(f"claimer {proc.pid} wrote no record in {limit:.0f} s")
        time.sleep(0.05)
    return json.loads(out.read_text())


def _slot_env(check: Check) -> dict[str, str]:
    """A private lock folder; no preset device. A CPU run lists two fake GPU ids."""
    env = {k: v for k, v in check.env.items()
           if k not in ("CUDA_VISIBLE_DEVICES", "MARSEVAL_GPUS")}
    env["MARSEVAL_GPU_LOCKS"] = str(check.work / "slots" / "locks")
    if check.device == "cpu":
        env["MARSEVAL_GPUS"] = "0,1"
    return env


def _verify_holders(check: Check, held: list[dict[str, Any]]) -> None:
    problems = []
    for record in held:
        if not record.get("claimed") or record.get("source") != "lock":
            problems.append(f"no lock slot: {record}")
        elif record["visible"] != record["device"]:
            problems.append(f"CUDA_VISIBLE_DEVICES={record['visible']} for device "
                            f"{record['device']}")
        elif record["lock_holder"] != str(record["pid"]):
            problems.append(f"lock of device {record['device']} names pid "
                            f"{record['lock_holder']}, not {record['pid']}")
    devices = [r.get("device") for r in held]
    if len(set(devices)) != len(devices):
        problems.append(f"concurrent claimers share a device: {devices}")
    if check.device == "cuda":
        first = held[0]
        if first.get("device") != "0":
            problems.append(f"a fresh lock folder handed out device {first.get('device')}, not 0")
        if first.get("torch_device_count") != 1 or first.get("tensor_sum") != 1024.0:
            problems.append(f"torch after the claim sees {first.get('torch_device_count')} "
                            "CUDA devices (expected exactly 1) or could not compute on it")
    if problems:
        raise StepFailed("; ".join(problems), holders=held)


def slots_step(check: Check) -> dict[str, Any]:
    """Claimers in their own processes, as GPU jobs claim: the holders get distinct devices
    (CUDA: device 0, and torch sees exactly that one), a claimer for a held device waits (and
    times out here), and it gets the device once the holder is gone."""
    env, cuda = _slot_env(check), check.device == "cuda"
    holders = [_start_claimer(check, f"holder{i}", env, None, cuda)
               for i in range(1 if cuda else 2)]
    try:
        held = [_claim_record(proc, out) for proc, out in holders]
        _verify_holders(check, held)
        # every held device and nothing else: on a many-GPU server a free one would be taken
        busy = dict(env, MARSEVAL_GPUS=",".join(r["device"] for r in held))
        proc, out = _start_claimer(check, "waiter", busy, SLOT_WAIT_S, False)
        proc.wait(timeout=120)
        waiter = _claim_record(proc, out)
        if waiter.get("claimed") or waiter.get("waited_s", 0) < SLOT_WAIT_S:
            raise StepFailed(f"a claimer got a held device or did not wait: {waiter}")
    finally:
        (check.work / "slots" / "release").touch()
        for proc, _ in holders:
            proc.wait(timeout=60)
    proc, out = _start_claimer(check, "after", busy, 30.0, False)
    proc.wait(timeout=120)
    after = _claim_record(proc, out)
    if not after.get("claimed"):
        raise StepFailed(f"the device was not handed out again once released: {after}")
    return {"devices": [r["device"] for r in held], "fake_ids": not cuda,
            "torch_device_count": held[0].get("torch_device_count"),
            "cuda_device_name": held[0].get("torch_device_name"),
            "waiter_waited_s": round(waiter["waited_s"], 3),
            "waiter_error": waiter.get("error"), "reclaimed_device": after["device"]}


# ------------------------------------------------------------------------- the runner


def steps() -> list[Step]:
    listed = [Step("slots", "slots", (), slots_step)]
    for task in ("classification", "segmentation", "detection", "retrieval"):
        listed.append(Step(f"data:{task}", task, (), data_step(task)))
    listed.append(Step("features:classification", "classification",
                       ("data:classification",), features_step))
    for task in ("classification", "segmentation", "detection"):
        first = "features:classification" if task == "classification" else f"data:{task}"
        listed += [Step(f"tune:{task}", task, (first,), tune_step(task)),
                   Step(f"train:{task}", task, (f"tune:{task}",), train_step(task)),
                   Step(f"train-marsbench:{task}", task, (f"tune:{task}",),
                        train_step(task, "marsbench"))]
    listed.append(Step("tune-shared:classification", "classification",
                       ("tune:classification",), shared_pass_step))
    listed += [
        Step("embed:retrieval", "retrieval", ("data:retrieval",), embed_step),
        Step("index:retrieval", "retrieval", ("embed:retrieval",), index_step),
        Step("queries:retrieval", "retrieval", ("data:retrieval",), queries_step),
        Step("evaluate:retrieval", "retrieval", ("index:retrieval", "queries:retrieval"),
             evaluate_step),
        Step("search:retrieval", "retrieval", ("embed:retrieval", "queries:retrieval"),
             search_step),
        Step("rankings:retrieval", "retrieval", ("search:retrieval",), rankings_step),
        Step("faiss_gpu:retrieval", "retrieval", ("embed:retrieval",), faiss_gpu_step),
    ]
    return listed


def _skip_reason(step: Step, check: Check) -> str | None:
    if step.part not in check.parts:
        return "not selected (--only)"
    blocked = [f"{n} ({check.results.get(n, {}).get('status', 'not run')})"
               for n in step.needs if check.results.get(n, {}).get("status") != "ok"]
    if blocked:
        return f"needs {', '.join(blocked)}"
    if check.remaining() <= 0:
        return f"budget: the {check.budget_s:g} s budget was spent before this step"
    return None


def run_step(step: Step, check: Check) -> dict[str, Any]:
    """Run one step unless its part is off, a step it needs did not succeed, or the budget
    is spent; its record either way. Exceptions become a failed record, never propagate."""
    record: dict[str, Any] = {"name": step.name, "part": step.part, "status": "skipped",
                              "seconds": 0.0}
    reason = _skip_reason(step, check)
    if reason:
        record["reason"] = reason
        check.results[step.name] = record
        return record
    started = time.perf_counter()
    try:
        record.update(step.action(check))
        record["status"] = "ok"
    except StepSkipped as exc:
        record["reason"] = str(exc)
    except StepFailed as exc:  # a job's failure: its log tail (and traceback) tell why
        record.update(status="failed", error=str(exc), **exc.details)
    except Exception as exc:  # any failure is the step's result: the next steps still run
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
    record["seconds"] = round(time.perf_counter() - started, 3)
    check.results[step.name] = record
    return record


def _summary_line(record: dict[str, Any]) -> str:
    line = f"[{record['status']}] {record['name']}: {record['seconds']:.1f} s"
    if record.get("images_per_s"):
        line += f", {record['images_per_s']:.1f} images/s"
    if record.get("peak_gpu_mib"):
        line += f", peak {record['peak_gpu_mib']:.0f} MiB"
    if record.get("reason"):
        line += f" ({record['reason']})"
    if record.get("error"):
        line += f": {record['error']}"
    return line


# ------------------------------------------------------------------------- machine and main


def versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (no imports)."""
    found: dict[str, str | None] = {}
    for key, dists in (("torch", ["torch"]), ("torchvision", ["torchvision"]),
                       ("faiss", ["faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-cpu",
                                  "faiss"]),
                       ("open_clip", ["open_clip_torch"]), ("timm", ["timm"]),
                       ("ultralytics", ["ultralytics"]),
                       ("smp", ["segmentation-models-pytorch"])):
        found[key] = None
        for dist in dists:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                found[key] = f"{importlib.metadata.version(dist)} ({dist})"
                break
    return found


def gpu_info() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda}


def note(device: str, size: str, gpu: dict[str, Any] | None) -> str:
    if device == "cuda":
        return f"ran every step on CUDA ({gpu['name']}) at {size} size"
    why = "no GPU" if gpu is None else "--device cpu"
    return f"{why}: ran every step on the CPU at {size} size; no CUDA path was exercised"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--size", default="auto", choices=["auto", "tiny", "full"],
                        help="auto: full on CUDA, tiny on the CPU")
    parser.add_argument("--out", type=Path,
                        help="results JSON (default benchmarks/results/gpu_check_<device>.json)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="steps not started by then are skipped; a running one is killed")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run, of {', '.join(PARTS)}")
    parser.add_argument("--jobs", type=int, default=1,
                        help="parts run side by side (default 1: clean per-step figures)")
    parser.add_argument("--work", type=Path,
                        help="keep data, outputs and logs in this new or empty folder "
                             "(default: a temporary folder, removed at the end)")
    for task in DATASETS:
        parser.add_argument(f"--{task}-model",
                            help=f"{task} model (default: the size's; see SIZES)")
    args = parser.parse_args(argv)
    args.only = tuple(p for p in args.only.split(",") if p)
    if unknown := set(args.only) - set(PARTS):
        parser.error(f"--only: unknown parts {sorted(unknown)}; choose from {PARTS}")
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        parser.error(f"--work {args.work} is not empty")
    return args


def resolve(args: argparse.Namespace, gpu: dict[str, Any] | None) -> tuple[str, str]:
    device = args.device if args.device != "auto" else ("cuda" if gpu else "cpu")
    if device == "cuda" and gpu is None:
        raise SystemExit("gpu_check: --device cuda, but torch sees no CUDA device")
    size = args.size if args.size != "auto" else ("full" if device == "cuda" else "tiny")
    return device, size


def _run_chain(chain: list[Step], check: Check) -> None:
    for step in chain:
        record = run_step(step, check)
        with STDOUT_LOCK:
            print(_summary_line(record), flush=True)


def run_check(check: Check, jobs: int = 1) -> list[dict[str, Any]]:
    """Every step in order; with jobs > 1 the parts (independent chains of steps) run side
    by side, which shortens a CPU run but blurs per-step timings and device memory."""
    plan = steps()
    chains = [[s for s in plan if s.part == part] for part in PARTS]
    if jobs <= 1:
        _run_chain(plan, check)
    else:
        with ThreadPoolExecutor(jobs) as pool:
            for done in [pool.submit(_run_chain, chain, check) for chain in chains]:
                done.result()
    return [check.results[s.name] for s in plan]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gpu = gpu_info()
    device, size = resolve(args, gpu)
    spec = SIZES[size]
    models = {task: getattr(args, f"{task}_model") or spec.models[task] for task in DATASETS}
    work = args.work or Path(tempfile.mkdtemp(prefix="marseval-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    check = Check(device, size, work.resolve(), args.budget_s, args.only, models,
                  build_config(device, spec, models, work.resolve()),
                  child_env(device, work.resolve()))
    print(f"gpu_check: {note(device, size, gpu)}; work folder {check.work}", flush=True)
    load_before = os.getloadavg()[0]  # timings are only as good as the machine is idle
    try:
        records = run_check(check, args.jobs)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "failed", "skipped")}
    out = args.out or REPO / "benchmarks" / "results" / f"gpu_check_{device}.json"
    write_results(out, {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device, "size": size, "note": note(device, size, gpu),
        "ok": counts["failed"] == 0, "counts": counts,
        "total_seconds": round(time.monotonic() - check.started, 1),
        "budget_s": args.budget_s, "parts": list(args.only), "jobs": args.jobs,
        "load_avg_1m": {"start": load_before, "end": os.getloadavg()[0]},
        # the logs named in the steps are gone with a temporary work folder (failures keep
        # their log tail here)
        "work": {"path": str(check.work), "kept": args.work is not None},
        "machine": machine(**versions(), gpu=gpu),
        "setup": {"models": models, "datasets": DATASETS, "image_size": spec.image_size,
                  "samples": spec.samples, "landforms_per_class": spec.landforms_per_class,
                  "epochs": spec.epochs, "batch_size": spec.batch_size,
                  "input_size": spec.input_size, "num_workers": spec.num_workers},
        "memory": MEMORY_NOTE, "steps": records})
    print(f"gpu_check: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} "
          f"skipped in {time.monotonic() - check.started:.0f} s; results in {out}")
    return 1 if counts["failed"] else 0


MEMORY_NOTE = (
    "peak_gpu_mib / peak_gpu_reserved_mib: torch.cuda.max_memory_allocated / "
    "max_memory_reserved read inside the job's own process at its end (gpu_probe.py runs the "
    "command in-process): exact for PyTorch tensors, without the CUDA context or FAISS. "
    "gpu_memory_used_peak_mib: the job's device as nvidia-smi reports it, sampled every 200 "
    "ms while the step ran: everything on the device, other processes included. "
    "peak_rss_mib: the job's peak resident memory (getrusage).")


if __name__ == "__main__":
    sys.exit(main())
