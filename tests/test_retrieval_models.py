"""Retrieval embedding models: tiny-clip, open_clip local-dir weights, transformers VL and
vision-only models (built tiny, offline), and the errors of unresolvable names."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from marseval.retrieval import models as rm
from marseval.retrieval.models import ModelError, load_model

OFFLINE_VARS = ("MARSEVAL_OFFLINE", "HF_HUB_OFFLINE")


@pytest.fixture(scope="module")
def offline():
    """Nothing may download: the hub is offline for every model a test builds or loads."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MARSEVAL_OFFLINE", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield mp


@pytest.fixture(autouse=True)
def _offline_env(offline, monkeypatch):
    monkeypatch.delenv("MARSEVAL_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def rgb_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            for _ in range(n)]


def unit(x: torch.Tensor) -> np.ndarray:
    return F.normalize(x.float(), dim=-1).numpy()


# --------------------------------------------------------------------------- tiny-clip


@pytest.fixture(scope="module")
def tiny(offline) -> rm.EmbeddingModel:
    return load_model("tiny-clip")


def test_tiny_clip_embeddings_are_unit_float32_dim_64(tiny):
    images = rgb_images(3) + [Image.new("L", (40, 24), 128)]  # any size, greyscale too
    emb = tiny.embed_images(images)
    assert emb.dtype == np.float32 and emb.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert tiny.dim == 64 and tiny.has_text
    assert not np.allclose(emb[0], emb[1])  # distinct images, distinct embeddings


def test_tiny_clip_is_seeded_and_leaves_the_callers_rng_alone(tiny):
    images = rgb_images(3, seed=5)
    first = tiny.embed_images(images)
    torch.manual_seed(12345)  # the caller's RNG in some other state than at the first load
    before = torch.random.get_rng_state().clone()
    again = load_model("tiny-clip")
    after = torch.random.get_rng_state()
    assert torch.equal(before, after)
    np.testing.assert_array_equal(again.embed_images(images), first)  # bitwise


def test_tiny_clip_embeds_texts(tiny):
    emb = tiny.embed_texts(["pitted cones", "a crater", "pitted cones"])
    assert emb.dtype == np.float32 and emb.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[0], emb[2])
    assert not np.allclose(emb[0], emb[1])


# --------------------------------------------------------------------------- open_clip local-dir

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)  # not open_clip's defaults: must come from the file


@pytest.fixture(scope="module")
def local_dir_clip(tmp_path_factory, offline):
    import open_clip
    from safetensors.torch import save_file

    arch = rm._tiny_clip_arch()
    torch.manual_seed(987)  # not tiny-clip's seed
    model = open_clip.create_model(arch).eval()
    folder = tmp_path_factory.mktemp("open_clip_local")
    cfg = json.loads((Path(rm.__file__).parents[1] / "registry" / "open_clip"
                      / f"{rm.TINY_CLIP_ARCH}.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return model, folder


def test_open_clip_local_dir_loads_the_saved_weights_and_preprocessing(local_dir_clip, tiny):
    model, folder = local_dir_clip
    loaded = load_model(f"open_clip:local-dir:{folder}")
    images = rgb_images(4, seed=2)  # already 32 x 32: resize and crop are identities
    pixels = torch.stack([torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1)
                          for im in images])
    pixels = (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        expected = unit(model.encode_image(pixels))
    got = loaded.embed_images(images)
    assert loaded.has_text and got.shape == (4, 64)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, tiny.embed_images(images), atol=1e-3)  # not the seeded init
    assert loaded.embed_texts(["dunes"]).shape == (1, 64)


def _checkpoint(tmp_path: Path, image_size: int) -> tuple[object, Path]:
    """A tiny open_clip ViT trained (here: initialised) at `image_size`, saved as a file."""
    import open_clip

    torch.manual_seed(321)
    model = open_clip.create_model(rm._tiny_clip_arch(), force_image_size=image_size).eval()
    path = tmp_path / f"ckpt{image_size}.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return model, path


def test_a_checkpoint_loads_at_the_image_size_it_was_trained_at(tmp_path: Path) -> None:
    """MarScope: a ViT-L-14 fine-tuned at 512 px (the reference's force_image_size=512) in
    an architecture whose default is 224; here a tiny ViT saved at 48 px, default 32."""
    import open_clip

    model, path = _checkpoint(tmp_path, 48)
    arch = rm._tiny_clip_arch()
    # what open_clip does by itself: builds 32 px and interpolates the embeddings silently
    plain = open_clip.create_model(arch, pretrained=str(path), weights_only=True)
    assert plain.visual.positional_embedding.shape[0] == (32 // 8) ** 2 + 1
    loaded = load_model(f"open_clip:{arch}@{path}")
    images = rgb_images(3, size=48, seed=4)  # 48 px: resize and crop are identities
    assert tuple(loaded.preprocess(images).shape[-2:]) == (48, 48)
    with torch.no_grad():
        expected = unit(model.encode_image(loaded.preprocess(images)))
    np.testing.assert_allclose(loaded.embed_images(images), expected, atol=1e-5)


def test_a_checkpoint_whose_positions_fit_no_square_grid_is_refused(tmp_path: Path) -> None:
    _, path = _checkpoint(tmp_path, 48)
    state = torch.load(path, weights_only=True)
    state["state_dict"]["visual.positional_embedding"] = torch.zeros(12, 64)  # 11 patches
    torch.save(state, path)
    with pytest.raises(ModelError, match="square patch grid"):
        load_model(f"open_clip:{rm._tiny_clip_arch()}@{path}")


# --------------------------------------------------------------------------- transformers


def tiny_clip_tokenizer():
    """A CLIP BPE tokenizer built offline: single letters (plus word-final forms), no merges."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ",.-"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory, offline):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(3)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, vocab_size=len(tokenizer),
                         max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32},
                                   crop_size={"height": 32, "width": 32})
    folder = tmp_path_factory.mktemp("hf_clip")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, processor, tokenizer, folder


def test_transformers_vision_language_model(hf_clip):
    model, processor, tokenizer, folder = hf_clip
    loaded = load_model(f"transformers:{folder}")
    assert loaded.has_text and loaded.dim == 16
    images = rgb_images(3, size=48, seed=4)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        expected = unit(rm._pooled(model.get_image_features(pixel_values=pixels)))
    got = loaded.embed_images(images)
    assert got.dtype == np.float32 and got.shape == (3, 16)
    np.testing.assert_allclose(got, expected, atol=1e-5)

    texts = ["pitted cones", "a crater on mars"]
    tokens = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected_text = unit(rm._pooled(model.get_text_features(**tokens)))
    got_text = loaded.embed_texts(texts)
    np.testing.assert_allclose(got_text, expected_text, atol=1e-5)
    assert not np.allclose(got_text[0], got_text[1])


@pytest.fixture(scope="module")
def hf_dino(tmp_path_factory, offline):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(4)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, image_size=32, patch_size=8)
    model = Dinov2Model(config).eval()
    processor = BitImageProcessor(size={"shortest_edge": 32}, do_center_crop=True,
                                  crop_size={"height": 32, "width": 32})
    folder = tmp_path_factory.mktemp("hf_dino")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    images = rgb_images(3, size=40, seed=6)
    with torch.no_grad():
        tokens = model(pixel_values=processor(images=images, return_tensors="pt")
                       ["pixel_values"]).last_hidden_state
    return folder, images, tokens


def test_transformers_vision_only_model_pools_cls_by_default(hf_dino):
    folder, images, tokens = hf_dino
    loaded = load_model(f"transformers:{folder}")
    assert not loaded.has_text and loaded.dim == 32
    got = loaded.embed_images(images)
    np.testing.assert_allclose(got, unit(tokens[:, 0]), atol=1e-5)
    assert not np.allclose(got, unit(tokens.mean(dim=1)), atol=1e-3)
    with pytest.raises(ModelError, match="vision-only"):
        loaded.embed_texts(["pitted cones"])


def test_transformers_vision_only_model_mean_pooling(hf_dino):
    folder, images, tokens = hf_dino
    for name in (f"transformers:{folder}@mean", f"transformers:{folder}@cls"):
        loaded = load_model(name)
        expected = tokens.mean(dim=1) if name.endswith("@mean") else tokens[:, 0]
        np.testing.assert_allclose(loaded.embed_images(images), unit(expected), atol=1e-5)


# --------------------------------------------------------------------------- errors


def test_unknown_prefix_lists_the_accepted_forms():
    with pytest.raises(ModelError) as err:
        load_model("timm:vit_small")
    message = str(err.value)
    assert "'timm:vit_small'" in message
    for form in ("'tiny-clip'", "open_clip:<architecture>", "open_clip:hf-hub:",
                 "transformers:<repo>[@cls|@mean]"):
        assert form in message


def test_unknown_open_clip_architecture_is_named():
    with pytest.raises(ModelError, match="no architecture 'ViT-Nope-99'"):
        load_model("open_clip:ViT-Nope-99@laion")


def test_missing_transformers_folder_offline_names_the_model(tmp_path):
    name = f"transformers:{tmp_path / 'no_such_model'}"
    with pytest.raises(ModelError) as err:
        load_model(name)
    assert repr(name) in str(err.value)
    assert "HF_HUB_OFFLINE is set: only cached weights load" in str(err.value)


def test_missing_hub_repo_offline_names_the_model():
    for name in ("transformers:marseval-tests/no-such-model",
                 "open_clip:hf-hub:marseval-tests/no-such-model"):
        with pytest.raises(ModelError) as err:
            load_model(name)
        assert repr(name) in str(err.value)
        assert "only cached weights load" in str(err.value)


def test_bad_pooling_is_refused(hf_dino):
    folder, _, _ = hf_dino
    with pytest.raises(ModelError, match=r"pooling 'max' is not one of \('cls', 'mean'\)"):
        load_model(f"transformers:{folder}@max")


def test_models_load_at_the_references_revision_and_dtype():
    aimv2 = "transformers:apple/aimv2-large-patch14-224-lit"
    # models/aimv2_vl.py: this commit, float16 weights on a GPU; float32 on the CPU
    assert rm.model_settings(aimv2, "cuda") == (
        "c2cd59a786c4c06f39d199c50d08cc2eab9f8605", torch.float16)
    assert rm.model_settings(aimv2, "cpu") == (
        "c2cd59a786c4c06f39d199c50d08cc2eab9f8605", torch.float32)
    assert rm.model_settings("transformers:apple/aimv2-large-patch14-448", "cuda:1")[0] == (
        "cefb13f21003bdadba65bfbee956c82b976cd23d")
    # open_clip's "amp" in the reference is float32 weights without autocast
    assert rm.model_settings("open_clip:ViT-L-14-quickgelu@dfn2b", "cuda") == (
        None, torch.float32)
    assert rm.model_settings("someone-elses", "cuda") == (None, torch.float32)


def test_a_half_precision_model_gets_half_precision_pixels(hf_clip, monkeypatch):
    model, processor, _, folder = hf_clip
    name = f"transformers:{folder}"
    monkeypatch.setattr(rm, "model_settings", lambda n, d: (None, torch.float16))
    loaded = load_model(name)
    images = rgb_images(2, size=48, seed=5)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        expected = unit(rm._pooled(model.get_image_features(pixel_values=pixels)))
    got = loaded.embed_images(images)
    assert got.dtype == np.float32  # embeddings stay float32 whatever the weights
    np.testing.assert_allclose(got, expected, atol=2e-2)  # float16 rounding, not garbage
    assert not np.allclose(got, expected, atol=1e-7)  # it did run in float16


def test_batches_are_halved_on_gpu_out_of_memory(caplog):
    seen = []

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        seen.append(len(pixels))
        if len(pixels) > 2:  # a GPU that holds two images at a time
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return pixels.flatten(1)[:, :4] + 1

    def preprocess(images):
        return torch.stack([torch.from_numpy(np.asarray(im, np.float32)).permute(2, 0, 1)
                            for im in images])

    model = rm.EmbeddingModel("oom-probe", preprocess, encode, None, "cpu")
    images = rgb_images(7, size=8, seed=6)
    with caplog.at_level("WARNING"):
        got = model.embed_images(images)
    expected = np.concatenate([model.embed_images([im]) for im in images])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # by hand: 7 fails -> pieces of 3 fail -> pieces of 1; later calls start at 1
    assert seen[:4] == [7, 3, 1, 1] and model.max_batch == 1
    assert "out of GPU memory on a batch of 7; going on with batches of 3" in caplog.text
    single = rm.EmbeddingModel("oom-probe", preprocess,
                               lambda p: (_ for _ in ()).throw(torch.OutOfMemoryError("x")),
                               None, "cpu")
    with pytest.raises(torch.OutOfMemoryError):  # one item that does not fit: no way around
        single.embed_images(images[:1])
