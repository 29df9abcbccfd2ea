"""The workflow as users run it: lint, formatting, the paper DAG, the embedded default."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import (
    REPO,
    SUPPORT,
    embedded_args,
    guarded_env,
    kill_process_group,
    repo_copy,
    snakemake,
    tool,
)

from marseval.retrieval.ctx.plan import group_ids
from marseval.workflow import index_params

pytestmark = pytest.mark.workflow  # `pytest -m "not workflow and not cluster"`: the fast loop


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.parametrize("configfile", [None, "config/embedded.yaml"])
def test_lint_has_no_findings(configfile: str | None, workflow_env: dict[str, str],
                              tmp_path: Path) -> None:
    args = ["--lint"] + (["--configfile", configfile] if configfile else [])
    result = snakemake(args, workflow_env, cwd=repo_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in output
    assert "Lints for" not in output


def test_snakefmt_check() -> None:
    result = subprocess.run([tool("snakefmt"), "--check", "Snakefile", "workflow/rules"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_check() -> None:
    result = subprocess.run([tool("ruff"), "check", "marseval", "tests", "benchmarks", "envs"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def validated_file(path: Path) -> dict:
    """A config file with the schema's defaults filled in (what the workflow should run)."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load(path.read_text())
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"), set_default=True)
    return config


# 20 Mars-Bench + 3 MarsRetrieval datasets, each downloaded and standardized once.
# 9 classification sets x 5 models: 8 tune shards, select, and
# 7 seeds x (1 + 7 partitions + 6 few-shot) runs. 8 segmentation sets x 4 models and
# 3 detection sets x 5 models (the reference SSD beside SSD300): 8 tune shards, select,
# 7 seeds x (1 + 7 partitions) runs. One runs table and one report per task.
# MarsRetrieval: 16 models x 3 tasks, each embedded in 8 shards (geo-localization: one per
# CTX cell group); queries for landform and geo-localization, searched shard by shard (exact:
# no shard indexes) and merged; paired ranks scored from the shards; one summary per task.
# Then the config copy and the job usage table for the report, and `all`.
CLASSIFICATION_PAIRS, DENSE_PAIRS = 9 * 5, 8 * 4 + 3 * 5
# Figure 4: SatMAE, CROMA, Prithvi on 4 datasets (bench.model_scope), full set + 7 fractions
EO_PAIRS = 3 * 4
PAIRS = CLASSIFICATION_PAIRS + EO_PAIRS + DENSE_PAIRS
# The paper trains in the reference protocol (bench.protocol: marsbench): its frozen backbones
# run in train mode on augmented images, so no feature cache is planned.
CTX_GROUPS = 3600 // 40  # the CTX V01 tiles within 80 degrees, 40 a group
RETRIEVAL_MODELS = 16  # the paper's 16 rows: open_clip, AIMv2, DINOv3, MarScope, 8 multimodal LLMs
PAPER_JOBS = {"download": 23, "standardize": 23, "data_summary": 1,
              "tune": PAIRS * 8, "select": PAIRS,
              "train": CLASSIFICATION_PAIRS * 7 * 14 + EO_PAIRS * 7 * 8 + DENSE_PAIRS * 7 * 8,
              "collect": 3,
              "report": 3, "ctx_download": CTX_GROUPS, "ctx_cells": CTX_GROUPS,
              "embed": RETRIEVAL_MODELS * (8 + 8 + CTX_GROUPS),
              "search": RETRIEVAL_MODELS * (8 + CTX_GROUPS), "rankings": RETRIEVAL_MODELS * 2,
              "queries": RETRIEVAL_MODELS * 2, "evaluate": RETRIEVAL_MODELS * 3,
              "retrieval_report": 3, "run_config": 1, "job_usage": 1,
              "all": 1}


def planned_jobs(output: str, rule: str) -> list[dict[str, str]]:
    """The jobs of a rule in `snakemake -n -p` output: wildcards, resources and command."""
    jobs = []
    for block in re.split(r"\n(?=\[\w{3} \w{3} )", output):
        if not re.search(rf"^rule {rule}:$", block, re.M):
            continue
        fields = dict(re.findall(r"^\s+(wildcards|resources): (.*)$", block, re.M))
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append({**fields, "command": command[1] if command else ""})
    return jobs


def pairs(text: str) -> dict[str, str]:
    """`a=1, b=x` -> {"a": "1", "b": "x"}."""
    return dict(item.split("=", 1) for item in text.split(", "))


def test_the_paper_is_what_users_type_plans(tmp_path: Path, workflow_env: dict[str, str]) -> None:
    """`snakemake -n --cores 64 --resources gpu=8` in a checkout plans the paper, exactly."""
    checkout = repo_copy(tmp_path / "checkout")
    netlog = tmp_path / "connections.log"
    env = dict(workflow_env, MARSEVAL_NETLOG=str(netlog),
               PYTHONPATH=f"{SUPPORT}{os.pathsep}{workflow_env['PYTHONPATH']}")
    result = snakemake(["-n", "-p", "--cores", "64", "--resources", "gpu=8"], env,
                       cwd=checkout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert not netlog.exists(), netlog.read_text()
    assert "is extended by" not in output  # nothing merged into the paper config
    counts = job_counts(output)
    assert counts == {**PAPER_JOBS, "total": sum(PAPER_JOBS.values())}
    assert "resources/raw/huggingface/mb-s5mars" in output
    # the config in effect is the paper file plus the schema's defaults, nothing else
    import yaml

    recorded = yaml.safe_load((checkout / "results/paper/config.yaml").read_text())
    assert recorded == validated_file(checkout / "config/config.yaml")
    assert recorded["bench"]["head"] == "linear" and not recorded["bench"]["batch_seeds"]
    assert recorded["bench"]["grid_overrides"] == {"classification": {}, "segmentation": {},
                                                   "detection": {}}
    # the paper grid reaches the commands: every task's tune job carries it, unchanged
    tune = planned_jobs(output, "tune")
    assert len(tune) == PAIRS * 8
    from marseval.job_resources import JobSizer

    sizer = JobSizer(recorded)
    for dataset, flag in (("mb-boulder_seg", None), ("mb-boulder_det", None),
                          ("mb-frost_cls", "--head linear")):
        job = next(j for j in tune if pairs(j["wildcards"])["dataset"] == dataset)
        command = job["command"]
        grid = json.loads(re.search(r"--grid '(.*?)'", command)[1])
        assert grid["max_epochs"] == [50, 100, 200], command
        assert grid["batch_size"] == [16, 32, 64] and grid["lr_schedule"] == [
            "none", "cosine", "plateau", "step"]
        assert "--input-size" not in command
        assert flag is None or flag in command
        # the reference protocol: online through the train-mode backbone, last epoch tested
        assert "--protocol marsbench" in command and "--features" not in command
        assert "--shared-pass-trials 32" in command
        assert "--selection last" in command and "--augment" in command.split()
        # the job asks for what marseval.job_resources computes for it (first attempt)
        resources = pairs(job["resources"])
        wildcards = pairs(job["wildcards"])
        assert int(resources["runtime"]) == sizer.runtime_minutes("tune", wildcards)
        assert int(resources["mem_mb"]) == sizer.memory_mb("tune", wildcards)
        assert resources["gpu"] == "1"
    train = planned_jobs(output, "train")
    assert len(train) == PAPER_JOBS["train"]
    # geo-localization scores a tile's south-west corner, as the reference does
    geo = [j for j in planned_jobs(output, "evaluate") if "geolocalization" in j["wildcards"]]
    assert len(geo) == RETRIEVAL_MODELS
    assert all("--location sw_corner" in j["command"] for j in geo)
    models = {re.search(r"--model (\S+)", j["command"])[1].strip("'") for j in geo}
    assert {"open_clip:ViT-L-14-quickgelu@dfn2b",  # as the reference builds DFN2B
            "open_clip:hf-hub:claytonwang/MarsScope-v1", "mllm:e5-v",
            "mllm:gme-qwen2-vl-2b", "mllm:bge-vl-large"} <= models
    assert all(re.search(r"--seeds \d+ ", j["command"]) for j in train)  # a job per seed
    # the geo database: 3,600 Murray Lab tiles in 90 download jobs, cut into 0.2-degree cells
    downloads = planned_jobs(output, "ctx_download")
    tiles = [t for j in downloads for t in re.search(r"--tiles (\S+)", j["command"])[1].split(",")]
    assert len(tiles) == len(set(tiles)) == 3600 and "E-180_N-80" in tiles
    assert all("--source https://murray-lab.caltech.edu/CTX/V01/tiles/" in j["command"]
               and pairs(j["resources"])["downloads"] == "1" for j in downloads)
    cells = planned_jobs(output, "ctx_cells")
    assert all("--delta 0.2 --pixels 512" in j["command"] for j in cells)
    geo_embed = [j for j in planned_jobs(output, "embed") if "geolocalization" in j["wildcards"]]
    assert all("--shard 0 --shards 1 --cells results/paper/retrieval/cells/group" in j["command"]
               for j in geo_embed)
    # the sharded layout: each cell group searched on its own for the top 20,000, then merged;
    # landform retrieval ranks the whole database
    searches = planned_jobs(output, "search")
    geo_search = [j for j in searches if "geolocalization" in j["wildcards"]]
    assert len(geo_search) == RETRIEVAL_MODELS * CTX_GROUPS
    assert all("--top-k 20000 --kind exact" in j["command"] and "--index" not in j["command"]
               for j in geo_search)
    assert all("--top-k all" in j["command"] for j in searches if j not in geo_search)
    merges = planned_jobs(output, "rankings")
    assert sum("--top-k 20000" in j["command"] for j in merges) == RETRIEVAL_MODELS
    assert all(int(pairs(j["resources"])["mem_mb"]) < 16000 for j in searches + merges)


def test_a_users_config_inherits_nothing(tmp_path: Path, workflow_env: dict[str, str]) -> None:
    """A config file of one dataset: the embedded default's and the paper's settings that it
    does not set are not applied; the schema's defaults are."""
    checkout = repo_copy(tmp_path)
    (checkout / "mine.yaml").write_text("results: results/mine\ndatasets: [mb-frost_cls]\n"
                                        "bench: {models: {classification: [timm:resnet10t]}}\n")
    result = snakemake(["-n", "-p", "--configfile", "mine.yaml"], workflow_env, cwd=checkout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    import yaml

    recorded = yaml.safe_load((checkout / "results/mine/config.yaml").read_text())
    assert recorded == validated_file(checkout / "mine.yaml")
    assert recorded["source"] == "synthetic" and recorded["offline"] is False
    assert recorded["bench"]["head"] == "linear"  # the embedded default's is batchnorm_linear
    assert recorded["bench"]["seeds"] == [0, 1, 10, 42, 123, 1000, 1234]
    assert recorded["bench"]["grid"]["max_epochs"] == [50]  # schema, not paper or embedded
    assert recorded["bench"]["pretrained"] is True
    command = planned_jobs(output, "tune")[0]["command"]
    assert "--head linear" in command and '"max_epochs": [50]' in command
    assert "--protocol marsbench" in command  # the schema's default protocol


def test_unknown_config_key_stops_the_workflow(workflow_env: dict[str, str],
                                               tmp_path: Path) -> None:
    checkout = repo_copy(tmp_path)
    result = snakemake(["-n", "--configfile", "config/embedded.yaml", "--config",
                        "sourse=zenodo"], workflow_env, cwd=checkout)
    assert result.returncode != 0
    assert "'sourse' was unexpected" in result.stdout + result.stderr
    assert not (checkout / "results/config.yaml").exists()  # nothing recorded for a bad config


def result_files(workdir: Path) -> dict[str, bytes]:
    """Every table, metrics record, run record, feature and embedding array a run makes
    (figures, logs and timings aside)."""
    results = workdir / "results"
    found = [*results.glob("**/*.csv"), *results.glob("report/*/normalizer.json"),
             *results.glob("retrieval/eval/*/*/metrics.json"), *results.glob("tune/*/*/best.json"),
             *results.glob("features/*/*/*.npy"), *results.glob("retrieval/*/*/*/*.npy"),
             *results.glob("retrieval/embeddings/*/*/*/*.npy"),
             *results.glob("retrieval/rankings/*/*/*/*.npy")]
    files = {str(p.relative_to(workdir)): p.read_bytes() for p in found
             if "logs" not in p.parts and p.name != "job_usage.csv"}
    for record in results.glob("runs/*/*/*/seed*.json"):  # a run record less its timings
        content = json.loads(record.read_text())
        content.pop("timing")
        files[str(record.relative_to(workdir))] = json.dumps(content, sort_keys=True).encode()
    for shard in results.glob("tune/*/*/shard*.parquet"):  # trials less their seconds
        trials = pd.read_parquet(shard).drop(columns="seconds")
        files[str(shard.relative_to(workdir))] = trials.to_csv(index=False).encode()
    for path in [*results.glob("retrieval/queries/*/*.npz"),
                 *results.glob("retrieval/search/*/*/*/*.npz")]:
        with np.load(path) as arrays:
            files[str(path.relative_to(workdir))] = b"".join(
                name.encode() + arrays[name].tobytes() for name in sorted(arrays.files))
    return files


def assert_same_results(first: Path, second: Path) -> None:
    a, b = result_files(first), result_files(second)
    assert sorted(a) == sorted(b)
    expected = [f"results/tables/{task}_runs.csv" for task in
                ("classification", "segmentation", "detection")]
    expected += [f"results/report/{task}/aggregate.csv" for task in
                 ("classification", "segmentation", "detection")]
    expected += [f"results/retrieval/report/{task}/summary.csv" for task in
                 ("paired", "landform", "geolocalization")]
    assert set(expected) <= set(a), sorted(a)
    assert [name for name in a if a[name] != b[name]] == []


EMBEDDED_CTX_GROUPS = group_ids(validated_file(REPO / "config/embedded.yaml"))
# index: auto (exact at this size), so the shard_index jobs run; their folders carry its tag
EMBEDDED_TAG = index_params(validated_file(REPO / "config/embedded.yaml")).tag()
# The rerun of the determinism and resume tests: one job of every rule (job_usage aside: its
# table is timings), each chosen so that nothing its inputs need reruns, on a copy of the
# embedded default's results. Each target is deleted, then made again by `snakemake TARGETS`.
RERUN_TARGETS = (
    "resources/raw/synthetic/mb-domars16k",  # download
    "results/data/mb-domars16k",  # standardize
    "results/tables/datasets.csv",  # data_summary
    "results/features/mb-domars16k/timm-resnet10t",  # features (of the dataset made again)
    "results/tune/mb-change_cls_hirise/timm-resnet10t/shard0.parquet",  # tune
    "results/tune/mb-change_cls_hirise/timm-resnet10t/best.json",  # select
    "results/runs/mb-surface_multi_label_cls/timm-resnet10t/fewshot_5",  # train: classification
    "results/runs/mb-crater_multi_seg/unet-resnet18/fraction_0.50",  # train: segmentation
    "results/runs/mb-boulder_det/yolo11n/fraction_0.50",  # train: detection
    "results/tables/detection_runs.csv",  # collect
    "results/report/detection/aggregate.csv",  # report
    f"resources/ctx/synthetic/group{EMBEDDED_CTX_GROUPS[1]}",  # ctx_download
    f"results/retrieval/cells/group{EMBEDDED_CTX_GROUPS[1]}",  # ctx_cells
    "results/retrieval/embeddings/mr-landforms/tiny-clip/shard1",  # embed
    f"results/retrieval/shard_index/mr-geolocalization/tiny-clip/{EMBEDDED_TAG}/shard2",
    f"results/retrieval/search/mr-landforms/tiny-clip/{EMBEDDED_TAG}/shard1.npz",  # search
    f"results/retrieval/rankings/mr-geolocalization/tiny-clip/{EMBEDDED_TAG}",  # rankings
    "results/retrieval/queries/mr-geolocalization/tiny-clip.npz",  # queries
    "results/retrieval/eval/mr-vl_pairs/tiny-clip",  # evaluate
    "results/retrieval/report/paired",  # retrieval_report
    "results/tables/config.yaml",  # run_config
)
RUN_FOLDERS = [name for name in RERUN_TARGETS if name.startswith("results/runs/")]


@dataclass
class Rerun:
    """A copy of the embedded default's checkout whose rerun was killed and then resumed."""

    first: Path  # the embedded default's checkout
    workdir: Path
    started: float  # time.time() when the rerun began
    killed_files: list[Path]  # files with their final names at the moment of the kill
    done_at_kill: dict[str, int]  # targets (not run records) made by then: modification ns
    resumed: subprocess.CompletedProcess
    unlocked: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def killed_rerun(embedded_default, tmp_path_factory: pytest.TempPathFactory) -> Rerun:
    """The embedded default's checkout copied, RERUN_TARGETS deleted, and `snakemake TARGETS`
    run until a remade final-run record and another remade target exist; then Snakemake and
    its running jobs are killed together (SIGKILL to the process group), unlocked and resumed,
    as the README says. One rerun serves the determinism and the resume tests (README,
    Testing)."""
    first, result = embedded_default
    assert result.returncode == 0, result.stdout + result.stderr
    workdir = tmp_path_factory.mktemp("rerun") / "checkout"
    shutil.copytree(first, workdir, symlinks=True)  # copy2: modification times kept
    targets = []
    for name in RERUN_TARGETS:  # a train job's target is its records
        path = workdir / name
        targets += ([str(p.relative_to(workdir)) for p in sorted(path.glob("seed*.json"))]
                    if name in RUN_FOLDERS else [name])
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    args, env = [*targets, *embedded_args()], guarded_env(workdir)
    started = time.time()
    run = subprocess.Popen([tool("snakemake"), *args], cwd=workdir, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.monotonic() + 900

    def made_again(names: list[str]) -> bool:
        # a target other than a run folder counts once Snakemake has closed its job too
        return any(any((workdir / name).glob("seed*.json")) if name in RUN_FOLDERS
                   else (workdir / name).exists() and not _marked_incomplete(workdir, name)
                   for name in names)

    # a download writes its folder in place (resumable; Snakemake's incomplete marker says
    # whether it finished), so its existence does not mean it is done: the others are atomic
    others = [name for name in RERUN_TARGETS
              if name not in RUN_FOLDERS and not name.startswith("resources/raw/")]
    # killed once a final-run record and some other target are made again, work remaining
    while (not (made_again(RUN_FOLDERS) and made_again(others)) and run.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.2)
    assert run.poll() is None, "the rerun finished before it could be killed"
    kill_process_group(run)
    killed_files = [p for p in (workdir / "results").rglob("*")
                    if p.is_file() and not any(part.startswith(".") for part in
                                               p.relative_to(workdir).parts)]
    # done = made and recorded by Snakemake as finished: an output renamed into place a moment
    # before the kill, whose job Snakemake had not yet closed, is still incomplete and is
    # rightly made again on resume
    done_at_kill = {name: (workdir / name).stat().st_mtime_ns for name in others
                    if (workdir / name).exists() and not _marked_incomplete(workdir, name)}
    # a killed Snakemake cannot remove its lock: --unlock first, as the README says
    unlocked = snakemake([*args, "--unlock"], env, cwd=workdir)
    # no --rerun-incomplete: profiles/default sets it for every run
    resumed = snakemake(args, env, cwd=workdir, timeout=900)
    return Rerun(first, workdir, started, killed_files, done_at_kill, resumed, unlocked)


def _marked_incomplete(workdir: Path, output: str) -> bool:
    """Snakemake's own record that a job making `output` started and did not finish: a file
    named by the urlsafe base64 of the output path in .snakemake/incomplete
    (snakemake/persistence/file.py)."""
    marker = base64.urlsafe_b64encode(output.encode()).decode()
    return (workdir / ".snakemake" / "incomplete" / marker).exists()


def test_embedded_default_runs_end_to_end(embedded_default) -> None:
    tmp_path, result = embedded_default
    netlog = tmp_path / "connections.log"
    assert result.returncode == 0, result.stdout + result.stderr
    assert "summarised per task in results/retrieval/report" in result.stdout + result.stderr
    assert not netlog.exists(), netlog.read_text()
    import yaml

    config = yaml.safe_load((REPO / "config/embedded.yaml").read_text())
    samples = config["synthetic"]["samples"]
    for name in config["datasets"]:
        meta = json.loads((tmp_path / "results/data" / name / "meta.json").read_text())
        assert meta["name"] == name and meta["source"] == "synthetic"
        if name.startswith("mb-"):
            assert meta["splits"] == samples
            subsets = json.loads((tmp_path / "results/data" / name / "subsets.json").read_text())
            assert len(subsets["fraction:1.00"]) == samples["train"]
    table = pd.read_csv(tmp_path / "results/tables/datasets.csv")
    assert table["dataset"].tolist() == config["datasets"]
    bench = table[table["dataset"].str.startswith("mb-")]
    assert (bench[["train", "val", "test"]].to_numpy() == list(samples.values())).all()
    assert table.set_index("dataset").loc["mb-domars16k", "classes"] == 15
    runs = pd.read_csv(tmp_path / "results/tables/classification_runs.csv")
    assert list(runs.columns[:6]) == ["model", "dataset", "test metric", "training_type", "seed",
                                      "partition name"]
    bench = config["bench"]
    from marseval.registry import get_dataset

    classification = [d for d in config["datasets"]
                      if get_dataset(d).task == "classification"]
    partitions = 1 + len(bench["partitions"]) + len(bench["fewshot"])
    assert len(runs) == len(classification) * partitions * len(bench["seeds"])
    assert set(runs["partition name"]) == {"default", "0.5", "few_shot"}
    assert runs["test metric"].between(0, 1).all()
    for task, metric in (("segmentation", "iou"), ("detection", "map")):
        dense = pd.read_csv(tmp_path / f"results/tables/{task}_runs.csv")
        names = [d for d in config["datasets"] if get_dataset(d).task == task]
        assert len(dense) == len(names) * (1 + len(bench["partitions"])) * len(bench["seeds"])
        assert set(dense["metric"]) == {metric}
        assert set(dense["partition name"]) == {"default", "0.5"}
        assert dense["test metric"].between(0, 1).all()
    # every heavy job left a benchmark file, named as its log
    for rule in ("features", "tune", "train", "embed", "shard_index", "search", "queries",
                 "evaluate"):
        logs = {p.relative_to(tmp_path / "results/logs").with_suffix("")
                for p in (tmp_path / "results/logs" / rule).rglob("*.log")}
        tsvs = {p.relative_to(tmp_path / "results/benchmarks").with_suffix("")
                for p in (tmp_path / "results/benchmarks" / rule).rglob("*.tsv")}
        assert logs and tsvs == logs, rule
    usage = pd.read_csv(tmp_path / "results/tables/job_usage.csv")
    assert len(usage) == len(list((tmp_path / "results/benchmarks").rglob("*.tsv")))
    assert (usage["seconds"] > 0).all() and (usage["requested_runtime_min"] >= 10).all()
    assert (usage["max_rss_mb"] > 0).all()
    # the config in effect: the embedded file plus schema defaults, copied for the report
    recorded = yaml.safe_load((tmp_path / "results/config.yaml").read_text())
    assert recorded == validated_file(REPO / "config/embedded.yaml")
    assert (tmp_path / "results/tables/config.yaml").read_bytes() == (
        tmp_path / "results/config.yaml").read_bytes()
    # nothing temporary is left behind, and a rerun has nothing to do
    assert not list((tmp_path / "results/data").glob(".*"))
    again = snakemake([*embedded_args(), "-n"], guarded_env(tmp_path), cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    if shutil.which("nvidia-smi") is None:  # GPU rules ran on the CPU, and said so
        log = (tmp_path / "results/logs/embed/mr-landforms/tiny-clip/shard0.log").read_text()
        assert "no GPU on this machine: this GPU job runs on the CPU" in log


def test_embedded_default_reports_every_task(embedded_default) -> None:
    """The report stages' tables and figures: Mars-Bench per task, MarsRetrieval per task."""
    tmp_path, result = embedded_default
    assert result.returncode == 0, result.stdout + result.stderr
    for task in ("classification", "segmentation", "detection"):
        folder = tmp_path / "results/report" / task
        aggregate = pd.read_csv(folder / "aggregate.csv")
        assert list(aggregate.columns[:4]) == ["model", "iqm", "ci_low", "ci_high"]
        assert (folder / "figures/raw_violins.png").stat().st_size > 1000
        assert (folder / "tables/aggregate.tex").is_file()
        summary = json.loads((folder / "summary.json").read_text())
        if len(summary["dropped_datasets"]) < len(summary["datasets"]):
            # some dataset's scores vary: there is something to normalise and aggregate
            assert len(aggregate) == 1 and aggregate["iqm"].between(0, 1).all()
            assert (folder / "figures/normalized_violins.png").stat().st_size > 1000
            assert (folder / "figures/training_size.pdf").stat().st_size > 1000
    from marseval.registry import get_dataset

    paired = pd.read_csv(tmp_path / "results/retrieval/report/paired/summary.csv")
    assert paired["model"].tolist() == ["tiny-clip"]
    assert paired[["i2t_r1", "t2i_r10", "t2i_mrr"]].stack().between(0, 1).all()
    assert (paired["i2t_medr"] >= 1).all() and paired["n"].item() == 64
    landform = pd.read_csv(tmp_path / "results/retrieval/report/landform/summary.csv")
    assert landform[["map", "r_precision", "ndcg10", "hit10"]].stack().between(0, 1).all()
    geo = pd.read_csv(tmp_path / "results/retrieval/report/geolocalization/summary.csv")
    assert set(geo["mode"]) == {"text", "image", "hybrid"}
    assert set(geo["landform"]) == {*get_dataset("mr-geolocalization").classes, "mean"}
    assert geo[["f1_degrees", "auprc_degrees", "f1_km"]].stack().between(0, 1).all()
    figures = tmp_path / "results/retrieval/report/geolocalization/figures"
    assert (figures / "map_tiny-clip_hybrid.png").stat().st_size > 1000


def single_index_metrics(checkout: Path, out: Path) -> dict:
    """Geo-localization metrics of the merged layout over the embedded default's shards: one
    exact index and `evaluate --index`, with the flags the workflow gives its jobs."""
    from marseval.workflow import evaluate_flags

    config = validated_file(REPO / "config/embedded.yaml")
    shards = sorted((checkout / "results/retrieval/embeddings/mr-geolocalization/tiny-clip")
                    .glob("shard*"), key=lambda p: int(p.name[5:]))
    results = checkout / "results"
    commands = [
        ["index", "--kind", "exact", "--use-gpu", "no", "--out", out / "index", *shards],
        ["evaluate", "--dataset-dir", results / "data/mr-geolocalization", "--index",
         out / "index", "--queries", results / "retrieval/queries/mr-geolocalization/tiny-clip.npz",
         "--model", "tiny-clip", *evaluate_flags(config).split(), "--out", out / "eval"],
    ]
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "marseval", *map(str, command)],
                              capture_output=True, text=True, cwd=checkout)
        assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "eval/metrics.json").read_text())


def test_embedded_default_builds_the_geo_database_through_the_ctx_chain(
        embedded_default, tmp_path_factory) -> None:
    """Fake Murray Lab tiles -> VRT -> warped cells -> embeddings -> searched shard by shard
    -> merged -> evaluation, scored at the cells' south-west corners; the same metrics as
    the merged layout's one exact index (`index` and `evaluate --index`, as its rules run)."""
    tmp_path, result = embedded_default
    assert result.returncode == 0, result.stdout + result.stderr
    from marseval.retrieval.ctx.cells import cell_name, read_cells
    from marseval.retrieval.ctx.vrt import vrt_sources

    groups = sorted((tmp_path / "resources/ctx/synthetic").glob("group*"))
    assert [g.name for g in groups] == [f"group{g}" for g in EMBEDDED_CTX_GROUPS]
    tiles = [p for g in groups for p in vrt_sources(g / "mosaic.vrt")]
    assert len(groups) == 4 and len(tiles) == 20 * 10  # 80 x 40 degrees of 4-degree tiles
    cells = pd.concat([read_cells(tmp_path / f"results/retrieval/cells/group{g}")
                       for g in EMBEDDED_CTX_GROUPS], ignore_index=True)
    assert len(cells) == 200 * 4 and cells["id"].is_unique  # 2-degree cells
    assert cells["id"].tolist() == [cell_name(a, b, 2.0)
                                    for a, b in zip(cells.lon_min, cells.lat_min, strict=True)]
    rankings = (tmp_path / "results/retrieval/rankings/mr-geolocalization/tiny-clip"
                / EMBEDDED_TAG)
    merged_ids = pd.read_parquet(rankings / "ids.parquet")
    assert merged_ids["id"].tolist() == cells["id"].tolist()  # shards merged in group order
    metrics = json.loads((tmp_path / "results/retrieval/eval/mr-geolocalization/tiny-clip"
                          / "metrics.json").read_text())
    assert metrics["location"] == "sw_corner" and metrics["database_size"] == 800
    assert single_index_metrics(tmp_path, tmp_path_factory.mktemp("single")) == metrics
    retrieved = pd.read_parquet(tmp_path / "results/retrieval/eval/mr-geolocalization/tiny-clip"
                                / "retrieved.parquet")
    corners = cells.set_index("id")[["lon_min", "lat_min"]]
    top = retrieved.iloc[:20]
    np.testing.assert_array_equal(top[["lon", "lat"]].to_numpy(),
                                  corners.loc[top["id"]].to_numpy())


def test_embedded_default_html_report(embedded_default, tmp_path: Path) -> None:
    """`snakemake --report report.html` after the run gathers every stage's outputs."""
    first, result = embedded_default
    assert result.returncode == 0, result.stdout + result.stderr
    page = tmp_path / "report.html"
    report = snakemake([*embedded_args(), "--report", str(page)], guarded_env(first), cwd=first)
    assert report.returncode == 0, report.stdout + report.stderr
    html = page.read_text()
    assert "datasets.csv" in html and all(f"{task}_runs.csv" in html for task in
                                          ("classification", "segmentation", "detection"))
    # the report stage's figures and tables are in the page too
    assert "raw_violins.png" in html and "per_dataset_iqm.csv" in html
    assert "map_tiny-clip_text.png" in html and "per_class_ap.csv" in html
    assert "job_usage.csv" in html and "config.yaml" in html
    assert "Mars-Bench results" in html and "{kind}" not in html


def test_embedded_default_is_deterministic(killed_rerun: Rerun) -> None:
    """One job of every rule, run again (RERUN_TARGETS), reproduces the first run's tables,
    metrics, run records, trials, features and embeddings byte for byte."""
    rerun = killed_rerun
    assert rerun.resumed.returncode == 0, rerun.resumed.stdout + rerun.resumed.stderr
    stale = [name for name in RERUN_TARGETS
             if (rerun.workdir / name).stat().st_mtime < rerun.started]
    assert stale == [], "not made again"
    assert_same_results(rerun.first, rerun.workdir)


def _readable(path: Path) -> None:
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".parquet":
        pd.read_parquet(path)
    elif path.suffix == ".csv":
        pd.read_csv(path)


def test_a_killed_workflow_completes_with_rerun_incomplete(killed_rerun: Rerun) -> None:
    rerun = killed_rerun
    # whatever has its final name is complete; unfinished work is hidden *.tmp siblings
    assert rerun.killed_files
    for path in rerun.killed_files:
        _readable(path)
    assert rerun.unlocked.returncode == 0, rerun.unlocked.stdout + rerun.unlocked.stderr
    assert rerun.resumed.returncode == 0, rerun.resumed.stdout + rerun.resumed.stderr
    # the resumed run kept what was made before the kill, and made only the rest
    assert rerun.done_at_kill
    assert {name: (rerun.workdir / name).stat().st_mtime_ns
            for name in rerun.done_at_kill} == rerun.done_at_kill
    leftovers = [p for p in (rerun.workdir / "results").rglob("*.tmp")
                 if "logs" not in p.parts]
    assert leftovers == []


def test_paper_figures_redraw_the_published_runs(tmp_path: Path,
                                                 workflow_env: dict[str, str]) -> None:
    import pandas as pd

    checkout = repo_copy(tmp_path)
    args = ["paper_figures", "--cores", "2", "--configfile", "config/embedded.yaml"]
    result = snakemake(args, workflow_env, cwd=checkout)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = tmp_path / "results/paper_figures"
    aggregate = pd.read_csv(folder / "classification/aggregate.csv").set_index("model")["iqm"]
    # ../shared/reference/README.md: the paper's aggregated IQMs
    expected = {"SwinV2-B": 0.8983, "ViT-L/16": 0.8560, "ResNet101": 0.5074,
                "InceptionV3": 0.3904, "SqueezeNet1.1": 0.3593}
    assert aggregate.round(4).to_dict() == expected
    for name in ("normalized_violins", "raw_violins", "training_size", "few_shot",
                 "earth_observation"):
        for suffix in ("pdf", "png"):
            assert (folder / f"classification/figures/{name}.{suffix}").stat().st_size > 1000
    assert (folder / "segmentation/figures/training_size.png").stat().st_size > 1000
    summary = json.loads((folder / "classification/summary.json").read_text())
    assert summary["dropped_datasets"] == ["mb-change_cls_ctx"]


def test_the_workflow_runs_as_a_module_from_another_folder(tmp_path: Path,
                                                          workflow_env: dict[str, str]) -> None:
    """A deployment (snakedeploy's layout): the user's own Snakefile and config in one folder,
    marseval as a `module` elsewhere; jobs still find the marseval package of the module."""
    marseval = repo_copy(tmp_path / "marseval")
    deployment = tmp_path / "deployment"
    (deployment / "config").mkdir(parents=True)
    (deployment / "config/config.yaml").write_text(
        "datasets: [mb-frost_cls]\nsynthetic: {samples: {train: 8, val: 4, test: 4}}\n")
    (deployment / "Snakefile").write_text(f'''configfile: "config/config.yaml"


module marseval:
    snakefile:
        "{marseval / 'Snakefile'}"
    config:
        config


use rule * from marseval as marseval_*
''')
    env = {k: v for k, v in workflow_env.items() if k != "PYTHONPATH"}  # nothing but the module
    result = snakemake(["--cores", "2", "results/data/mb-frost_cls"], env, cwd=deployment)
    assert result.returncode == 0, result.stdout + result.stderr
    meta = json.loads((deployment / "results/data/mb-frost_cls/meta.json").read_text())
    assert meta["splits"] == {"train": 8, "val": 4, "test": 4}
    import yaml

    recorded = yaml.safe_load((deployment / "results/config.yaml").read_text())
    assert recorded["datasets"] == ["mb-frost_cls"] and recorded["bench"]["head"] == "linear"
