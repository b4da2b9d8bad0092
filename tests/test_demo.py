"""README's main command, `sst-search demo`, end to end (offline: random weights, colour-pattern)."""

from __future__ import annotations

from typer.testing import CliRunner

from sst_search.cli import app
from sst_search.pattern_map import load_map
from sst_search.store import Store


def test_demo_builds_a_searchable_index_and_scores_it(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--species", "2", "--per-species", "2", "--weights", "random",
              "--image-size", "128", "--embedder", "color-pattern", "--maps", "pca"],
    )  # the smallest demo that still has a query and results in each species (PCA maps: no numba)
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output
    assert "overall mIoU" in result.output
    assert "forewing_band" in result.output.split("overall mIoU")[0]  # the score table names traits
    assert "looks most like SYN-000001's" in result.output  # the query by catalogNumber, not an internal id
    assert "1. SYN-" in result.output
    with Store.open(out / "index.duckdb", read_only=True) as store:  # the published snapshot
        assert store.status()["specimens"] == {"indexed": 4}
        assert store.check_consistency() == []
        maps = {trait: load_map(store, embedder, trait) for embedder, trait in store.index_keys()}
        points = {trait: len(store.population(embedder, trait)) for embedder, trait in store.index_keys()}
    assert "forewing_band" in maps and all(m is not None and m.method == "pca" for m in maps.values())
    assert {trait: len(m) for trait, m in maps.items()} == points  # every vector has its point
    assert f"pattern maps (pca): {', '.join(sorted(maps))}" in result.output
    assert len(list((out / "predictions").rglob("*.png"))) == 4


def test_demo_offline_embedder_hint_is_one_line_and_names_color_pattern(monkeypatch):
    from sst_search.commands import demo as demo_cmd

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with demo_cmd.console.capture() as captured:
        assert demo_cmd._choose_embedder(None, None) == "color-pattern"
    text = captured.get().strip()
    assert len(text.splitlines()) == 1 and "--embedder color-pattern" in text and "--embedder-weights" not in text


def test_an_unreachable_hub_fails_fast_in_one_line(monkeypatch, tmp_path):
    """No retries for most of a minute: one probe of the hub, then the cache or a one-line error."""
    import socket
    import time

    import huggingface_hub.constants
    import pytest

    from sst_search.embed.base import EmbedderError
    from sst_search.weights import resolve_open_clip_weights

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    started = time.monotonic()
    with pytest.raises(EmbedderError) as err:
        resolve_open_clip_weights("bioclip", None, hub_id="imageomics/bioclip/")
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "\n" not in message and f"127.0.0.1:{port} is unreachable" in message and "--embedder color-pattern" in message
