"""The `download` stage: bring a dataset's raw files to resources/raw/<source>/<dataset>/.

Every source stages its files beside the target and renames at the end, so a failed or
interrupted download never leaves a folder that looks complete. Zenodo and Hugging Face keep
their partial files in a staging folder that survives a failure, so a rerun resumes. Image-text
pair datasets (registry subtask `paired`) name their images by URL: after the snapshot, the
images are fetched into the same staging folder, so they resume too.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from marseval.atomic import atomic_directory, atomic_write_json
from marseval.data.download import OFFLINE_ENV_VARS
from marseval.errors import MarsevalError
from marseval.registry import get_dataset

SOURCE_RECORD = ".marseval_source.json"  # in a raw folder: the repository and commit fetched


def set_offline(offline: bool) -> None:
    """Offline mode for our downloads and for every hub client (huggingface_hub, timm...)."""
    if offline:
        for var in OFFLINE_ENV_VARS:
            os.environ[var] = "1"
        os.environ["YOLO_OFFLINE"] = "1"  # ultralytics: no asset downloads, no update checks
        # huggingface_hub reads its variable once, at import: tell an imported one too
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:
            constants.HF_HUB_OFFLINE = True


def download(dataset: str, source: str, out: Path, options: dict[str, Any]) -> None:
    spec = get_dataset(dataset)
    if source == "synthetic":
        _synthetic(spec, out, options)
    elif source == "zenodo":
        _zenodo(spec, out, options)
    elif source == "huggingface":
        _huggingface(spec, out, options)
    else:
        raise MarsevalError(f"unknown source {source!r} for dataset {dataset}")


def _synthetic(spec, out: Path, options: dict[str, Any]) -> None:
    from marseval.data.synthetic.generate import generate_benchmark
    from marseval.data.synthetic.retrieval import write_retrieval
    from marseval.data.synthetic.writers import write_huggingface, write_zenodo

    seed, size = options.get("seed", 0), options.get("image_size", 64)
    with atomic_directory(out) as tmp:
        if spec.task == "retrieval":
            write_retrieval(spec, tmp, seed, size, options.get("retrieval", {}))
            return
        raw = generate_benchmark(spec, seed, size, options.get("samples") or
                                 {"train": 48, "val": 16, "test": 16})
        layout = options.get("layout", "zenodo")
        (write_huggingface if layout == "huggingface" else write_zenodo)(raw, spec, tmp)


def _staging(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def _zenodo(spec, out: Path, options: dict[str, Any]) -> None:
    from marseval.data.download import download_zenodo_record

    record = options.get("zenodo_record") or spec.zenodo_record
    if not record:
        raise MarsevalError(
            f"no Zenodo record is known for {spec.name}; set "
            f"dataset_options.{spec.name}.zenodo_record in the config or use source: huggingface")
    staging = _staging(out)
    download_zenodo_record(record, staging, api_base=options.get("zenodo_api",
                                                                 "https://zenodo.org/api"),
                           retries=options.get("retries", 5))
    _publish(staging, out)


def _huggingface(spec, out: Path, options: dict[str, Any]) -> None:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from marseval.data.download import require_online

    repo = options.get("huggingface") or spec.huggingface
    if not repo:
        raise MarsevalError(f"no Hugging Face repository is known for {spec.name}; set "
                            f"dataset_options.{spec.name}.huggingface")
    # Checked here, at call time: huggingface_hub reads HF_HUB_OFFLINE only once, at import.
    # A staging folder is by construction unfinished, so offline there is nothing to publish.
    require_online(f"Hugging Face dataset {repo} for {spec.name} (not available offline)")
    staging = _staging(out)
    revision = options.get("revision")
    try:
        # Resolve the commit ourselves: this call fails loudly when the Hub is unreachable,
        # where snapshot_download would fall back to returning the partial staging folder.
        info = HfApi().dataset_info(repo, revision=revision)
        snapshot_download(repo_id=repo, repo_type="dataset", revision=info.sha,
                          local_dir=staging)
    except RepositoryNotFoundError as exc:
        raise MarsevalError(f"{spec.name}: Hugging Face dataset {repo} was not found, or is "
                            f"private or gated (HTTP {exc.response.status_code})") from None
    except RevisionNotFoundError:
        raise MarsevalError(f"{spec.name}: {repo} has no revision {revision!r}") from None
    except Exception as exc:  # HTTP/connection errors of whichever HTTP library the hub uses
        raise MarsevalError(f"{spec.name}: downloading {repo} failed "
                            f"({_first_line(exc.__cause__ or exc)})") from None
    missing = sorted(s.rfilename for s in info.siblings or []
                     if not (staging / s.rfilename).is_file())
    if missing:
        raise MarsevalError(f"{spec.name}: downloading {repo} left {len(missing)} file(s) "
                            f"missing, e.g. {missing[0]}")
    if spec.subtask == "paired":
        # into staging, before the hub bookkeeping goes: a crash here resumes both
        _fetch_pair_images(spec, staging, options)
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # hub bookkeeping, not data
    # which commit was fetched: standardization copies it into meta.json (pin it with
    # dataset_options.<name>.revision)
    atomic_write_json(staging / SOURCE_RECORD, {"huggingface": repo, "requested": revision,
                                                "commit": info.sha})
    _publish(staging, out)


def _fetch_pair_images(spec, root: Path, options: dict[str, Any]) -> None:
    """The rows of an image-text dataset name their images by URL: fetch them to images/.

    Some dead links are expected (they are listed, and the standardizer drops those pairs);
    none fetched at all means something is wrong with the source or the network."""
    from marseval.data.image_fetch import FAILURES_FILE, fetch_images
    from marseval.data.retrieval import pair_image_urls

    items = pair_image_urls(root, spec)
    # img2dataset's --timeout 10 --retries 3 unless the config says otherwise
    report = fetch_images(items, root / "images", base=root,
                          retries=options.get("image_retries", 3),
                          timeout=options.get("image_timeout", 10),
                          workers=options.get("image_workers", 8))
    if report.failed and not report.fetched + report.skipped_existing:
        key, url, reason = report.failed[0]
        raise MarsevalError(f"{spec.name}: none of its {len(report.failed)} images could be "
                            f"fetched, e.g. {key} from {url}: {reason} (all listed in "
                            f"{root / FAILURES_FILE})")


def _first_line(exc: BaseException) -> str:
    """huggingface_hub's messages run over several lines; the CLI prints one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _publish(staging: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
