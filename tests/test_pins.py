"""Pins: pyproject.toml -> requirements.lock -> envs/*.yaml, and every rule names an env.

requirements.lock holds the exact version of every package of one resolution of pyproject.toml
(with the test extra); each conda env pins its direct requirements and their whole dependency
closure at the lock's versions (`make lock` writes both; see envs/lock.py). The closure is
recomputed here from the metadata installed in this interpreter, which `make install` fills
from the lock.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from marseval.workflow import faiss_env

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
LOCK = REPO / "requirements.lock"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pyproject_pins() -> dict[str, str]:
    return {_name(r): r for r in pyproject()["dependencies"]}


@cache
def lock() -> dict[str, Version]:
    """requirements.lock: canonical name -> exact version."""
    pins: dict[str, Version] = {}
    for number, raw in enumerate(LOCK.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=;@]+)", line)
        assert match, f"requirements.lock:{number}: not name==version: {raw!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"requirements.lock:{number}: {name} pinned twice"
        pins[name] = Version(match[2])
    return pins


def env_pins(env: Path) -> dict[str, Version]:
    """An env's pip section: canonical name -> exact version (every entry must be ==)."""
    spec = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip, f"{env.name} installs nothing with pip"
    pins: dict[str, Version] = {}
    for entry in pip:
        requirement = Requirement(entry)
        (spec_,) = requirement.specifier  # exactly one specifier ...
        assert spec_.operator == "==" and "*" not in spec_.version, f"{env.name}: {entry!r}"
        assert not requirement.marker and not requirement.extras, f"{env.name}: {entry!r}"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{env.name}: {name} listed twice"
        pins[name] = Version(spec_.version)
    return pins


@cache
def lock_module():
    """envs/lock.py, the generator of the env files."""
    spec = importlib.util.spec_from_file_location("envs_lock", REPO / "envs" / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def direct_requirements() -> dict[str, tuple[str, ...]]:
    """Each env's direct requirements, as envs/lock.py (the generator) declares them."""
    return {env: tuple(canonicalize_name(n) for n in names)
            for env, names in lock_module().DIRECT.items()}


@cache
def installed() -> dict[str, metadata.Distribution]:
    """This interpreter's distributions by canonical name; they must be the locked versions."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        found.setdefault(canonicalize_name(dist.metadata["Name"]), dist)
    return found


def requirements_of(name: str, extras: frozenset[str]) -> list[Requirement]:
    """What `name[extras]` requires on this platform (markers evaluated)."""
    dist = installed().get(name)
    assert dist is not None, f"{name} is not installed here: run `make install`"
    locked = lock().get(name)
    assert locked == Version(dist.version), (
        f"{name} {dist.version} is installed but requirements.lock has {locked}: "
        "run `make install` (the pins below are checked against the locked venv)"
    )
    wanted = []
    for text in dist.requires or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in ("", *extras)):
            wanted.append(requirement)
    return wanted


def closure(direct: tuple[str, ...]) -> set[str]:
    """`direct` and everything it needs, transitively, extras included."""
    extras: dict[str, frozenset[str]] = {}
    todo = [(name, frozenset[str]()) for name in direct]
    while todo:
        name, wanted = todo.pop()
        if name in extras and wanted <= extras[name]:
            continue
        extras[name] = extras.get(name, frozenset()) | wanted
        for requirement in requirements_of(name, extras[name]):
            dep = canonicalize_name(requirement.name)
            todo.append((dep, frozenset(canonicalize_name(e) for e in requirement.extras)))
    return set(extras)


def test_the_five_rule_families_have_envs() -> None:
    assert [p.stem for p in ENVS] == ["data", "report", "retrieval", "torch"]
    assert sorted(direct_requirements()) == [p.stem for p in ENVS]


def test_torch_pins_are_exact() -> None:
    pins = pyproject_pins()
    assert pins["torch"] == "torch==2.14.1"
    assert pins["torchvision"] == "torchvision==0.29.1"
    assert pins["snakemake"].startswith("snakemake>=9")


def test_lock_has_pyprojects_torch() -> None:
    pins = pyproject_pins()
    for name in ("torch", "torchvision"):
        assert f"{name}=={lock()[name]}" == pins[name]


def test_every_pyproject_requirement_is_locked_within_its_specifier() -> None:
    project = pyproject()
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    assert "marseval" not in lock()
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in lock(), f"{name} (pyproject.toml) is not in requirements.lock"
        assert requirement.specifier.contains(lock()[name], prereleases=True), (
            f"requirements.lock has {name}=={lock()[name]}, pyproject.toml wants {text!r}"
        )


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.stem)
def test_env_pins_equal_the_lock(env: Path) -> None:
    for name, version in env_pins(env).items():
        assert name in lock(), f"{env.name}: {name} is not in requirements.lock"
        assert version == lock()[name], f"{env.name}: {name}=={version}, lock has {lock()[name]}"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.stem)
def test_env_direct_requirements_are_pyproject_dependencies(env: Path) -> None:
    pins = pyproject_pins()
    direct = direct_requirements()[env.stem]
    assert direct, f"{env.name} has no direct requirements"
    for name in direct:
        assert name in pins, f"{env.name}: {name} is not a dependency in pyproject.toml"
        assert name in env_pins(env), f"{env.name}: its direct requirement {name} is missing"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.stem)
def test_env_is_closed_under_dependencies(env: Path) -> None:
    """Whatever an env installs, it also pins what that needs (extras and markers honoured)."""
    pins = env_pins(env)
    for name in pins:
        for requirement in requirements_of(name, frozenset()):
            dep = canonicalize_name(requirement.name)
            assert dep in pins, f"{env.name}: {name} needs {requirement}, which is not pinned"
            # an extra asked for (torch -> cuda-toolkit[cublas, ...]) brings its own needs
            extras = frozenset(canonicalize_name(e) for e in requirement.extras)
            for needed in requirements_of(dep, extras) if extras else ():
                assert canonicalize_name(needed.name) in pins, (
                    f"{env.name}: {name} needs {requirement}, which needs {needed}: not pinned"
                )


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.stem)
def test_env_is_exactly_the_closure_of_its_direct_requirements(env: Path) -> None:
    expected = closure(direct_requirements()[env.stem])
    pinned = set(env_pins(env))
    assert not expected - pinned, f"{env.name} lacks {sorted(expected - pinned)}"
    assert not pinned - expected, f"{env.name} pins more than it needs: {sorted(pinned - expected)}"


def test_every_rule_names_an_existing_env() -> None:
    rules = sorted((REPO / "workflow/rules").glob("*.smk"))
    for path in rules:
        text = path.read_text()
        # rules that run a command; target-only rules (inputs alone) need no env
        count = len(re.findall(r"^\s*shell:", text, re.M))
        envs = re.findall(r'conda:\n\s+(\S.*)', text)
        assert len(envs) == count, f"{path.name}: {count} commands but {len(envs)} conda envs"
        for env in envs:
            # a literal path, or the FAISS rules' choice by retrieval.index_gpu
            choices = [env.strip('"')] if env.startswith('"') else [
                faiss_env({"retrieval": {"index_gpu": value}}) for value in ("no", "auto")]
            assert env.startswith('"') or env == "faiss_env(config)", f"{path.name}: {env}"
            for choice in choices:
                assert (path.parent / choice).resolve().is_file(), f"{path.name}: {choice}"


def test_the_faiss_gpu_env_is_the_data_env_plus_the_gpu_wheel() -> None:
    data, gpu = env_pins(REPO / "envs/data.yaml"), env_pins(REPO / "envs/gpu/faiss.yaml")
    extra = {canonicalize_name(Requirement(pin).name): Version(pin.split("==")[1])
             for pin in lock_module().FAISS_GPU}
    assert gpu == {**data, **extra} and "faiss-cpu" not in gpu and "torch" not in gpu
    assert faiss_env({"retrieval": {"index_gpu": "yes"}}) == "../../envs/gpu/faiss.yaml"
