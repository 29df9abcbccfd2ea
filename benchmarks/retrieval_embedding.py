"""Embedding throughput of the retrieval models: images per second and captions per second.

Each model is loaded through marseval.retrieval.models.load_model, as the `embed` stage does,
and fed random RGB images at its own input size through its own preprocessing (PIL images in,
unit vectors out, so decoding-free end-to-end cost of a batch). Paper-size architectures are
random-init open_clip models (no weights can be downloaded here; the compute is the same):
ViT-B-16 and ViT-L-14-quickgelu (the DFN2B-CLIP-ViT-L-14 architecture). After one warm-up
batch, the median of `--repeats` timed batches is reported.

Run: python benchmarks/retrieval_embedding.py [--device cpu|cuda] [--batch 16] [--repeats 3]
Writes benchmarks/results/retrieval_embedding_<device>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from record import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)

# (model name, the open_clip architecture built without weights); None: load_model's own
MODELS = [("tiny-clip", None), ("ViT-B-16", "ViT-B-16"),
          ("ViT-L-14-quickgelu (DFN2B)", "ViT-L-14-quickgelu")]


def _random_init(arch: str, device: str):
    """An EmbeddingModel around a random-init open_clip architecture."""
    import open_clip
    import torch

    from marseval.retrieval.models import EmbeddingModel

    model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=None,
                                                                device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    return EmbeddingModel(
        arch, lambda images: torch.stack([transform(im) for im in images]),
        model.encode_image, lambda texts: model.encode_text(tokenizer(texts).to(device)),
        device), model.visual.image_size[0]


def _timed(step, repeats: int, device: str) -> float:
    import torch

    step()  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, arch: str | None, device: str, batch: int, repeats: int) -> dict:
    import numpy as np
    from PIL import Image

    from marseval.retrieval.models import load_model

    if arch is None:
        model, size = load_model(name, device), 32
    else:
        model, size = _random_init(arch, device)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
              for _ in range(batch)]
    captions = ["a high-resolution remote sensing image of pitted cones on Mars."] * batch
    image_s = _timed(lambda: model.embed_images(images), repeats, device)
    text_s = _timed(lambda: model.embed_texts(captions), repeats, device)
    return {"model": name, "input_size": size, "batch": batch,
            "images_per_s": batch / image_s, "captions_per_s": batch / text_s}


def main() -> None:
    import faiss
    import open_clip
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(name, arch, args.device, args.batch, args.repeats)
            for name, arch in MODELS]
    out = REPO / "benchmarks" / "results" / f"retrieval_embedding_{args.device.split(':')[0]}.json"
    write_results(out, {
        "machine": machine(torch=torch.__version__, open_clip=open_clip.__version__,
                           faiss=faiss.__version__, threads=torch.get_num_threads(),
                           device=args.device),
        "repeats": args.repeats, "results": rows})
    print("| model | input px | images/s | captions/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['input_size']} | {r['images_per_s']:.1f} | "
              f"{r['captions_per_s']:.1f} |")


if __name__ == "__main__":
    main()
