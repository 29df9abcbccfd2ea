"""The SLURM profile on a real single-node cluster (tests/support/slurm_cluster.py).

A representative part of the embedded default, landform and paired retrieval (download,
standardize, 4 embedding shards and a query job on GPUs, shard indexes, shard searches and
their merge, evaluations, summaries), goes through `--profile profiles/slurm`: the results
must be identical to those of the local run of the whole embedded default (the session's
`embedded_default`), every GPU rule must have asked SLURM for one GPU, and at most two GPU
jobs (the node's two GRES GPUs) may have run at once. CI installs slurm-wlm and munge
(.ci/run); elsewhere the test skips with the reason.
"""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "support"))
from conftest import make_workflow_env, repo_copy, snakemake  # noqa: E402
from slurm_cluster import SlurmCluster, missing  # noqa: E402

pytestmark = pytest.mark.cluster
TARGETS = ["results/retrieval/report/landform", "results/retrieval/report/paired"]
CONFIG = ["--configfile", "config/embedded.yaml", "--config",
          "datasets=[mr-landforms,mr-vl_pairs]"]
GPU_RULES = {"embed", "queries"}
# threads of each rule (marseval.job_resources), which SLURM must get as --cpus-per-task
THREADS = {"download": 1, "standardize": 1, "embed": 2, "shard_index": 2, "search": 2,
           "rankings": 2, "queries": 2, "evaluate": 2}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    running = SlurmCluster(tmp_path_factory.mktemp("slurm"), gpus=2, cpus=8).start()
    yield running
    running.stop()


def _rule_of(job: dict[str, str]) -> str:
    # the plugin puts "rule_<name>_wildcards_..." into the job comment
    comment = job.get("Comment", "")
    return comment.removeprefix("rule_").split("_wildcards")[0]


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


@dataclass
class SlurmRun:
    checkout: Path
    result: subprocess.CompletedProcess
    jobs: list[dict[str, str]]  # what the controller knows of this checkout's jobs


@pytest.fixture(scope="session")
def slurm_run(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> SlurmRun:
    """The targets through `--profile profiles/slurm`. Session-scoped: it runs while the
    embedded default runs in the background (mostly Snakemake polling the cluster), and the
    comparison with that run comes at the end of the session."""
    env = dict(make_workflow_env(), SLURM_CONF=cluster.env["SLURM_CONF"])
    on_slurm = repo_copy(tmp_path_factory.mktemp("slurm-checkout"))
    result = snakemake([*TARGETS, "--profile", "profiles/slurm", *CONFIG, "--slurm-no-account",
                        "--slurm-status-command", "squeue",
                        "--slurm-init-seconds-before-status-checks", "2",
                        "--default-resources", "slurm_partition=test"], env, cwd=on_slurm,
                       timeout=1500)
    jobs = [j for j in cluster.jobs() if j.get("WorkDir") == str(on_slurm)]
    return SlurmRun(on_slurm, result, jobs)


def test_slurm_jobs_ask_for_their_resources(slurm_run: SlurmRun) -> None:
    result, on_slurm, jobs = slurm_run.result, slurm_run.checkout, slurm_run.jobs
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    rules = [_rule_of(j) for j in jobs]
    # the summaries are local rules: they run in the Snakemake process, not as sbatch jobs
    assert sorted(rules) == sorted(["download"] * 2 + ["standardize"] * 2 + ["embed"] * 4
                                   + ["shard_index"] * 2 + ["search"] * 2
                                   + ["rankings", "queries", "evaluate", "evaluate"])
    assert all(j["JobState"] == "COMPLETED" for j in jobs)
    # each job asked for its rule's threads as CPUs, and for the computed runtime: on these
    # tiny synthetic sets every estimate is below job_resources.min_runtime (10 minutes)
    assert [int(j["CPUs/Task"]) for j in jobs] == [THREADS[rule] for rule in rules]
    assert {j["TimeLimit"] for j in jobs} == {"00:10:00"}
    gpu_jobs = [j for j, rule in zip(jobs, rules, strict=True) if rule in GPU_RULES]
    assert all(j["TresPerJob"] == "gres:gpu:1" for j in gpu_jobs)
    assert not any("gpu" in j.get("TresPerJob", "")
                   for j, rule in zip(jobs, rules, strict=True) if rule not in GPU_RULES)
    intervals = [(_time(j["StartTime"]), _time(j["EndTime"])) for j in gpu_jobs]
    most_at_once = max(sum(s <= t < e for s, e in intervals) for t, _ in intervals)
    assert 1 <= most_at_once <= 2
    # each GPU job ran on the device SLURM gave it, which the slot allocator left alone
    for log in (on_slurm / "results/logs/embed").rglob("*.log"):
        assert "was set by the scheduler or user: left alone" in log.read_text()


def test_slurm_results_match_the_local_run(slurm_run: SlurmRun, embedded_default) -> None:
    """The same tables and metrics as the local run of the whole embedded default: these
    datasets' outputs do not depend on the other datasets."""
    on_slurm = slurm_run.checkout
    assert slurm_run.result.returncode == 0, slurm_run.result.stderr[-5000:]
    local, local_run = embedded_default
    assert local_run.returncode == 0, local_run.stdout + local_run.stderr
    for task in ("landform", "paired"):
        folder = Path("results/retrieval/report") / task
        assert filecmp.cmp(on_slurm / folder / "summary.csv", local / folder / "summary.csv",
                           shallow=False)
    for dataset in ("mr-landforms", "mr-vl_pairs"):
        record = Path("results/retrieval/eval") / dataset / "tiny-clip" / "metrics.json"
        assert (json.loads((on_slurm / record).read_text())
                == json.loads((local / record).read_text()))
