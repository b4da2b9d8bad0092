"""BioCLIP 2 beside BioCLIP: the real ViT-L/14 architecture (random weights here), its hub
checkpoint refused when its bytes are not what the hub published, and the offline error."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sst_search.builder import create_embedder
from sst_search.embed import EmbedderError


def _hub_cache(root, repo: str, data: bytes, blob_name: str):
    """A Hugging Face cache holding ``data`` as ``repo``'s open_clip_model.safetensors, its blob named ``blob_name``."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True)
    (folder / "blobs" / blob_name).write_bytes(data)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").symlink_to(f"../../blobs/{blob_name}")


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    return tmp_path


def test_bioclip2_offline_without_the_checkpoint_says_what_to_do(hub_cache):
    with pytest.raises(EmbedderError) as info:
        create_embedder("bioclip-2")
    message = str(info.value)
    assert "BioCLIP 2" in message and "huggingface.co/imageomics/bioclip-2" in message
    assert "--embedder-weights PATH" in message


def test_a_cached_checkpoint_whose_bytes_differ_from_the_hubs_digest_is_refused(hub_cache):
    data = b"not the weights" * 100
    published = hashlib.sha256(b"what the hub published").hexdigest()
    _hub_cache(hub_cache, "imageomics/bioclip-2", data, published)
    with pytest.raises(EmbedderError, match=f"sha256 {hashlib.sha256(data).hexdigest()}, expected {published}"):
        create_embedder("bioclip-2")


@pytest.mark.slow
def test_bioclip2_random_weights_builds_vit_l_14_with_768_dim_image_and_text_vectors():
    embedder = create_embedder("bioclip-2", weights="random", device="cpu", image_size=56)
    assert embedder.name == "bioclip-2" and embedder.dim == 768
    fp = embedder.fingerprint
    assert fp["model"] == "ViT-L-14" and fp["weights"] == "random" and fp["pretrained"] == "hf-hub:imageomics/bioclip-2"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(64, 80, 3), dtype=np.uint8)
    label_map = np.zeros((64, 80), np.uint8)
    label_map[10:40, 20:60] = 1
    vector = embedder.embed_traits(image, label_map, [1])[1]
    assert vector.shape == (768,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    text = embedder.embed_text("a butterfly with an orange forewing band")
    assert text.shape == (768,) and np.linalg.norm(text) == pytest.approx(1.0, abs=1e-5)
