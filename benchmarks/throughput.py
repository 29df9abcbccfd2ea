"""Images per second per model, input size and device: the table `python -m marseval plan` reads.

Measured rows. Every model of the shipped configs (bench.models and retrieval.models of
config/*.yaml) is built as `benchmarks/model_costs.py` builds it (the workflow's own builders,
random init: no weights can be downloaded here, the compute is the same), at the input size
the workflow feeds it. One row holds, per model: an eval-mode forward without gradients on a
batch of `--batch` random images, the median of `--repeats` timed calls after one warm-up
call (models above `--heavy-gflops` forward GFLOPs take `--heavy-repeats` calls: recorded per
model), as images/s; the forward FLOPs at that size (FlopCounterMode, batch 1); for
segmentation models the decoder's share (the whole network minus the encoder alone), which is
what each trial of a shared backbone pass still pays. On CUDA (`--device cuda`) the forward
runs under float16 autocast, as the reference protocol's 16-mixed precision trains.

Assumed rows. No GPU could be measured where this table was recorded, so GPU rows hold an
effective TFLOP/s (a stated fraction of the card's dense float16 peak, `ASSUMED_DEVICES`):
the planner divides each model's forward FLOPs by it. A measured row of the same name
replaces the assumption for the models it measured: `--device cuda --row a100` on an A100.

Run: YOLO_OFFLINE=1 MARSEVAL_OFFLINE=1 python benchmarks/throughput.py [--row cpu]
     [--device cpu] [--threads 1] [--batch 2] [--repeats 3] [--models NAME ...]
Writes marseval/registry/throughput.json (other rows, and with `--models` the row's other
models, are kept) and prints a Markdown table of the row.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).parent)]

from model_costs import (  # noqa: E402  (benchmarks/ is on sys.path)
    BUILDERS,
    config_models,
    count_flops,
    cpu_name,
    median_seconds,
    shipped_configs,
)

OUT = REPO / "marseval" / "registry" / "throughput.json"  # package data: planner, requests
EFFICIENCY = 0.25
# GPU rows that cannot be measured here: dense float16/bfloat16 tensor-core peak (vendor
# datasheets, SXM parts, without sparsity) times EFFICIENCY. A quarter of peak is what
# mixed-precision training of convolutional and ViT backbones sustains at batch 16-64 in
# published throughputs (ResNet-50 on an A100: about 2,700 training images/s, 3 x 8.2 GFLOPs
# each, 66 TFLOP/s, 21 % of 312); small batches, frozen-backbone heads and Python-side
# loading keep it from more. `gpu20` is job_resources' own default (`gpu_tflops: 20`), what
# the workflow's scheduler requests assume.
ASSUMED_DEVICES: dict[str, dict[str, Any]] = {
    "a100": {"description": "NVIDIA A100 SXM (assumed, not measured)", "peak_tflops": 312,
             "efficiency": EFFICIENCY},
    "h100": {"description": "NVIDIA H100 SXM (assumed, not measured)", "peak_tflops": 989,
             "efficiency": EFFICIENCY},
    "gpu20": {"description": "any GPU at job_resources.gpu_tflops' default of 20 TFLOP/s "
                             "(assumed: what the workflow's job requests assume)",
              "effective_tflops": 20.0},
}
BASIS = ("effective TFLOP/s = peak dense float16 TFLOP/s x efficiency; images/s of a model = "
         "effective FLOP/s / its forward FLOPs per image (marseval/registry/model_costs.yaml)")


def assumed_rows() -> dict[str, dict[str, Any]]:
    rows = {}
    for name, spec in ASSUMED_DEVICES.items():
        row = {"kind": "assumed", **spec}
        if "effective_tflops" not in row:
            row["effective_tflops"] = round(spec["peak_tflops"] * spec["efficiency"], 2)
            row["basis"] = BASIS
        rows[name] = row
    return rows


def measure(task: str, name: str, device: str, batch: int, repeats: int,
            heavy_gflops: float, heavy_repeats: int) -> dict[str, Any]:
    """Images/s and FLOPs of one model on `device` (or `error` when it cannot run)."""
    import torch

    start = time.perf_counter()
    load = os.getloadavg()[0]
    try:
        torch.manual_seed(0)
        built = BUILDERS[task](name)
        size = built.input_size
        one = torch.rand(1, 3, size, size)
        flops = count_flops(built.forward, one)
        decoder = None
        if task == "segmentation":  # what a trial of a shared encoder pass still pays
            decoder = flops - count_flops(built.counted.encoder, one)
        if device != "cpu":
            built.loaded.to(device)
        images = torch.rand(batch, 3, size, size, device=device)
        autocast = torch.autocast("cuda", dtype=torch.float16, enabled=device != "cpu")
        calls = heavy_repeats if flops / 1e9 > heavy_gflops else repeats

        def step() -> None:
            with torch.no_grad(), autocast:
                built.forward(images)
            if device != "cpu":
                torch.cuda.synchronize()

        seconds = median_seconds(step, calls)
    except Exception as exc:  # a model that cannot be built or run is recorded, not fatal
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{name}: ERROR {type(exc).__name__}: {first}", flush=True)
        return {"task": task, "error": f"{type(exc).__name__}: {first}"}
    record: dict[str, Any] = {"task": task, "input_size": size, "batch": batch,
                              "repeats": calls, "images_per_s": batch / seconds,
                              "gflops": flops / 1e9}
    if decoder is not None:
        record["decoder_gflops"] = decoder / 1e9
    if "proxy" in built.extra:
        record["proxy"] = built.extra["proxy"]
    record["measure_s"] = time.perf_counter() - start
    record["load_avg_1m"] = [load, os.getloadavg()[0]]  # the machine may be shared
    print(f"{name}: {record['images_per_s']:.3g} images/s at {size} px "
          f"({record['gflops']:.3g} GFLOPs, {calls} repeats)", flush=True)
    return record


def markdown(row: dict[str, Any]) -> str:
    lines = ["| model | task | input px | images/s | GFLOPs | sustained GFLOP/s | repeats |",
             "|---|---|---|---|---|---|---|"]
    for name, r in row["models"].items():
        if "error" in r:
            lines.append(f"| `{name}` | {r['task']} | | | | | error: {r['error']} |")
            continue
        lines.append(f"| `{name}` | {r['task']} | {r['input_size']} | {r['images_per_s']:.3g} "
                     f"| {r['gflops']:.3g} | {r['images_per_s'] * r['gflops']:.3g} | "
                     f"{r['repeats']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", default="cpu", help="the device row to write")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--heavy-gflops", type=float, default=200.0)
    parser.add_argument("--heavy-repeats", type=int, default=1)
    parser.add_argument("--models", nargs="*", help="only these (the row's others are kept)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for var in ("YOLO_OFFLINE", "MARSEVAL_OFFLINE", "HF_HUB_OFFLINE"):
        os.environ.setdefault(var, "1")  # nothing may be downloaded

    import torch
    from record import machine, write_results

    torch.set_num_threads(args.threads)
    wanted = config_models(shipped_configs())
    unknown = sorted(set(args.models or []) - set(wanted))
    if unknown:
        raise SystemExit(f"not in any config/*.yaml: {', '.join(unknown)}")
    table = json.loads(args.out.read_text()) if args.out.is_file() else {}
    devices = table.get("devices", {})
    old = devices.get(args.row, {}).get("models", {}) if args.models else {}
    models = {}
    for name, task in wanted.items():
        if args.models and name not in args.models:
            if name in old:
                models[name] = old[name]
            continue
        models[name] = measure(task, name, args.device, args.batch, args.repeats,
                               args.heavy_gflops, args.heavy_repeats)
        gc.collect()
    hardware = (torch.cuda.get_device_name() if args.device != "cpu"
                else f"{cpu_name()}, {args.threads} torch thread(s)")
    row = {"kind": "measured", "description": hardware, "device": args.device,
           "date": time.strftime("%Y-%m-%d"),
           "machine": machine(cpu=cpu_name(), torch=torch.__version__,
                              threads=torch.get_num_threads()),
           "batch": args.batch, "repeats": args.repeats, "heavy_gflops": args.heavy_gflops,
           "heavy_repeats": args.heavy_repeats,
           "method": "eval forward without gradients on random images, median of the "
                     "repeats after one warm-up; float16 autocast on CUDA",
           "models": models}
    assumed = assumed_rows()
    if args.row in assumed:  # a measured GPU row keeps its assumption for unmeasured models
        row = {**assumed[args.row], **row, "kind": "measured"}
    devices = {**assumed, **{k: v for k, v in devices.items() if v.get("kind") == "measured"},
               args.row: row}
    flops = {**table.get("models", {})}
    for name, r in models.items():
        if "gflops" in r:
            flops[name] = {k: r[k] for k in ("task", "input_size", "gflops", "decoder_gflops")
                           if k in r}
    write_results(args.out, {
        "description": __doc__.split("\n\n")[0],
        "flops": "torch.utils.flop_counter.FlopCounterMode, batch 1, 2 FLOPs per "
                 "multiply-accumulate (benchmarks/model_costs.py count_flops)",
        "devices": devices, "models": flops})
    print()
    print(markdown(row))


if __name__ == "__main__":
    main()
