"""Images and captions per second of the multimodal-LLM embedders (`mllm:<key>`), tiny configs.

No weights can be downloaded here, so each adapter runs on the tiny random checkpoint its
tests build (tests/test_mllm_*.py: 2-layer language model of width 32, tiny vision tower),
loaded through `load_embedder` as the `embed` stage loads it. The images are 512 x 512 RGB
(a CTX cell's size). The Qwen-family adapters resize with the registry's pixel limits, so a
512 px image becomes as many image tokens as for the real model (Qwen2-VL: 324, Qwen3-VL:
256; jina-v4 with the registry's 1,024-token cap); the tiny LLaVA-NeXT (E5-V) and CLIP
(BGE-VL) work on 32 px crops, far fewer tokens than the real 336 / 224 px. What is measured
is the adapter's whole path (PIL in, unit vectors out) with a toy network: the
preprocessing and batching overhead the real model pays on top of its network, not the
network. The paper-size network cost is estimated, not measured: 2 x published parameters x
the registry's `image_tokens` (the cap: an upper bound for a 512 px tile) FLOPs an image,
what job sizing uses, divided by an assumed effective GPU throughput
(benchmarks/throughput.py's ASSUMED_DEVICES). After one warm-up batch, the median of
`--repeats` timed batches is reported.

Run: OMP_NUM_THREADS=1 python benchmarks/mllm_embedding.py [--device cpu|cuda] [--batch 4]
     [--repeats 3] [--keys KEY ...]
Writes benchmarks/results/mllm_embedding_<device>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).parent), str(REPO / "tests")]

from record import machine, write_results  # noqa: E402  (benchmarks/ is on sys.path)
from retrieval_embedding import _timed  # noqa: E402
from throughput import ASSUMED_DEVICES  # noqa: E402

# registry key -> (test module, tiny-checkpoint builder, keyword arguments): the builder
# writes a checkpoint into a folder (returning the folder, or (model, folder))
TINY_BUILDERS: dict[str, tuple[str, str, dict]] = {
    "e5-v": ("test_mllm_e5v", "make_e5v_checkpoint", {}),
    # tokens=None: GME's own pixel limits (256 to 1,280 tokens), as the real checkpoint
    "gme-qwen2-vl-2b": ("test_mllm_qwen2_vl", "make_gme_checkpoint", {"tokens": None}),
    "bge-vl-large": ("test_mllm_bge_vl", "make_bge_vl_checkpoint", {}),
    "vlm2vec-v2": ("test_mllm_vlm2vec", "make_vlm2vec_checkpoint", {}),
    "ops-mm-embedding-v1": ("test_mllm_ops_mm", "make_ops_checkpoint", {}),
    "qwen3-vl-embedding-2b": ("test_mllm_qwen3_vl", "make_qwen3_vl_checkpoint", {}),
    # the hub checkpoint's pixel cap is not known here: the registry's 1,024 image tokens
    "jina-embeddings-v4": ("test_mllm_jina_v4", "make_jina_checkpoint",
                           {"max_image_tokens": 1024}),
}
IMAGE_SIZE = 512
CAPTION = "a high-resolution remote sensing image of pitted cones on Mars."


def tiny_checkpoint(key: str, folder: Path) -> Path:
    module, function, kwargs = TINY_BUILDERS[key]
    built = getattr(importlib.import_module(module), function)(folder, **kwargs)
    return built[-1] if isinstance(built, tuple) else built


def paper_estimate(key: str) -> dict:
    """Per-image network FLOPs at the published size, and images/s on the assumed GPUs."""
    from marseval.job_resources import embedder_cost

    gflops = embedder_cost(f"mllm:{key}")["forward_gflops"]
    rates = {}
    for device, spec in ASSUMED_DEVICES.items():
        tflops = spec.get("effective_tflops") or spec["peak_tflops"] * spec["efficiency"]
        rates[device] = tflops * 1e3 / gflops
    return {"paper_gflops_per_image": gflops, "assumed_images_per_s": rates}


def measure(key: str, device: str, batch: int, repeats: int) -> dict:
    import numpy as np
    from PIL import Image

    from marseval.retrieval.mllm.load import load_embedder

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3),
                                           dtype=np.uint8)) for _ in range(batch)]
    with tempfile.TemporaryDirectory() as folder:
        model = load_embedder(f"mllm:{key}", device, source=str(tiny_checkpoint(key,
                                                                                Path(folder))))
        image_s = _timed(lambda: model.embed_images(images), repeats, device)
        text_s = _timed(lambda: model.embed_texts([CAPTION] * batch), repeats, device)
        dim = model.embed_texts([CAPTION]).shape[1]
    return {"key": key, "image_px": IMAGE_SIZE, "batch": batch, "tiny_embedding_dim": int(dim),
            "images_per_s": batch / image_s, "captions_per_s": batch / text_s,
            **paper_estimate(key)}


def main() -> None:
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keys", nargs="*", default=list(TINY_BUILDERS))
    args = parser.parse_args()
    rows = [measure(key, args.device, args.batch, args.repeats) for key in args.keys]
    out = REPO / "benchmarks" / "results" / f"mllm_embedding_{args.device.split(':')[0]}.json"
    write_results(out, {
        "machine": machine(torch=torch.__version__, transformers=transformers.__version__,
                           threads=torch.get_num_threads(), device=args.device),
        "what": "tiny random checkpoints of each adapter (tests' builders), 512 px images; "
                "paper-size rows are estimates from published sizes, not measurements",
        "assumed_devices": ASSUMED_DEVICES, "repeats": args.repeats, "results": rows})
    print("| embedder | tiny: images/s | tiny: captions/s | paper GFLOP/image | "
          "assumed H100 images/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['key']} | {r['images_per_s']:.2f} | {r['captions_per_s']:.1f} | "
              f"{r['paper_gflops_per_image']:.0f} | "
              f"{r['assumed_images_per_s']['h100']:.0f} |")


if __name__ == "__main__":
    main()
