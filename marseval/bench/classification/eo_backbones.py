"""Earth-observation backbones of the Mars-Bench EO comparison (paper Figure 4).

Config names and the published runs' display names
(`resources/reference/marsbench-paper-runs/earth_data.csv`):

- `eo:satmae_vit_l16` -> `SatMAE_ViT-L/16`: SatMAE's fMoW-RGB pretrained ViT-L/16 (the MAE
  encoder; github.com/sustainlab-group/SatMAE), built as timm's `VisionTransformer`; weights
  `fmow_pretrain.pth` from the SatMAE authors' Zenodo record 7369797 (via torch.hub into
  `$TORCH_HOME/hub/checkpoints/`). Features: the class token after the final norm (MAE's
  linear-probe convention).
- `eo:croma_vit_l16` -> `CROMA_ViT-L/16`: CROMA-large (ViT-L, patch 8, 120 px, ALiBi
  attention), the optical (Sentinel-2) encoder of `torchgeo.models.CROMA` with torchgeo's
  `CROMALarge_Weights.CROMA_VIT` (torch.hub cache), loaded by torchgeo's own `load_weights`.
  Features: `optical_GAP` (the pooled encoding through CROMA's GAP FFN).
- `eo:prithvi_eo_v1_100` -> `prithvi_eo_v1_100`: Prithvi-EO-1.0-100M (ViT-B/16 MAE on 6 HLS
  bands), `Prithvi_EO_V1_100M.pt` from the Hugging Face repo
  `ibm-nasa-geospatial/Prithvi-EO-1.0-100M`, built as timm's `VisionTransformer` for one
  frame: the 3-D patch embedding's kernel (tubelet 1) becomes a 2-D one and the first
  frame's slice of the fixed 3-D sin-cos position table is used (terratorch, which publishes
  the `prithvi_eo_v1_100` backbone, needs torchgeo >= 0.9 and Python >= 3.12). Features:
  the mean of the patch tokens after the final norm.

Band handling (`EOSpec.rgb`, `EOSpec.fill`). How the Mars-Bench paper fed single-band and RGB
Mars images to these multispectral models is **not known** (its repository ships only the
results collection, `benchmark/earth_data_prep.py`). This module's documented default: the
loader makes every image 3-channel (grayscale repeated), the 3 channels are normalised with
`Backbone.mean/std` (the model's statistics of its red, green and blue bands), go into the
model's red, green and blue bands, and every other band gets the mean of the three
(`fill="gray"`: a grayscale image thus fills every band with its one channel); `fill="zeros"`
puts 0 (the band mean after standardisation) there instead.

With `pretrained=True` and `MARSEVAL_OFFLINE`/`HF_HUB_OFFLINE` set, a checkpoint that is not
cached is an error naming the file; every file loads with `weights_only=True`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from marseval.bench.checkpoints import load_strict, read_checkpoint, unwrap_state_dict
from marseval.bench.model_building import (
    hf_offline,
    offline_var,
    torch_hub_checkpoint,
    torchvision_state_dict,
)
from marseval.errors import MarsevalError

FILLS = ("gray", "zeros")
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
HLS_BANDS = ("blue", "green", "red", "nir_narrow", "swir_1", "swir_2")

SATMAE_URL = "https://zenodo.org/record/7369797/files/fmow_pretrain.pth"
PRITHVI_REPO = "ibm-nasa-geospatial/Prithvi-EO-1.0-100M"
PRITHVI_FILE = "Prithvi_EO_V1_100M.pt"
# Prithvi-EO-1.0 config (data_mean/data_std, HLS reflectance x 10000) in blue..swir_2 order
_PRITHVI_MEAN = (775.2290211032589, 1080.992780391705, 1228.5855250417867,
                 2497.2022620507532, 2204.2139147975554, 1610.8324823273745)
_PRITHVI_STD = (1281.526139861424, 1270.0297974547493, 1399.4802505642526,
                1368.3446143747644, 1291.6764008585435, 1154.505683480695)


@dataclass(frozen=True)
class EOSpec:
    """One EO backbone: its architecture, bands, preprocessing and weights.

    `rgb`: the positions of the red, green and blue bands among `bands`; `fill`: what the
    other bands get (`FILLS`, module docstring). `mean`/`std`: red, green, blue statistics on
    [0, 1] pixels. `arch`: the architecture's keyword arguments (tests put a tiny config of the
    same class here).
    """

    display_name: str
    family: str  # satmae | croma | prithvi
    bands: tuple[str, ...]
    rgb: tuple[int, int, int]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    arch: dict = field(default_factory=dict)
    fill: str = "gray"


EO_MODELS: dict[str, EOSpec] = {
    "satmae_vit_l16": EOSpec(
        "SatMAE_ViT-L/16", "satmae", ("red", "green", "blue"), (0, 1, 2), 224,
        # SatMAE util/datasets.py CustomDatasetFromImages (fMoW RGB)
        (0.4182007312774658, 0.4214799106121063, 0.3991275727748871),
        (0.28774282336235046, 0.27541765570640564, 0.2764017581939697),
        {"img_size": 224, "patch_size": 16, "embed_dim": 1024, "depth": 24,
               "num_heads": 16}),
    "croma_vit_l16": EOSpec(
        # CROMA's optical encoder takes inputs as they come (torchgeo: transforms=Identity)
        "CROMA_ViT-L/16", "croma", S2_BANDS, (3, 2, 1), 120, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
        {"encoder_dim": 1024, "encoder_depth": 24, "num_heads": 16, "patch_size": 8}),
    "prithvi_eo_v1_100": EOSpec(
        "prithvi_eo_v1_100", "prithvi", HLS_BANDS, (2, 1, 0), 224,
        # red, green, blue of the HLS statistics, as reflectance in [0, 1]
        tuple(_PRITHVI_MEAN[i] / 10000 for i in (2, 1, 0)),
        tuple(_PRITHVI_STD[i] / 10000 for i in (2, 1, 0)),
        {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12,
              "num_heads": 12, "num_frames": 3}),
}


def known_eo_models() -> list[str]:
    return [f"eo:{key}" for key in EO_MODELS]


def map_bands(images: Tensor, n_bands: int, rgb: tuple[int, int, int], fill: str) -> Tensor:
    """(N, 3, H, W) normalised red, green, blue -> (N, n_bands, H, W) in the model's band
    order: red, green, blue at `rgb`, the other bands filled per `fill` (module docstring)."""
    if fill not in FILLS:
        raise MarsevalError(f"unknown band fill {fill!r}; known: {', '.join(FILLS)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise MarsevalError(f"EO backbones take 1- or 3-channel images, got {images.shape[1]}")
    n, _, h, w = images.shape
    if fill == "gray":
        out = images.mean(1, keepdim=True).expand(n, n_bands, h, w).clone()
    else:
        out = images.new_zeros(n, n_bands, h, w)
    out[:, list(rgb)] = images
    return out


class EOFeatures(nn.Module):
    """Band mapping, then the EO network's pooled features as {"main": (N, D)}."""

    def __init__(self, net: nn.Module, spec: EOSpec) -> None:
        super().__init__()
        self.net = net
        self.family = spec.family
        self.n_bands = len(spec.bands)
        self.rgb = spec.rgb
        self.fill = spec.fill

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = map_bands(images, self.n_bands, self.rgb, self.fill)
        if self.family == "croma":
            return {"main": self.net(x_optical=x)["optical_GAP"]}
        return {"main": self.net(x)}


# --------------------------------------------------------------------------- architectures


def _vit(spec: EOSpec) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    arch = {k: v for k, v in spec.arch.items() if k != "num_frames"}
    if spec.family == "satmae":  # MAE's ViT: LayerNorm eps 1e-6, class token
        return VisionTransformer(in_chans=len(spec.bands), num_classes=0, global_pool="token",
                                 **arch)
    # Prithvi: nn.LayerNorm (eps 1e-5) as its MaskedAutoencoderViT; mean of patch tokens
    # after the final norm
    return VisionTransformer(in_chans=len(spec.bands), num_classes=0, global_pool="avg",
                             fc_norm=False, norm_layer=nn.LayerNorm, **arch)


def _croma(spec: EOSpec) -> nn.Module:
    from torchgeo.models import CROMA

    return CROMA(modalities=["optical"], image_size=spec.input_size, **spec.arch)


# --------------------------------------------------------------------------- weights


def _satmae_weights(net: nn.Module, name: str) -> None:
    """SatMAE's pretraining checkpoint: {"model": MAE encoder+decoder, "args": Namespace,
    ...}; the decoder and mask token are dropped, the encoder loads strictly."""
    path = torch_hub_checkpoint(SATMAE_URL)
    var = offline_var()
    if not path.is_file():
        if var is not None:
            raise MarsevalError(
                f"pretrained weights of {name} are not cached at {path} and {var} forbids "
                f"downloading them; fetch {SATMAE_URL} to that path or unset {var}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(SATMAE_URL, str(path), progress=False)
        except Exception as exc:
            raise MarsevalError(f"downloading {SATMAE_URL} to {path} failed: {exc}") from exc
    state = unwrap_state_dict(read_checkpoint(path, safe_globals=[argparse.Namespace]),
                              str(path))
    load_strict(net, state, str(path), ignore_prefixes=("decoder_", "mask_token"))


def _croma_weights(net: nn.Module, name: str) -> None:
    """torchgeo's CROMA checkpoint ({"s1_encoder", "s2_encoder", "s2_GAP_FFN", ...}), read
    weights-only here and loaded by torchgeo's `load_weights` (optical parts, strict)."""
    from torchgeo.models import CROMALarge_Weights
    from torchgeo.models.croma import load_weights

    weights = CROMALarge_Weights.CROMA_VIT
    state = torchvision_state_dict(name, weights)  # offline check, weights_only=True

    class _Read:  # torchgeo calls weights.get_state_dict(progress=True)
        def get_state_dict(self, *args, **kwargs):
            return state

    try:
        load_weights(net, _Read())
    except (AssertionError, KeyError, RuntimeError) as exc:
        raise MarsevalError(f"checkpoint {torch_hub_checkpoint(weights.url)} does not fit "
                            f"{name}: {exc}") from exc


def prithvi_checkpoint() -> Path:
    """The cached (or downloaded) Prithvi checkpoint through huggingface_hub."""
    from huggingface_hub import hf_hub_download

    var = offline_var()
    try:
        if var is not None:
            with hf_offline():
                return Path(hf_hub_download(PRITHVI_REPO, PRITHVI_FILE, local_files_only=True))
        return Path(hf_hub_download(PRITHVI_REPO, PRITHVI_FILE))
    except Exception as exc:
        from huggingface_hub import constants

        where = f" and {var} forbids downloading it" if var else ""
        raise MarsevalError(
            f"pretrained weights of eo:prithvi_eo_v1_100 ({PRITHVI_FILE} of the Hugging Face "
            f"repo {PRITHVI_REPO}) are not in the hub cache {constants.HF_HUB_CACHE}{where}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def prithvi_to_vit(state: dict[str, Tensor], patches: int) -> dict[str, Tensor]:
    """Prithvi MAE keys -> a one-frame timm ViT's: decoder and mask token dropped, the
    Conv3d kernel (tubelet 1) squeezed to 2-D, the first frame's position rows kept."""
    out = {k: v for k, v in state.items()
           if not k.startswith(("decoder_", "mask_token"))}
    kernel = out.get("patch_embed.proj.weight")
    if kernel is not None and kernel.ndim == 5:
        if kernel.shape[2] != 1:
            raise MarsevalError(f"Prithvi tubelet size {kernel.shape[2]} is not 1")
        out["patch_embed.proj.weight"] = kernel[:, :, 0]
    if "pos_embed" in out:
        out["pos_embed"] = out["pos_embed"][:, : 1 + patches]
    return out


def _prithvi_weights(net: nn.Module, name: str) -> None:
    path = prithvi_checkpoint()
    state = unwrap_state_dict(read_checkpoint(path), str(path))
    load_strict(net, prithvi_to_vit(state, net.patch_embed.num_patches), str(path))


# --------------------------------------------------------------------------- building


def build_eo(key: str, pretrained: bool):
    """The Backbone of `eo:<key>` (random init unless `pretrained`)."""
    from marseval.bench.classification.models import Backbone

    spec = EO_MODELS.get(key)
    if spec is None:
        raise MarsevalError(f"unknown Earth-observation model 'eo:{key}'; known: "
                            f"{', '.join(known_eo_models())}")
    if spec.fill not in FILLS:
        raise MarsevalError(f"eo:{key}: unknown band fill {spec.fill!r}")
    net = _croma(spec) if spec.family == "croma" else _vit(spec)
    if pretrained:
        {"satmae": _satmae_weights, "croma": _croma_weights,
         "prithvi": _prithvi_weights}[spec.family](net, f"eo:{key}")
    dim = spec.arch["encoder_dim" if spec.family == "croma" else "embed_dim"]
    return Backbone(module=EOFeatures(net, spec), feature_dims={"main": int(dim)},
                    input_size=spec.input_size, mean=spec.mean, std=spec.std,
                    display_name=spec.display_name)
