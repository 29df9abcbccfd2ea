"""Local checkpoint files: read them safely, unwrap them, load them strictly.

A checkpoint is a safetensors file or a torch file read with `torch.load(weights_only=True)`
(no pickled code runs). Training scripts wrap and prefix their weights in a few common ways:
`{"state_dict": ...}`, `{"model": ...}`, `{"model_state_dict": ...}`, keys under `module.`
(DataParallel / DDP) or `model.` (Lightning, wrapper modules); `unwrap_state_dict` removes
those. `load_strict` then loads into a network and names the file and the keys of any
mismatch, allowing only the classifier-head keys a `num_classes=0` backbone has no use for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from marseval.errors import MarsevalError

SAFETENSORS_SUFFIXES = (".safetensors",)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
PREFIXES = ("module.", "model.", "_orig_mod.")
_SHOWN = 8  # keys listed in an error message


def read_checkpoint(path: str | Path, *, safe_globals: Iterable[type] = ()) -> dict:
    """The object stored in `path`: safetensors (by suffix) or a weights-only torch file.

    `safe_globals`: plain classes a published checkpoint pickles beside its tensors (e.g.
    `argparse.Namespace` for the training arguments MAE-style scripts save) that
    weights-only loading may rebuild; nothing else is allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise MarsevalError(f"checkpoint file {path} does not exist")
    try:
        if path.suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, refused pickle (weights_only), not a checkpoint
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MarsevalError(f"cannot read checkpoint {path} (safetensors or a weights-only "
                            f"torch file): {first}") from exc


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, Tensor]:
    """The tensor mapping inside a checkpoint, wrappers and common key prefixes removed."""
    for _ in range(3):  # {"state_dict": {"model": ...}} at most
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise MarsevalError(f"{source}: no state dict found (expected a mapping of tensor "
                            f"names to tensors, possibly under one of {', '.join(WRAPPER_KEYS)})")
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    changed = True
    while changed:  # "module.model.x" -> "x"
        changed = False
        for prefix in PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_strict(net: nn.Module, state: Mapping[str, Tensor], source: str,
                ignore_prefixes: Iterable[str] = ()) -> None:
    """Load `state` into `net`; checkpoint keys under `ignore_prefixes` (a classifier head the
    backbone does not have) are dropped. Any other missing or unexpected key, or a shape that
    differs, is an error naming `source` and the keys."""
    ignore = tuple(ignore_prefixes)
    state = {k: v for k, v in state.items() if not (ignore and k.startswith(ignore))}
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches (checkpoint vs model): {_listed(shapes)}")
    if problems:
        raise MarsevalError(f"checkpoint {source} does not fit the model: "
                            + "; ".join(problems))
    net.load_state_dict(state, strict=True)
