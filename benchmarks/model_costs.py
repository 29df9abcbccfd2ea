"""Per-model compute costs for sizing jobs: parameters, forward FLOPs, CPU seconds, weight bytes.

Every model named in the shipped configs (config/*.yaml: bench.models and retrieval.models of
the paper config and of the embedded default) is built the way the workflow builds it, with
random init (no weights can be downloaded here; the compute is the same):

- classification: `build_classifier(name, 2, pretrained=False, "feature_extraction")`, the
  frozen backbone plus its 2-output linear head(s); FLOPs and time are the backbone's forward
  (what the `features` stage runs), at the backbone's own input size;
- segmentation: `build_segmenter(name, 2, ...)`, the whole network at its default input size;
- detection: `build_detector(name, 1, ...)`, `predict` (forward + NMS) at its default size;
- retrieval, open_clip hub models: hub configs cannot be fetched here, so the architecture is
  the one open_clip's own pretrained registry lists for that hub repo, built with
  `open_clip.create_model(arch, pretrained=None)`; FLOPs and time are `encode_image`;
- retrieval, transformers models: the same-size timm architecture (AIMv2-L, DINOv3 ViT-L/16),
  recorded with `"proxy"` naming what was built; `tiny-clip` as `load_model` builds it.

Fields: input_size (px, the side the model is fed), params_m (all parameters, millions; for
retrieval models the image tower, with text_params_m the text tower), trainable_params_m (in
feature-extraction mode), forward_gflops (FLOPs per image, batch 1, counted by
torch.utils.flop_counter.FlopCounterMode: 2 FLOPs per multiply-accumulate of matmuls,
convolutions and attention, see `count_flops`; element-wise ops, normalisation, pooling, NMS
and RoI-align are not counted), cpu_forward_s (median seconds per image of an eval-mode
forward without gradients, batch `--batch`, `--repeats` repeats after one warm-up,
`--threads` torch threads), weights_mb (float32 bytes of every parameter the job loads /
2^20), feature_dim (classification: the pooled feature width; retrieval: the embedding width).

Run: YOLO_OFFLINE=1 MARSEVAL_OFFLINE=1 python benchmarks/model_costs.py [--models NAME ...]
Writes benchmarks/results/model_costs.json and marseval/registry/model_costs.yaml (with
`--models`, those models' records are replaced and the others kept) and prints a Markdown
table. A model that cannot be built gets `"error"` instead of numbers.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

JSON_OUT = REPO / "benchmarks" / "results" / "model_costs.json"
YAML_OUT = REPO / "marseval" / "registry" / "model_costs.yaml"
CLASSES = {"classification": 2, "segmentation": 2, "detection": 1}
TASKS = ("classification", "segmentation", "detection", "retrieval")

# transformers models whose hub configs cannot be fetched here: the same-size timm
# architecture (timm name, create_model kwargs, input side, note)
TRANSFORMERS_PROXIES: dict[str, tuple[str, dict, int | None, str]] = {
    "apple/aimv2-large-patch14-224-lit": (
        "aimv2_large_patch14_224", {}, None,
        "AIMv2-L/14 vision tower; the LiT text tower and projection are not built"),
    "apple/aimv2-large-patch14-448": ("aimv2_large_patch14_448", {}, None, "AIMv2-L/14 at 448"),
    "facebook/dinov3-vitl16-pretrain-lvd1689m": (
        "vit_large_patch16_dinov3", {"img_size": 224}, 224,
        "DINOv3 ViT-L/16 (4 registers, RoPE) at the hub processor's 224 px"),
}


# --------------------------------------------------------------------------- measuring


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of `fn(*args, **kwargs)` without gradients, as FlopCounterMode counts them
    (2 per multiply-accumulate of matmuls, convolutions and attention).

    Two gaps of FlopCounterMode on the CPU are closed: the CPU kernel of
    scaled_dot_product_attention gets torch's own attention formula (unregistered, it would
    count 0), and nn.MultiheadAttention's eval-mode fast path (one fused op, counted 0) is
    switched off while counting, so its projections and attention are seen. The parameters of
    the module `fn` is (or is a method of) are untrainable while counting: FlopCounterMode's
    module tracker fails under no_grad on a trainable parameter passed as a submodule's input
    (timm's attention pooling, as in SigLIP).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {}
    cpu_op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_op is not None:
        mapping[cpu_op] = cpu_sdpa
    owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    trainable = ([p for p in owner.parameters() if p.requires_grad]
                 if isinstance(owner, torch.nn.Module) else [])
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            fn(*args, **kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for parameter in trainable:
            parameter.requires_grad_(True)
    return int(counter.get_total_flops())


def median_seconds(step: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `repeats` calls of `step` after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def n_params(module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- building


class Built:
    """A model as the workflow builds it: what runs per image, and the parameters it loads."""

    def __init__(self, forward: Callable, input_size: int, counted, *, loaded=None,
                 trainable: bool = False, **extra: Any) -> None:
        self.forward = forward  # images (N, 3, S, S) in [0, 1] -> anything
        self.input_size = int(input_size)
        self.counted = counted  # module whose parameters are params_m
        self.loaded = loaded if loaded is not None else counted  # every parameter loaded
        self.trainable = trainable  # the builder marks frozen parameters
        self.extra = extra


def build_classification(name: str) -> Built:
    from marseval.bench.classification.models import build_classifier

    model = build_classifier(name, CLASSES["classification"], pretrained=False,
                             training_type="feature_extraction").eval()
    return Built(model.backbone, model.spec.input_size, model, trainable=True,
                 feature_dim=model.spec.feature_dims["main"],
                 feature_dims=dict(model.spec.feature_dims), display_name=model.spec.display_name)


def build_segmentation(name: str) -> Built:
    from marseval.bench.segmentation.models import build_segmenter

    spec = build_segmenter(name, CLASSES["segmentation"], pretrained=False,
                           training_type="feature_extraction")
    module = spec.module.eval()
    return Built(module, spec.input_size, module, trainable=True,
                 display_name=spec.display_name)


def build_detection(name: str) -> Built:
    from marseval.bench.detection.models import build_detector

    model = build_detector(name, CLASSES["detection"], pretrained=False,
                           training_type="feature_extraction").eval()
    return Built(model.predict, model.input_size, model, trainable=True,
                 display_name=model.display_name)


# open_clip hub models outside open_clip's pretrained registry, whose hub config cannot be
# read offline: (architecture, image size, source)
OPEN_CLIP_HUB_PROXIES = {
    "claytonwang/MarsScope-v1": ("ViT-L-14-quickgelu", 512,
                                 "MarScope's model card (ViT-L-14-quickgelu from DFN2B, "
                                 "fine-tuned at 512 x 512)"),
}


def open_clip_architecture(hub_id: str) -> str:
    """The open_clip architecture its pretrained registry lists for hub repo `hub_id`
    (the `-quickgelu` one where both are listed: the DFN models were trained with it)."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    archs = [arch for arch, tag in open_clip.list_pretrained()
             if get_pretrained_cfg(arch, tag).get("hf_hub", "").strip("/") == hub_id]
    if not archs:
        raise LookupError(f"open_clip's pretrained registry lists no architecture for "
                          f"{hub_id!r} and its hub config cannot be fetched offline")
    quick = [arch for arch in archs if arch.endswith("-quickgelu")]
    return (quick or archs)[0]


def _open_clip_built(arch: str, image_size: int | None = None, **extra: Any) -> Built:
    import open_clip

    model = open_clip.create_model(arch, pretrained=None, force_image_size=image_size).eval()
    size = image_size or open_clip.get_model_config(arch)["vision_cfg"]["image_size"]
    size = size[0] if isinstance(size, list | tuple) else size
    text = n_params(model) - n_params(model.visual)
    return Built(model.encode_image, size, model.visual, loaded=model,
                 architecture=f"open_clip {arch}", text_params=text, **extra)


def build_retrieval(name: str) -> Built:
    import torch

    from marseval.registry.model_names import TINY_CLIP

    if name == TINY_CLIP:
        from marseval.retrieval.models import TINY_CLIP_SEED, _tiny_clip_arch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_CLIP_SEED)  # as load_model
            return _open_clip_built(_tiny_clip_arch())
    if name.startswith("open_clip:"):
        arch = name[len("open_clip:"):].partition("@")[0]
        if arch.startswith("hf-hub:") and arch[len("hf-hub:"):] in OPEN_CLIP_HUB_PROXIES:
            arch, size, note = OPEN_CLIP_HUB_PROXIES[arch[len("hf-hub:"):]]
            return _open_clip_built(arch, size, proxy=f"open_clip {arch} at {size} px: {note}")
        if arch.startswith("hf-hub:"):
            arch = open_clip_architecture(arch[len("hf-hub:"):])
        return _open_clip_built(arch)
    if name.startswith("transformers:"):
        import timm

        source = name[len("transformers:"):].partition("@")[0]
        if source not in TRANSFORMERS_PROXIES:
            raise LookupError(f"no same-size timm architecture known for {source!r}; its hub "
                              "config cannot be fetched offline")
        timm_name, kwargs, size, note = TRANSFORMERS_PROXIES[source]
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs).eval()
        size = size or model.pretrained_cfg["input_size"][-1]
        proxy = f"timm {timm_name}" + "".join(f" {k}={v}" for k, v in kwargs.items())
        return Built(model, size, model, architecture=proxy, proxy=f"{proxy}: {note}")
    raise LookupError(f"unknown retrieval model {name!r}")


BUILDERS = {"classification": build_classification, "segmentation": build_segmentation,
            "detection": build_detection, "retrieval": build_retrieval}


def measure(task: str, name: str, batch: int, repeats: int) -> dict[str, Any]:
    """The cost record of one model (or `error` when it cannot be built or run)."""
    import torch

    start = time.perf_counter()
    load = os.getloadavg()[0]  # the machine may be shared: other jobs slow the timing
    try:
        torch.manual_seed(0)
        built = BUILDERS[task](name)
        size = built.input_size
        one = torch.rand(1, 3, size, size)
        forward = built.forward
        flops = count_flops(forward, one)
        if task == "retrieval":  # the embedding width: what index and shards hold per item
            with torch.no_grad():
                built.extra["feature_dim"] = int(forward(one).shape[-1])
        images = torch.rand(batch, 3, size, size)
        with torch.no_grad():
            seconds = median_seconds(lambda: forward(images), repeats) / batch
    except Exception as exc:  # any builder or forward failure is recorded, not fatal
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{name}: ERROR {type(exc).__name__}: {first}", flush=True)
        return {"task": task, "error": f"{type(exc).__name__}: {first}"}
    extra = dict(built.extra)
    record: dict[str, Any] = {"task": task, "input_size": size,
                              "params_m": n_params(built.counted) / 1e6}
    if built.trainable:
        record["trainable_params_m"] = n_params(built.counted, trainable_only=True) / 1e6
    if "text_params" in extra:
        record["text_params_m"] = extra.pop("text_params") / 1e6
    record["forward_gflops"] = flops / 1e9
    record["cpu_forward_s"] = seconds
    record["weights_mb"] = n_params(built.loaded) * 4 / 2**20
    if "feature_dim" in extra:
        record["feature_dim"] = extra.pop("feature_dim")
    if "proxy" in extra:
        record["proxy"] = extra.pop("proxy")
    record.update(extra)
    record["measure_s"] = time.perf_counter() - start
    record["load_avg_1m"] = [load, os.getloadavg()[0]]  # before and after
    if task != "retrieval":
        record["num_classes"] = CLASSES[task]
    print(f"{name}: {record['params_m']:.1f} M params, {record['forward_gflops']:.2f} GFLOPs "
          f"at {size} px, {seconds:.3f} s/image", flush=True)
    return record


# --------------------------------------------------------------------------- configs


def shipped_configs() -> list[Path]:
    return sorted((REPO / "config").glob("*.yaml"))


def config_models(paths: list[Path]) -> dict[str, str]:
    """model name -> task, over bench.models and retrieval.models of every config file."""
    import yaml

    models: dict[str, str] = {}
    for path in paths:
        config = yaml.safe_load(path.read_text()) or {}
        bench = (config.get("bench") or {}).get("models") or {}
        for task in TASKS[:3]:
            for name in bench.get(task) or []:
                models.setdefault(name, task)
        for name in (config.get("retrieval") or {}).get("models") or []:
            # multimodal-LLM embedders (billions of parameters) are sized from their
            # published sizes in marseval/registry/mllm_embedders.yaml, not measured here
            if not name.startswith("mllm:"):
                models.setdefault(name, "retrieval")
    return models


def paper_config(paths: list[Path]) -> Path:
    """The config whose bench.models.classification holds resnet101 (the paper's)."""
    import yaml

    for path in paths:
        config = yaml.safe_load(path.read_text()) or {}
        if "resnet101" in (((config.get("bench") or {}).get("models") or {})
                           .get("classification") or []):
            return path
    raise SystemExit("no config/*.yaml lists resnet101 under bench.models.classification")


# --------------------------------------------------------------------------- writing


def sig3(value: float) -> str:
    """`value` to 3 significant digits, positional (YAML 1.1 reads `1e-05` as a string)."""
    import numpy as np

    return np.format_float_positional(float(f"{value:.3g}"), trim="-")


YAML_FIELDS = ("task", "input_size", "params_m", "trainable_params_m", "text_params_m",
               "forward_gflops", "cpu_forward_s", "weights_mb", "feature_dim", "proxy", "error")


def yaml_text(models: dict[str, dict], meta: dict[str, Any]) -> str:
    import json

    lines = [
        "# Per-model compute costs, read by the workflow to size job requests.",
        "# GENERATED by `python benchmarks/model_costs.py`: do not edit by hand; rerun it.",
        f"# Measured {meta['date']} on {meta['cpu']} ({meta['cpus']} CPUs, "
        f"{meta['threads']} torch threads), torch {meta['torch']}, Python {meta['python']};",
        "# random-init weights (same compute as pretrained). Full precision and the machine:",
        "# benchmarks/results/model_costs.json. Values rounded to 3 significant digits.",
        "# `models` is keyed by model name exactly as in the configs' bench.models and",
        "# retrieval.models; `measured` says where and how. Fields of a model:",
        "#   task                classification | segmentation | detection | retrieval",
        "#   input_size          side in px the model is fed by default (a config's",
        "#                       bench.input_size overrides it for segmentation/detection)",
        "#   params_m            parameters, millions (classification: frozen backbone + a",
        "#                       2-output head; retrieval: the image tower)",
        "#   trainable_params_m  of those, trainable in feature-extraction mode",
        "#   text_params_m       retrieval: parameters of the text tower",
        "#   forward_gflops      forward FLOPs per image at input_size, batch 1, counted by",
        "#                       torch FlopCounterMode (2 FLOPs per multiply-accumulate)",
        f"#   cpu_forward_s       median s per image, eval forward, batch {meta['batch']}, "
        f"{meta['repeats']} repeats",
        "#   weights_mb          float32 bytes of all parameters the job loads / 2^20",
        "#   feature_dim         classification: pooled feature size (the cache's width);",
        "#                       retrieval: embedding size (the index's width)",
        "#   proxy               what was built instead when the real model cannot be (offline)",
        "#   error               why the model could not be measured",
        "measured: {" + ", ".join(f"{k}: {json.dumps(meta[k])}" for k in
                                  ("date", "cpu", "cpus", "threads", "torch", "python", "batch",
                                   "repeats")) + "}",
        "models:",
    ]
    for name, record in models.items():
        fields = []
        for key in YAML_FIELDS:
            if key not in record:
                continue
            value = record[key]
            if isinstance(value, str):
                text = json.dumps(value)
            elif isinstance(value, int):
                text = str(value)
            else:
                text = sig3(value)
            fields.append(f"{key}: {text}")
        lines.append(f"  {json.dumps(name)}: {{{', '.join(fields)}}}")
    return "\n".join(lines) + "\n"


def markdown_table(models: dict[str, dict]) -> str:
    rows = ["| model | task | input px | params M | trainable M | GFLOPs | CPU s/image | "
            "weights MiB | note |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in models.items():
        if "error" in r:
            rows.append(f"| `{name}` | {r['task']} | | | | | | | error: {r['error']} |")
            continue
        note = r.get("proxy") or r.get("architecture") or ""
        trainable = sig3(r["trainable_params_m"]) if "trainable_params_m" in r else ""
        rows.append(
            f"| `{name}` | {r['task']} | {r['input_size']} | {sig3(r['params_m'])} | "
            f"{trainable} | {sig3(r['forward_gflops'])} | {sig3(r['cpu_forward_s'])} | "
            f"{sig3(r['weights_mb'])} | {note} |")
    return "\n".join(rows)


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="*", help="only these (others kept from the JSON)")
    parser.add_argument("--out", type=Path, default=JSON_OUT)
    parser.add_argument("--yaml", type=Path, default=YAML_OUT)
    args = parser.parse_args()

    # nothing may be downloaded: set before any hub client is imported (not at import time,
    # so that importing count_flops in a test leaves the environment alone)
    for var in ("YOLO_OFFLINE", "MARSEVAL_OFFLINE", "HF_HUB_OFFLINE"):
        os.environ.setdefault(var, "1")

    import json

    import open_clip
    import timm
    import torch
    import torchvision
    from record import machine, write_results  # benchmarks/ is on sys.path (script dir)

    from marseval.atomic import atomic_write_text

    torch.set_num_threads(args.threads)
    configs = shipped_configs()
    paper = paper_config(configs)
    wanted = config_models(configs)
    if args.models:
        unknown = sorted(set(args.models) - set(wanted))
        if unknown:
            raise SystemExit(f"not in any config/*.yaml: {', '.join(unknown)}")
    models: dict[str, dict] = {}
    if args.models and args.out.is_file():
        models = {k: v for k, v in json.loads(args.out.read_text())["models"].items()
                  if k in wanted}
    for name, task in wanted.items():
        if not args.models or name in args.models:
            models[name] = measure(task, name, args.batch, args.repeats)
            gc.collect()  # the model built in measure() is gone: free it before the next
    models = {name: models[name] for name in wanted if name in models}  # config order

    cpu = cpu_name()
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "batch": args.batch,
            "repeats": args.repeats}
    try:
        import ultralytics

        yolo = ultralytics.__version__
    except ImportError:  # pragma: no cover
        yolo = None
    write_results(args.out, {
        "machine": machine(cpu=cpu, torch=torch.__version__, torchvision=torchvision.__version__,
                           timm=timm.__version__, open_clip=open_clip.__version__,
                           ultralytics=yolo, threads=torch.get_num_threads()),
        "date": meta["date"], "batch": args.batch, "repeats": args.repeats,
        "flops": "torch.utils.flop_counter.FlopCounterMode, batch 1, 2 FLOPs per MAC",
        "configs": [str(p.relative_to(REPO)) for p in configs],
        "paper_config": str(paper.relative_to(REPO)), "models": models})
    atomic_write_text(args.yaml, yaml_text(models, meta))
    print()
    print(markdown_table(models))


if __name__ == "__main__":
    main()
