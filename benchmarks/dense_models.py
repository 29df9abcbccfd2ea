"""Training and evaluation images per second of every segmentation and detection model.

Each model is built as in a Mars-Bench feature-extraction run (frozen trunk in eval mode,
decoder or heads training; random init, since no weights can be downloaded here, and the
compute is the same) at its default input size, and fed random images (with random masks or
boxes). A training step is forward, loss, backward and an AdamW step; an evaluation step is a
forward pass in eval mode without gradients (plus NMS for detectors). After one warm-up step,
the median of `--repeats` timed steps is reported as images per second.

Run: python benchmarks/dense_models.py [--device cpu|cuda] [--batch 2] [--repeats 3]
Writes benchmarks/results/dense_models_<device>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import write_results  # noqa: E402  (benchmarks/ is on sys.path)

os.environ.setdefault("YOLO_OFFLINE", "1")

SEGMENTATION = ["unet:resnet34", "deeplabv3plus:resnet34", "segformer:resnet34",
                "segformer:mit_b0", "dpt:vit_base_patch16_224"]
DETECTION = ["yolo11n", "yolo11s", "fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn_v2",
             "ssd300_vgg16"]
NUM_CLASSES = {"segmentation": 2, "detection": 1}


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median_seconds(step, repeats: int, device: str) -> float:
    step()  # warm-up: lazy allocations, cudnn autotuning, first-call caches
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(model, loss_of):
    """One AdamW step on the trainable parameters, frozen parts in eval as the loop keeps them."""
    import torch

    from marseval.bench.training import train_mode

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train() -> None:
        train_mode(model)
        loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return train


def segmentation_steps(name: str, batch: int, device: str):
    import torch

    from marseval.bench.segmentation.losses import segmentation_loss
    from marseval.bench.segmentation.models import build_segmenter

    torch.manual_seed(0)
    spec = build_segmenter(name, NUM_CLASSES["segmentation"], pretrained=False,
                           training_type="feature_extraction")
    model = spec.module.to(device)
    size = spec.input_size
    images = torch.randn(batch, 3, size, size, device=device)
    masks = torch.randint(0, 2, (batch, size, size), device=device)
    loss_fn = segmentation_loss("cross_entropy", 2)

    def evaluate() -> None:
        model.eval()
        with torch.no_grad():
            model(images).argmax(1)

    return size, training_step(model, lambda: loss_fn(model(images), masks)), evaluate


def detection_steps(name: str, batch: int, device: str):
    import torch

    from marseval.bench.detection.models import build_detector

    torch.manual_seed(0)
    model = build_detector(name, NUM_CLASSES["detection"], pretrained=False,
                           training_type="feature_extraction").to(device)
    size = model.input_size
    images = torch.rand(batch, 3, size, size, device=device)
    generator = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch):
        corner = torch.rand(8, 2, generator=generator) * size * 0.8
        extent = 8 + torch.rand(8, 2, generator=generator) * size * 0.15
        boxes = torch.cat([corner, corner + extent], 1).to(device)
        targets.append({"boxes": boxes, "labels": torch.zeros(8, dtype=torch.int64,
                                                             device=device)})

    def evaluate() -> None:
        model.eval()
        with torch.no_grad():
            model.predict(images)

    return size, training_step(model, lambda: model.loss(images, targets)), evaluate


def measure(task: str, name: str, batch: int, repeats: int, device: str) -> dict:
    builder = segmentation_steps if task == "segmentation" else detection_steps
    size, train, evaluate = builder(name, batch, device)
    train_s = _median_seconds(train, repeats, device)
    eval_s = _median_seconds(evaluate, repeats, device)
    row = {"task": task, "model": name, "input_size": size, "batch": batch,
           "train_step_s": train_s, "eval_step_s": eval_s,
           "train_images_per_s": batch / train_s, "eval_images_per_s": batch / eval_s}
    print(f"{name}: {row['train_images_per_s']:.2f} train img/s, "
          f"{row['eval_images_per_s']:.2f} eval img/s at {size} px", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", help="only these (default: all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    rows = []
    for task, names in (("segmentation", SEGMENTATION), ("detection", DETECTION)):
        for name in names:
            if args.models and name not in args.models:
                continue
            rows.append(measure(task, name, args.batch, args.repeats, args.device))
    device_name = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                   else platform.processor() or platform.machine())
    result = {"date": time.strftime("%Y-%m-%d"), "device": args.device,
              "device_name": device_name, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "python": platform.python_version(),
              "batch": args.batch, "repeats": args.repeats, "rows": rows}
    out = args.out or REPO / "benchmarks" / "results" / f"dense_models_{args.device}.json"
    write_results(out, result)
    print("\n| task | model | input px | train img/s | eval img/s |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['task']} | {row['model']} | {row['input_size']} | "
              f"{row['train_images_per_s']:.2f} | {row['eval_images_per_s']:.2f} |")


if __name__ == "__main__":
    main()
