"""Checkpoint resolution: explicit path, env var, cache, verified atomic download, offline errors."""

from __future__ import annotations

import hashlib

import pytest

from sst_search import weights as w


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(w.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(w.CHECKPOINT_ENV, raising=False)
    return tmp_path / "cache"


def _blob(tmp_path, name="ckpt.pt", data=b"checkpoint-bytes"):
    p = tmp_path / name
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest()


def test_random_is_explicit(cache):
    r = w.resolve_sam2_weights("sam2.1-hiera-tiny", "random")
    assert r.is_random and r.path is None and r.sha256 == "random"


def test_unknown_model_lists_choices():
    with pytest.raises(w.WeightsError, match="sam2.1-hiera-large"):
        w.get_model_spec("sam3-giant")


def test_order_explicit_then_env_then_cache(cache, tmp_path, monkeypatch):
    explicit, h1 = _blob(tmp_path, "a.pt", b"a")
    env, h2 = _blob(tmp_path, "b.pt", b"b")
    cache.mkdir()
    cached, h3 = _blob(cache, "sam2.1_hiera_tiny.pt", b"c")
    monkeypatch.setenv(w.CHECKPOINT_ENV, str(env))
    assert w.resolve_sam2_weights("sam2.1-hiera-tiny", explicit).sha256 == h1
    assert w.resolve_sam2_weights("sam2.1-hiera-tiny").sha256 == h2
    monkeypatch.delenv(w.CHECKPOINT_ENV)
    assert w.resolve_sam2_weights("sam2.1-hiera-tiny").sha256 == h3


def test_missing_explicit_path_is_named(cache, tmp_path):
    with pytest.raises(w.WeightsError, match="nope.pt.*does not exist"):
        w.resolve_sam2_weights("sam2.1-hiera-tiny", tmp_path / "nope.pt")


def test_offline_error_names_file_url_and_destination(cache):
    with pytest.raises(w.WeightsError) as err:
        w.resolve_sam2_weights("sam2.1-hiera-small", allow_download=False)
    msg = str(err.value)
    spec = w.SAM2_MODELS["sam2.1-hiera-small"]
    assert spec.checkpoint in msg and spec.url in msg and str(cache / spec.checkpoint) in msg


def test_download_is_verified_atomic_and_pinned(cache, tmp_path, monkeypatch):
    src, digest = _blob(tmp_path, "remote.pt", b"x" * 5000)
    spec = w.SAM2_MODELS["sam2.1-hiera-tiny"]
    monkeypatch.setitem(w.SAM2_MODELS, spec.name, w.Sam2ModelSpec(spec.name, spec.config, spec.checkpoint, src.as_uri(), digest))
    r = w.resolve_sam2_weights(spec.name, allow_download=True, quiet=True)
    assert r.sha256 == digest and r.path == cache / spec.checkpoint
    assert (cache / (spec.checkpoint + ".sha256")).read_text().strip() == digest
    assert not list(cache.glob("*.part"))


def test_download_with_wrong_checksum_leaves_nothing(cache, tmp_path, monkeypatch):
    src, _ = _blob(tmp_path, "remote.pt", b"tampered")
    spec = w.SAM2_MODELS["sam2.1-hiera-tiny"]
    monkeypatch.setitem(w.SAM2_MODELS, spec.name, w.Sam2ModelSpec(spec.name, spec.config, spec.checkpoint, src.as_uri(), "0" * 64))
    with pytest.raises(w.WeightsError, match="expected 0000"):
        w.resolve_sam2_weights(spec.name, allow_download=True, quiet=True)
    assert list(cache.iterdir()) == []


def test_corrupted_cached_file_fails_against_its_pin(cache, tmp_path, monkeypatch):
    src, digest = _blob(tmp_path, "remote.pt", b"good-bytes")
    spec = w.SAM2_MODELS["sam2.1-hiera-tiny"]
    monkeypatch.setitem(w.SAM2_MODELS, spec.name, w.Sam2ModelSpec(spec.name, spec.config, spec.checkpoint, src.as_uri(), None))
    w.resolve_sam2_weights(spec.name, allow_download=True, quiet=True)
    (cache / spec.checkpoint).write_bytes(b"bit-rot")
    with pytest.raises(w.WeightsError, match="checksum mismatch"):
        w.resolve_sam2_weights(spec.name)


def test_unreachable_url_says_where_to_put_the_file(cache, monkeypatch, tmp_path):
    spec = w.SAM2_MODELS["sam2.1-hiera-tiny"]
    bad = (tmp_path / "not-there.pt").as_uri()
    monkeypatch.setitem(w.SAM2_MODELS, spec.name, w.Sam2ModelSpec(spec.name, spec.config, spec.checkpoint, bad, None))
    with pytest.raises(w.WeightsError, match="put it at"):
        w.resolve_sam2_weights(spec.name, allow_download=True, quiet=True)
