"""Trait embedders: the weight-free colour descriptor and real open_clip towers with random weights."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from sst_search.builder import create_embedder, embedder_fingerprint
from sst_search.config import EmbeddingConfig
from sst_search.embed import (
    EmbedderError,
    EmbedItem,
    NoTextTowerError,
    list_embedders,
    masked_square_crop,
)


def _specimen(colors: dict[int, tuple[int, int, int]], size=(96, 128), seed=0):
    """Noisy grey background with one rectangle per trait, painted in the given colour."""
    rng = np.random.default_rng(seed)
    image = rng.integers(100, 140, size=(*size, 3), dtype=np.uint8)
    label_map = np.zeros(size, np.uint8)
    boxes = {1: (8, 8, 40, 60), 2: (50, 20, 90, 50), 3: (10, 70, 30, 120)}
    for tid, color in colors.items():
        y0, x0, y1, x1 = boxes[tid]
        image[y0:y1, x0:x1] = color
        label_map[y0:y1, x0:x1] = tid
    return image, label_map


@pytest.fixture(scope="module")
def color():
    return create_embedder("color-pattern")


@pytest.fixture(scope="module")
def clip():
    return create_embedder("clip", weights="random", model_name="ViT-B-32", device="cpu")


def test_registry_lists_the_three_embedders_and_rejects_unknown_names():
    assert list_embedders() == ["bioclip", "bioclip-2", "clip", "color-pattern"]
    with pytest.raises(EmbedderError, match="unknown embedder 'dino'"):
        create_embedder("dino")


def test_color_pattern_vectors_are_unit_deterministic_and_omit_absent_traits(color):
    image, label_map = _specimen({1: (200, 30, 30), 2: (30, 30, 200)})
    first = color.embed_traits(image, label_map, [1, 2, 3])
    second = create_embedder("color-pattern").embed_traits(image, label_map, [1, 2, 3])
    assert sorted(first) == [1, 2]
    for tid, vec in first.items():
        assert vec.dtype == np.float32 and vec.shape == (color.dim,)
        assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_array_equal(vec, second[tid])
    assert float(first[1] @ first[2]) < 0.9


def test_color_pattern_separates_colours_and_matches_identical_regions(color):
    red_a, lm = _specimen({1: (200, 30, 30)}, seed=1)
    red_b, _ = _specimen({1: (200, 30, 30)}, seed=2)  # different background noise only
    orange, _ = _specimen({1: (220, 120, 30)}, seed=1)
    blue, _ = _specimen({1: (30, 30, 200)}, seed=1)
    v = {k: color.embed_traits(img, lm, [1])[1] for k, img in
         {"red_a": red_a, "red_b": red_b, "orange": orange, "blue": blue}.items()}
    np.testing.assert_allclose(v["red_a"], v["red_b"], atol=1e-6)
    assert float(v["red_a"] @ v["orange"]) > float(v["red_a"] @ v["blue"])
    assert float(v["red_a"] @ v["blue"]) < 0.9


def test_color_pattern_layout_tells_patterns_with_the_same_colours_apart(color):
    left, lm = _specimen({1: (0, 0, 0)})
    right = left.copy()
    y0, x0, y1, x1 = 8, 8, 40, 60
    left[y0:y1, x0 : (x0 + x1) // 2] = (250, 250, 250)
    right[y0:y1, (x0 + x1) // 2 : x1] = (250, 250, 250)
    a, b = color.embed_traits(left, lm, [1])[1], color.embed_traits(right, lm, [1])[1]
    hist = slice(0, 256)
    np.testing.assert_allclose(a[hist], b[hist], atol=1e-6)  # same colours ...
    assert float(a @ b) < 0.95  # ... different layout


def test_color_pattern_rejects_a_mismatched_label_map(color):
    image, _ = _specimen({})
    with pytest.raises(ValueError, match="does not match image"):
        color.embed_traits(image, np.zeros((10, 10), np.uint8), [1])


def test_color_pattern_has_no_text_tower(color):
    with pytest.raises(NoTextTowerError, match="color-pattern"):
        color.embed_text("orange forewing band")


def test_masked_square_crop_fills_everything_outside_the_trait():
    image, lm = _specimen({2: (10, 200, 10)})
    crop = masked_square_crop(image, lm == 2, fill=(1, 2, 3), margin=0.1)
    assert crop.shape[0] == crop.shape[1] == 40 + 2 * 4  # box height 40 (+margin), padded square
    green = np.all(crop == (10, 200, 10), axis=-1)
    assert green.sum() == 40 * 30
    assert np.all(crop[~green] == (1, 2, 3))


def test_clip_random_weights_gives_unit_vectors_of_the_model_dim(clip):
    assert clip.dim == 512 and clip.fingerprint["weights"] == "random"
    image, lm = _specimen({1: (200, 30, 30), 2: (30, 30, 200)})
    traits = clip.embed_traits(image, lm, [1, 2, 3])
    assert sorted(traits) == [1, 2]
    whole = clip.embed_image(image)
    for vec in [*traits.values(), whole]:
        assert vec.shape == (512,) and vec.dtype == np.float32
        assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(traits[1], traits[2])


def test_a_fingerprint_is_computed_without_building_a_model_and_equals_the_built_embedders(clip, monkeypatch):
    import open_clip

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_model)
    monkeypatch.setattr(open_clip, "create_model", no_model)
    config = EmbeddingConfig(embedder="clip", model_name="ViT-B-32", weights="random")
    assert embedder_fingerprint(config) == clip.fingerprint
    assert embedder_fingerprint(EmbeddingConfig(embedder="color-pattern")) == create_embedder("color-pattern").fingerprint


def test_a_built_model_that_disagrees_with_its_fingerprint_is_refused(clip):
    from sst_search.embed.clip import check_fingerprint

    check_fingerprint(clip.fingerprint, clip.model, clip.preprocess)
    with pytest.raises(EmbedderError, match="fingerprint says"):
        check_fingerprint({**clip.fingerprint, "image_size": [56, 56]}, clip.model, clip.preprocess)


def test_clip_batch_matches_single_specimen_calls(clip):
    a = _specimen({1: (200, 30, 30), 2: (30, 30, 200)}, seed=3)
    b = _specimen({2: (30, 200, 30), 3: (250, 250, 0)}, seed=4)
    batch = clip.embed_batch([EmbedItem(*a, [1, 2, 3]), EmbedItem(*b, [1, 2, 3])])
    assert sorted(batch[0].traits) == [1, 2] and sorted(batch[1].traits) == [2, 3]
    single = clip.embed_traits(*b, [1, 2, 3])
    for tid in (2, 3):
        np.testing.assert_allclose(batch[1].traits[tid], single[tid], atol=1e-4)
    np.testing.assert_allclose(batch[0].specimen, clip.embed_image(a[0]), atol=1e-4)


def test_clip_text_tower_embeds_strings_and_lists(clip):
    one = clip.embed_text("a butterfly with an orange forewing band")
    many = clip.embed_text(["orange band", "blue spot"])
    assert one.shape == (512,) and many.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(many[0], many[1])


@pytest.mark.slow  # builds ViT-S/32 twice and hashes its 90 MB checkpoint; SAM 2's checkpoint loading is tested quickly
def test_clip_loads_an_explicit_checkpoint_and_records_its_sha256(tmp_path):
    source = create_embedder("clip", weights="random", model_name="ViT-S-32", pretrained=None, device="cpu")
    ckpt = tmp_path / "vit-s-32.pt"
    torch.save(source.model.state_dict(), ckpt)
    loaded = create_embedder("clip", weights=str(ckpt), model_name="ViT-S-32", pretrained=None, device="cpu")
    import hashlib

    assert loaded.fingerprint["weights"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    image, _ = _specimen({1: (200, 30, 30)})
    np.testing.assert_allclose(loaded.embed_image(image), source.embed_image(image), atol=1e-5)


def test_missing_checkpoint_path_is_named(tmp_path):
    with pytest.raises(EmbedderError, match="nope.pt: .*does not exist"):
        create_embedder("clip", weights=str(tmp_path / "nope.pt"), model_name="ViT-B-32")


def test_bioclip_without_weights_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever the machine has
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(EmbedderError) as info:
        create_embedder("bioclip")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "BioCLIP" in message and "imageomics/bioclip" in message
    assert "--embedder-weights PATH" in message and "random" in message


def test_bioclip_random_weights_builds_vit_b_16_and_says_so():
    embedder = create_embedder("bioclip", weights="random", device="cpu")
    assert embedder.name == "bioclip" and embedder.dim == 512
    assert embedder.fingerprint["model"] == "ViT-B-16" and embedder.fingerprint["weights"] == "random"
    assert embedder_fingerprint(EmbeddingConfig(embedder="bioclip", weights="random")) == embedder.fingerprint
    image, lm = _specimen({1: (200, 30, 30)})
    assert np.linalg.norm(embedder.embed_traits(image, lm, [1])[1]) == pytest.approx(1.0, abs=1e-5)
    assert embedder.embed_text("orange band").shape == (512,)
