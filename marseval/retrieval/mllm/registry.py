"""The multimodal-LLM embedders a config may name, and the remote-code opt-in.

A model is `mllm:<key>` (its registry entry, weights from its hub id) or
`mllm:<key>@<folder or hub id>` (the same adapter on other weights: a local copy, a mirror).
An embedder whose adapter runs the hub's own code (`trust_remote_code`) runs only when the
config says so for that model and names the commit to run
(`retrieval.remote_code.<key>: <40-hex commit>`): remote code is code from the hub, and a
moving `main` would change it under a finished run. The check runs while the Snakefile is
parsed, so a run stops before any job.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from marseval.errors import MarsevalError

PREFIX = "mllm:"
# (family, recipe) pairs with an adapter (marseval/retrieval/mllm/<family>.py,
# marseval.retrieval.mllm.load); another embedder is refused when the config is checked
ADAPTED = (("llava_next", None), ("qwen2_vl", "gme"), ("bge_vl", None), ("vlm2vec", None),
           ("ops_mm", None), ("qwen3_vl", None), ("jina_v4", None))
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class EmbedderSpec:
    key: str
    family: str
    hub: str
    remote_code: bool
    cuda_dtype: str
    batch_size: int
    revision: str | None = None
    padding_side: str = "left"
    prompts: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def require(self, prompts: tuple[str, ...] = (), fields: tuple[str, ...] = ()) -> None:
        """Stop, naming the entry and what it lacks, when any of these prompts or registry
        fields is missing or empty (an adapter needs them all)."""
        missing = [f"prompts.{k}" for k in prompts if not self.prompts.get(k)]
        missing += [k for k in fields if not self.extra.get(k)]
        if missing:
            raise MarsevalError(f"{self.key}: its entry in marseval/registry/mllm_embedders.yaml "
                                f"lacks {', '.join(missing)}")


_FIELDS = ("family", "hub", "remote_code", "cuda_dtype", "batch_size", "revision",
           "padding_side", "prompts")


@functools.cache
def embedders() -> dict[str, EmbedderSpec]:
    text = resources.files("marseval.registry").joinpath("mllm_embedders.yaml").read_text()
    found = {}
    for key, entry in yaml.safe_load(text)["embedders"].items():
        known = {k: entry[k] for k in _FIELDS if k in entry and entry[k] is not None}
        extra = {k: v for k, v in entry.items() if k not in _FIELDS}
        found[key] = EmbedderSpec(key=key, extra=extra, **known)
    return found


def registry_key(name: str) -> str:
    """`mllm:<key>[@<weights>]` -> key (`@` names other weights: a local folder, a mirror)."""
    return name.removeprefix(PREFIX).partition("@")[0]


def get_embedder(name: str) -> EmbedderSpec:
    """The registry entry of `mllm:<key>[@<weights>]` (or of the bare key)."""
    key = registry_key(name)
    try:
        return embedders()[key]
    except KeyError:
        raise MarsevalError(f"retrieval model {name!r}: {key!r} is not in the embedder "
                            f"registry (marseval/registry/mllm_embedders.yaml); known: "
                            f"{', '.join(sorted(embedders()))}") from None


def remote_code_problem(name: str, opted_in: dict[str, str]) -> str | None:
    """Why `mllm:<key>` may not run under the config's retrieval.remote_code (or has no
    adapter), or None."""
    spec = get_embedder(name)
    if (spec.family, spec.extra.get("recipe")) not in ADAPTED:
        adapted = sorted(k for k, e in embedders().items()
                         if (e.family, e.extra.get("recipe")) in ADAPTED)
        return (f"{name}: its adapter ({spec.family} family) is not written yet (adapted: "
                f"{', '.join(adapted)})")
    if not spec.remote_code:
        return None
    commit = opted_in.get(spec.key)
    if commit is None:
        return (f"{name} runs remote code from {spec.hub}: opt in by naming the commit to run "
                f"under retrieval.remote_code.{spec.key} (40 hex digits)")
    if not _COMMIT.fullmatch(str(commit)):
        return (f"retrieval.remote_code.{spec.key} is {commit!r}: name a commit (40 hex "
                "digits), not a branch or tag, so the code cannot change under a run")
    return None


def check_embedders(models: list[str], opted_in: dict[str, str]) -> list[str]:
    """Every problem of the config's mllm models (unknown key, remote code not opted in)."""
    problems = []
    for name in models:
        if not name.startswith(PREFIX):
            continue
        try:
            problem = remote_code_problem(name, opted_in)
        except MarsevalError as exc:
            problem = str(exc)
        if problem:
            problems.append(problem)
    unused = sorted(set(opted_in) - {registry_key(n) for n in models if n.startswith(PREFIX)})
    if unused:
        problems.append(f"retrieval.remote_code names {', '.join(unused)}, which "
                        "retrieval.models does not list")
    return problems
