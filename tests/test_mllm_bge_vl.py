"""BGE-VL (marseval/retrieval/mllm/bge_vl.py) on a tiny random CLIP checkpoint, offline.

The reference steps are written out here by hand, as BGE-VL's published remote code
(VectorSpaceLab/MegaPairs modeling_MMRet_CLIP.py: data_process, encode_image, encode_text) and
the MarsRetrieval reference (models/bgevl.py, models/image_encoder/bgevl_image_encoder.py) run
them, on the same weights.
"""

from __future__ import annotations

import dataclasses
import io
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from marseval.errors import MarsevalError
from marseval.retrieval.mllm import bge_vl
from marseval.retrieval.mllm.load import load_embedder
from marseval.retrieval.mllm.registry import check_embedders, get_embedder

MAX_POSITIONS = 16


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.delenv("MARSEVAL_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _tokenizer():
    """A CLIP BPE tokenizer built offline: single letters (plus word-final forms), no merges."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ",.-"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_POSITIONS)


def make_bge_vl_checkpoint(folder: Path):
    """A tiny CLIPModel saved into `folder` as a hub repo is: weights, (fast-type) image
    processor, tokenizer. Returns the model and the folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = _tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        config = CLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, vocab_size=len(tokenizer),
                             max_position_embeddings=MAX_POSITIONS, bos_token_id=0,
                             eos_token_id=1, pad_token_id=1),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, image_size=32, patch_size=8),
            projection_dim=16)
        model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_bge_vl_checkpoint(tmp_path_factory.mktemp("bge_vl"))


@pytest.fixture(scope="module")
def embedder(checkpoint):
    _, folder = checkpoint
    return load_embedder("mllm:bge-vl-large", "cpu", source=str(folder))


def images(n: int, size: int = 48, seed: int = 0) -> list[Image.Image]:
    """Smooth colour gradients plus noise: JPEG changes them, but not beyond recognition."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, size)[None, :, None]
    out = []
    for _ in range(n):
        base = rng.uniform(0, 255, 3) * grid + rng.uniform(0, 255, 3) * grid.transpose(1, 0, 2)
        noisy = base / 2 + rng.normal(0, 20, (size, size, 3))
        out.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return out


def published_processor(folder):
    """CLIPProcessor as transformers 4.x (the reference's 4.57.3) loaded it: the slow (PIL)
    image processor."""
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    return CLIPProcessor.from_pretrained(folder,
                                         image_processor=CLIPImageProcessorPil.from_pretrained(
                                             folder))


def published_image_embeddings(model, folder, pil_images, jpeg=True) -> np.ndarray:
    """bgevl_image_encoder.encode_image + MMRet CLIPModel.encode(images=...), by hand."""
    processed = []
    for img in pil_images:
        if jpeg:
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=95)
            buf.seek(0)
            processed.append(buf)
        else:
            processed.append(img)
    opened = [Image.open(im).convert("RGB") if jpeg else im.convert("RGB") for im in processed]
    pixels = published_processor(folder)(images=opened, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pooled = model.vision_model(pixel_values=pixels)[1]
        emb = F.normalize(model.visual_projection(pooled), dim=-1)  # encode_image
    return F.normalize(emb, p=2, dim=-1).numpy()  # the reference's second normalisation


def published_text_embeddings(model, folder, texts) -> np.ndarray:
    """BGEVLComponents.encode_text + MMRet CLIPModel.encode_text, by hand."""
    max_len = model.config.text_config.max_position_embeddings
    tokens = published_processor(folder)(text=texts, return_tensors="pt", padding=True,
                                          truncation=True, max_length=max_len)
    with torch.no_grad():
        pooled = model.text_model(input_ids=tokens["input_ids"],
                                  attention_mask=tokens["attention_mask"])[1]
        emb = F.normalize(model.text_projection(pooled), dim=-1)
    return F.normalize(emb, p=2, dim=-1).numpy()


TEXTS = ["pitted cones", "a crater on mars with layered ejecta and dunes", "dark slope streaks"]


def test_registry_entry_is_adapted_without_remote_code():
    spec = get_embedder("mllm:bge-vl-large")
    assert (spec.family, spec.remote_code, spec.cuda_dtype) == ("bge_vl", False, "float16")
    assert spec.extra["jpeg_quality"] == 95
    assert check_embedders(["mllm:bge-vl-large"], {}) == []


def test_images_match_the_published_steps_with_the_jpeg_round_trip(checkpoint, embedder):
    model, folder = checkpoint
    pics = images(4)
    got = embedder.embed_images(pics)
    assert got.dtype == np.float32 and got.shape == (4, 16)
    np.testing.assert_allclose(got, published_image_embeddings(model, folder, pics), atol=1e-5)
    # the JPEG q95 round trip is applied: the decoded JPEG, embedded directly, is what it gets
    decoded = [Image.open(io.BytesIO(_jpeg(p))).convert("RGB") for p in pics]
    np.testing.assert_allclose(got, published_image_embeddings(model, folder, decoded,
                                                               jpeg=False), atol=1e-5)
    raw = published_image_embeddings(model, folder, pics, jpeg=False)
    assert not np.allclose(got, raw, atol=1e-4)  # without it, other embeddings


def _jpeg(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_the_registry_jpeg_quality_is_used(checkpoint):
    model, folder = checkpoint
    spec = dataclasses.replace(get_embedder("bge-vl-large"),
                               extra={**get_embedder("bge-vl-large").extra, "jpeg_quality": 40})
    low = bge_vl.build("mllm:bge-vl-large", spec, "cpu", str(folder), None)
    pics = images(2, seed=3)
    decoded = [Image.open(io.BytesIO(_jpeg(p, 40))).convert("RGB") for p in pics]
    np.testing.assert_allclose(low.embed_images(pics),
                               published_image_embeddings(model, folder, decoded, jpeg=False),
                               atol=1e-5)


def test_the_pil_image_processor_is_used(checkpoint):
    from transformers import CLIPImageProcessorPil

    _, folder = checkpoint
    assert isinstance(bge_vl.load_processor(str(folder), None).image_processor,
                      CLIPImageProcessorPil)


def test_texts_match_the_published_steps(checkpoint, embedder):
    model, folder = checkpoint
    got = embedder.embed_texts(TEXTS)
    assert got.shape == (3, 16)
    np.testing.assert_allclose(got, published_text_embeddings(model, folder, TEXTS), atol=1e-5)
    assert not np.allclose(got[0], got[1])


def test_texts_truncate_at_the_text_configs_max_positions(checkpoint, embedder):
    model, _ = checkpoint
    assert bge_vl.text_max_length(model.config) == MAX_POSITIONS
    # start + 14 letters + end = 16 positions: what follows the 14th letter is cut off
    head = "abcdefghijklmn"
    got = embedder.embed_texts([head + "opqrstuvwxyz", head + "zzzz zzzz zzzz", head])
    np.testing.assert_allclose(got[0], got[1], atol=1e-6)
    assert not np.allclose(got[0], got[2], atol=1e-4)  # the end token sits elsewhere untruncated


def test_embeddings_are_unit_and_batches_give_what_one_by_one_gives(checkpoint):
    _, folder = checkpoint
    spec = dataclasses.replace(get_embedder("bge-vl-large"), batch_size=2)
    model = bge_vl.build("mllm:bge-vl-large", spec, "cpu", str(folder), None)
    pics = images(5, seed=1)
    batched = model.embed_images(pics)
    single = np.concatenate([model.embed_images([p]) for p in pics])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    texts = TEXTS + ["x", "layered deposits in a crater"]
    batched_text = model.embed_texts(texts)
    single_text = np.concatenate([model.embed_texts([t]) for t in texts])
    np.testing.assert_allclose(batched_text, single_text, atol=1e-5)
    for emb in (batched, batched_text):
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_a_checkpoint_missing_clip_weights_is_refused(tmp_path, checkpoint):
    from transformers import CLIPTextModel

    model, _ = checkpoint
    CLIPTextModel(model.config.text_config).save_pretrained(tmp_path)
    with pytest.raises(MarsevalError, match="unloaded"):
        bge_vl.load_model("mllm:bge-vl-large", str(tmp_path), None, torch.float32)
