"""What the model builders of the three tasks share: pretrained weights that load for real but
never download when an offline switch is set, argument checks, freezing.

torchvision checkpoints go through torch.hub into `$TORCH_HOME/hub/checkpoints/`, timm ones
through its hub loading; with `MARSEVAL_OFFLINE` or `HF_HUB_OFFLINE` set, a missing checkpoint
is an error naming the file, never a download. Everything loads with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from marseval.data.download import OFFLINE_ENV_VARS
from marseval.errors import MarsevalError

TRAINING_TYPES = ("feature_extraction", "transfer_learning", "scratch")


# --------------------------------------------------------------------------- offline mode


def offline_var() -> str | None:
    """The environment variable that forbids network access, if one is set."""
    for var in OFFLINE_ENV_VARS:
        if os.environ.get(var, "").strip().lower() not in {"", "0", "false", "no", "off"}:
            return var
    return None


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: switch it on for this block."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client: timm can only load from URLs, checked beforehand
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def torch_hub_checkpoint(url: str) -> Path:
    """Where torch.hub keeps the file of `url`: `$TORCH_HOME/hub/checkpoints/<file name>`."""
    # torch.hub.get_dir reads TORCH_HOME at call time, so tests can point it elsewhere
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torchvision_state_dict(name: str, weights) -> dict[str, Tensor]:
    path = torch_hub_checkpoint(weights.url)
    var = offline_var()
    if var is not None and not path.is_file():
        raise MarsevalError(
            f"pretrained weights of {name} ({weights}) are not cached at {path} and {var} "
            f"forbids downloading them; fetch {weights.url} to that path or unset {var}"
        )
    try:
        # weights_only=True explicitly: torch.hub.load_state_dict_from_url defaults to False
        return weights.get_state_dict(
            progress=False, check_hash=True, weights_only=True, map_location="cpu"
        )
    except Exception as exc:  # network (URLError), hash mismatch, refused pickle (weights_only)
        raise MarsevalError(
            f"loading pretrained weights of {name} from {weights.url} into {path} failed: {exc}"
        ) from exc


def check_timm_offline(model_name: str, var: str) -> None:
    """Offline, a timm checkpoint that would come from a plain URL must already be cached."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(model_name)
    except RuntimeError as exc:  # an unknown pretrained tag
        raise MarsevalError(f"timm model {model_name!r}: {exc}") from exc
    if cfg is None:
        return
    try:
        from timm.models._hub import has_hf_hub

        hub_client = has_hf_hub()
    except ImportError:  # a private timm helper moved: assume the hub client is there
        hub_client = True
    # timm prefers the Hugging Face Hub when it can (the offline switch covers that path)
    has_hub = bool(cfg.hf_hub_id) and hub_client
    if not has_hub and cfg.url:
        path = torch_hub_checkpoint(cfg.url)
        if not path.is_file():
            raise MarsevalError(
                f"pretrained weights of timm:{model_name} are not cached at {path} and {var} "
                f"forbids downloading them; fetch {cfg.url} to that path or unset {var}"
            )


def check_model_arguments(kind: str, name: str, num_classes: int, training_type: str) -> None:
    """The arguments every model builder shares: a known training type and >= 1 class."""
    if training_type not in TRAINING_TYPES:
        raise MarsevalError(
            f"unknown training type {training_type!r}; expected one of {', '.join(TRAINING_TYPES)}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise MarsevalError(f"{kind} {name!r}: num_classes must be an integer >= 1, "
                            f"got {num_classes!r}")


# --------------------------------------------------------------------------- training


def freeze(module: nn.Module) -> nn.Module:
    """Make every parameter of `module` untrainable; returns it."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should update."""
    return [p for p in model.parameters() if p.requires_grad]
