"""The config schema: defaults, unknown keys, wrong types, registry names, the paper grid."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from marseval.workflow import ConfigError, check_config, download_options

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())


def validated(config: dict) -> dict:
    config = copy.deepcopy(config)
    validate(config, SCHEMA, set_default=True)
    return config


@pytest.mark.parametrize("name", ["config.yaml", "embedded.yaml"])
def test_shipped_configs_validate_and_name_registry_datasets(name: str) -> None:
    config = validated(load(name))
    check_config(config)


def test_defaults_fill_a_minimal_config() -> None:
    config = validated({"datasets": ["mb-frost_cls"]})
    assert config["source"] == "synthetic"
    assert config["synthetic"]["samples"] == {"train": 48, "val": 16, "test": 16}
    assert config["subsets"]["fractions"] == [0.01, 0.02, 0.05, 0.10, 0.20, 0.25, 0.50, 1.00]
    assert config["subsets"]["fewshot"] == [1, 2, 5, 10, 15, 20]
    assert config["bench"]["seeds"] == [0, 1, 10, 42, 123, 1000, 1234]
    assert config["download"]["retries"] == 5


def test_unknown_key_is_rejected_by_name() -> None:
    config = load("embedded.yaml")
    config["synthetic"]["sede"] = 3
    with pytest.raises(WorkflowError, match="'sede' was unexpected"):
        validated(config)
    config = load("embedded.yaml")
    config["sourse"] = "zenodo"
    with pytest.raises(WorkflowError, match="'sourse' was unexpected"):
        validated(config)


def test_wrong_type_is_rejected_with_its_path() -> None:
    config = load("embedded.yaml")
    config["synthetic"]["seed"] = "ten"
    with pytest.raises(WorkflowError) as error:
        validated(config)
    message = str(error.value)
    assert "'ten' is not of type 'integer'" in message
    assert "['synthetic']['seed']" in message


def test_bad_enum_and_dataset_pattern_are_rejected() -> None:
    config = load("embedded.yaml")
    config["source"] = "ftp"
    with pytest.raises(WorkflowError, match="'ftp' is not one of"):
        validated(config)
    config = load("embedded.yaml")
    config["datasets"] = ["frost"]
    with pytest.raises(WorkflowError, match="'frost' does not match"):
        validated(config)


def test_dataset_missing_from_registry_names_the_key() -> None:
    config = validated({"datasets": ["mb-frost_cls", "mb-not_a_dataset"]})
    with pytest.raises(ConfigError, match="config key datasets: 'mb-not_a_dataset'"):
        check_config(config)
    config = validated({"datasets": ["mb-frost_cls"],
                        "dataset_options": {"mb-frosty": {"layout": "zenodo"}}})
    with pytest.raises(ConfigError, match="dataset_options: 'mb-frosty'"):
        check_config(config)


@pytest.mark.parametrize(("task", "name", "expected"), [
    ("classification", "resnet1O1", "close matches: resnet101"),
    ("classification", "timm:", "not a classification model"),
    ("segmentation", "unett:resnet34", "close matches: unet"),
    ("segmentation", "unet", "use <arch>:<encoder>"),
    ("detection", "yolo11q", "close matches: yolo11"),
    ("retrieval", "open-clip:ViT-B-16", "not a retrieval model"),
])
def test_model_missing_from_registry_names_the_key(task: str, name: str, expected: str) -> None:
    config = load("embedded.yaml")
    section = config["retrieval"] if task == "retrieval" else config["bench"]["models"]
    key = "models" if task == "retrieval" else task
    section[key] = [*section.get(key, []), name]
    where = "retrieval.models" if task == "retrieval" else f"bench.models.{task}"
    with pytest.raises(ConfigError, match=rf"config key {where}: '{name}' .*{expected}"):
        check_config(validated(config))


def test_model_names_agree_with_the_builders() -> None:
    from marseval.bench.classification.models import TORCHVISION_MODELS
    from marseval.registry.model_names import CLASSIFICATION_BACKBONES, model_name_problem

    assert sorted(TORCHVISION_MODELS) == sorted(CLASSIFICATION_BACKBONES)
    for name in (*load("config.yaml")["retrieval"]["models"], "tiny-clip"):
        assert model_name_problem("retrieval", name) is None
    for task, names in load("config.yaml")["bench"]["models"].items():
        assert all(model_name_problem(task, n) is None for n in names)


def test_paper_config_is_the_papers_protocol() -> None:
    config = validated(load("config.yaml"))
    assert len(config["datasets"]) == 23
    assert sum(d.startswith("mb-") for d in config["datasets"]) == 20
    grid = config["bench"]["grid"]
    axes = ["lr_schedule", "lr", "weight_decay", "batch_size", "optimizer", "max_epochs",
            "patience"]
    # Mars-Bench Tables 2 and 3: 4 x 3 x 1 x 3 x 3 x 3 x 2
    assert len(list(itertools.product(*(grid[a] for a in axes)))) == 648
    assert config["bench"]["seeds"] == [0, 1, 10, 42, 123, 1000, 1234]
    assert config["bench"]["partitions"] == [0.01, 0.02, 0.05, 0.10, 0.20, 0.25, 0.50]
    assert config["bench"]["fewshot"] == [1, 2, 5, 10, 15, 20]
    assert config["source"] == "huggingface" and config["offline"] is False


def test_download_options_merge_dataset_overrides() -> None:
    import json

    config = validated(load("embedded.yaml"))
    assert json.loads(download_options(config, "mb-domars16k"))["layout"] == "huggingface"
    assert json.loads(download_options(config, "mb-frost_cls"))["layout"] == "zenodo"
