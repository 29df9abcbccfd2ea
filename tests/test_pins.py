"""Every conda env repeats the pins of pyproject.toml exactly, and every rule names an env."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_name(r): r for r in project["dependencies"]}


def test_the_five_rule_families_have_envs() -> None:
    assert [p.stem for p in ENVS] == ["data", "report", "retrieval", "torch"]


def test_torch_pins_are_exact() -> None:
    pins = pyproject_pins()
    assert pins["torch"] == "torch==2.14.1"
    assert pins["torchvision"] == "torchvision==0.29.1"
    assert pins["snakemake"].startswith("snakemake>=9")


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.stem)
def test_env_pins_equal_pyproject(env: Path) -> None:
    pins = pyproject_pins()
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip, f"{env.name} installs nothing with pip"
    for requirement in pip:
        name = _name(requirement)
        assert name in pins, f"{env.name}: {name} is not a dependency in pyproject.toml"
        assert requirement == pins[name], f"{env.name}: {requirement!r} != {pins[name]!r}"


def test_every_rule_names_an_existing_env() -> None:
    rules = sorted((REPO / "workflow/rules").glob("*.smk"))
    for path in rules:
        text = path.read_text()
        # rules that run a command; target-only rules (inputs alone) need no env
        count = len(re.findall(r"^\s*shell:", text, re.M))
        envs = re.findall(r'conda:\n\s+"([^"]+)"', text)
        assert len(envs) == count, f"{path.name}: {count} commands but {len(envs)} conda envs"
        for env in envs:
            assert (path.parent / env).resolve().is_file(), f"{path.name}: missing {env}"
