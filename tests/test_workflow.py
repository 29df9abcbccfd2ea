"""The workflow as users run it: lint, formatting, the paper DAG, the embedded default."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, make_workflow_env, tool

SUPPORT = Path(__file__).parent / "support"


def snakemake(args: list[str], env: dict[str, str], cwd: Path = REPO,
              timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([tool("snakemake"), "-s", str(REPO / "Snakefile"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/paper.yaml"])
def test_lint_has_no_findings(configfile: str, workflow_env: dict[str, str]) -> None:
    result = snakemake(["--lint", "--configfile", configfile], workflow_env)
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in output
    assert "Lints for" not in output


def test_snakefmt_check() -> None:
    result = subprocess.run([tool("snakefmt"), "--check", "Snakefile", "workflow/rules"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_check() -> None:
    result = subprocess.run([tool("ruff"), "check", "marseval", "tests", "benchmarks"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_paper_dag_builds_without_network(tmp_path: Path, workflow_env: dict[str, str]) -> None:
    netlog = tmp_path / "connections.log"
    env = dict(workflow_env, MARSEVAL_NETLOG=str(netlog),
               PYTHONPATH=f"{SUPPORT}{os.pathsep}{workflow_env['PYTHONPATH']}")
    result = snakemake(["-n", "--configfile", str(REPO / "config/paper.yaml"), "-d",
                        str(tmp_path)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not netlog.exists(), netlog.read_text()
    counts = job_counts(result.stdout + result.stderr)
    # 20 Mars-Bench + 3 MarsRetrieval datasets, each downloaded and standardized once.
    # 9 classification sets x 5 models: features, 8 tune shards, select, and
    # 7 seeds x (1 + 7 partitions + 6 few-shot) runs. 8 segmentation sets x 4 models and
    # 3 detection sets x 4 models: no features, 8 tune shards, select, 7 seeds x (1 + 7
    # partitions) runs. One runs table per task.
    # MarsRetrieval: 7 models x 3 tasks, each embedded in 8 shards, indexed and evaluated;
    # queries for landform and geo-localization; one summary per task.
    classification, dense = 9 * 5, 8 * 4 + 3 * 4
    pairs = classification + dense
    train = classification * 7 * 14 + dense * 7 * 8
    retrieval = {"embed": 7 * 3 * 8, "index": 7 * 3, "queries": 7 * 2, "evaluate": 7 * 3,
                 "retrieval_report": 3}
    assert counts == {"download": 23, "standardize": 23, "data_summary": 1,
                      "features": classification, "tune": pairs * 8, "select": pairs,
                      "train": train, "collect": 3, "report": 3, "all": 1, **retrieval,
                      "total": 47 + classification + pairs * (8 + 1) + train + 3 + 3 + 1
                      + sum(retrieval.values())}
    assert "resources/raw/huggingface/mb-s5mars" in result.stdout + result.stderr


def test_unknown_config_key_stops_the_workflow(workflow_env: dict[str, str],
                                               tmp_path: Path) -> None:
    result = snakemake(["-n", "-d", str(tmp_path), "--configfile",
                        str(REPO / "config/config.yaml"), "--config", "sourse=zenodo"],
                       workflow_env)
    assert result.returncode != 0
    assert "'sourse' was unexpected" in result.stdout + result.stderr


def embedded_args(workdir: Path) -> list[str]:
    return ["--cores", "2", "-d", str(workdir), "--configfile", str(REPO / "config/config.yaml")]


def guarded_env(workdir: Path) -> dict[str, str]:
    """The workflow environment with every outgoing connection logged (tests/support)."""
    env = make_workflow_env()
    return dict(env, MARSEVAL_NETLOG=str(workdir / "connections.log"),
                PYTHONPATH=f"{SUPPORT}{os.pathsep}{env['PYTHONPATH']}")


@pytest.fixture(scope="module")
def embedded_default(tmp_path_factory: pytest.TempPathFactory):
    """One run of the embedded default from scratch, shared by the tests that inspect it."""
    workdir = tmp_path_factory.mktemp("embedded")
    # about 7 minutes on 2 idle cores; the limit leaves room for a busy machine
    result = snakemake(embedded_args(workdir), guarded_env(workdir), timeout=1800)
    return workdir, result


def result_files(workdir: Path) -> dict[str, bytes]:
    """Every table and metrics record a run makes (figures and logs aside)."""
    results = workdir / "results"
    found = [*results.glob("**/*.csv"), *results.glob("report/*/normalizer.json"),
             *results.glob("retrieval/eval/*/*/metrics.json")]
    return {str(p.relative_to(workdir)): p.read_bytes() for p in found if "logs" not in p.parts}


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


def test_embedded_default_runs_end_to_end(embedded_default) -> None:
    tmp_path, result = embedded_default
    netlog = tmp_path / "connections.log"
    env = guarded_env(tmp_path)
    args = embedded_args(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "summarised per task in results/retrieval/report" in result.stdout + result.stderr
    assert not netlog.exists(), netlog.read_text()
    import yaml

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    samples = config["synthetic"]["samples"]
    for name in config["datasets"]:
        meta = json.loads((tmp_path / "results/data" / name / "meta.json").read_text())
        assert meta["name"] == name and meta["source"] == "synthetic"
        if name.startswith("mb-"):
            assert meta["splits"] == samples
            subsets = json.loads((tmp_path / "results/data" / name / "subsets.json").read_text())
            assert len(subsets["fraction:1.00"]) == samples["train"]
    import pandas as pd

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
    assert set(runs["partition name"]) == {"default", "0.25", "0.5", "few_shot"}
    assert runs["test metric"].between(0, 1).all()
    for task, metric in (("segmentation", "iou"), ("detection", "map")):
        dense = pd.read_csv(tmp_path / f"results/tables/{task}_runs.csv")
        names = [d for d in config["datasets"] if get_dataset(d).task == task]
        assert len(dense) == len(names) * (1 + len(bench["partitions"])) * len(bench["seeds"])
        assert set(dense["metric"]) == {metric}
        assert set(dense["partition name"]) == {"default", "0.25", "0.5"}
        assert dense["test metric"].between(0, 1).all()
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
    report = snakemake([*args, "--report", str(tmp_path / "report.html")], env)
    assert report.returncode == 0, report.stdout + report.stderr
    html = (tmp_path / "report.html").read_text()
    assert "datasets.csv" in html and all(f"{task}_runs.csv" in html for task in
                                          ("classification", "segmentation", "detection"))
    # the report stage's figures and tables are in the page too
    assert "raw_violins.png" in html and "per_dataset_iqm.csv" in html
    assert "map_tiny-clip_text.png" in html and "per_class_ap.csv" in html
    # nothing temporary is left behind, and a rerun has nothing to do
    assert not list((tmp_path / "results/data").glob(".*"))
    again = snakemake([*args, "-n"], env)
    assert "Nothing to be done" in again.stdout + again.stderr
    if shutil.which("nvidia-smi") is None:  # GPU rules ran on the CPU, and said so
        log = (tmp_path / "results/logs/embed/mr-landforms/tiny-clip/shard0.log").read_text()
        assert "no GPU on this machine: this GPU job runs on the CPU" in log


def test_embedded_default_is_deterministic(embedded_default, tmp_path: Path) -> None:
    first, result = embedded_default
    assert result.returncode == 0, result.stdout + result.stderr
    again = snakemake(embedded_args(tmp_path), guarded_env(tmp_path), timeout=1800)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_same_results(first, tmp_path)


def _readable(path: Path) -> None:
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".parquet":
        pd.read_parquet(path)
    elif path.suffix == ".csv":
        pd.read_csv(path)


def test_a_killed_workflow_completes_with_rerun_incomplete(embedded_default,
                                                           tmp_path: Path) -> None:
    first, result = embedded_default
    assert result.returncode == 0, result.stdout + result.stderr
    args, env = embedded_args(tmp_path), guarded_env(tmp_path)
    # Snakemake and its running jobs are killed together (SIGKILL to the process group) once
    # the first final-run records exist, with more training and retrieval still running.
    run = subprocess.Popen([tool("snakemake"), "-s", str(REPO / "Snakefile"), *args],
                           cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 1500
    while (not list((tmp_path / "results/runs").glob("*/*/*/seed*.json"))
           and run.poll() is None and time.monotonic() < deadline):
        time.sleep(0.5)
    assert run.poll() is None, "the workflow finished before it could be killed"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=60)
    # whatever has its final name is complete; unfinished work is hidden *.tmp siblings
    finished = [p for p in (tmp_path / "results").rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in
                                           p.relative_to(tmp_path).parts)]
    for path in finished:
        _readable(path)

    # a killed Snakemake cannot remove its lock: --unlock first, as the README says
    unlocked = snakemake([*args, "--unlock"], env)
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    resumed = snakemake([*args, "--rerun-incomplete"], env, timeout=1800)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_results(first, tmp_path)
    leftovers = [p for p in (tmp_path / "results").rglob("*.tmp")
                 if "logs" not in p.parts]
    assert leftovers == []


def test_paper_figures_redraw_the_published_runs(tmp_path: Path,
                                                 workflow_env: dict[str, str]) -> None:
    import pandas as pd

    args = ["paper_figures", "--cores", "2", "-d", str(tmp_path), "--configfile",
            str(REPO / "config/config.yaml"), "--config",
            f"report={{reference: {REPO / 'resources/reference/marsbench-paper-runs'}}}"]
    result = snakemake(args, workflow_env)
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
