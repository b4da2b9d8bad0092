"""Hostile image servers on 127.0.0.1: one that trickles a byte at a time, an IIIF service that
answers every path with its own info.json, and one whose info.json lies about the size. Each
costs one item a recorded failure, within a bounded time, and the rest of the batch is fetched."""

from __future__ import annotations

import time

import pytest

from sst_search.config import FetchConfig
from sst_search.sources import Item
from sst_search.sources.fetch import ImageCache, fetch_items
from sst_search.synthetic import generate_collection
from tests.image_server import ImageServer

CONFIG = FetchConfig(concurrency=4, max_per_host=4, timeout=1.0, retries=2, backoff=0.05, max_bytes=10**6)
SIZE = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    coll = generate_collection(tmp_path_factory.mktemp("served"), species=1, per_species=2, seed=3)
    srv = ImageServer({p.stem: p for p in sorted((coll.root / "images").rglob("*.png"))})
    yield srv
    srv.close()


def _fetch(server, tmp_path, *paths: str, config: FetchConfig = CONFIG) -> tuple[list[Item], float]:
    items = [Item(f"{server.url}{p}", None, "g", source=f"{server.url}{p}") for p in paths]
    started = time.monotonic()
    out = fetch_items(items, ImageCache(tmp_path / "cache"), config, size=SIZE)
    return out, time.monotonic() - started


def test_a_trickling_server_costs_one_item_at_most_timeout_times_retries(server, tmp_path):
    config = CONFIG.model_copy(update={"timeout": 0.5})
    server.trickle_seconds, server.trickle_bytes = 0.05, 100  # 5 s for the whole body; never a 0.5 s gap
    good = next(iter(server.images))
    (trickled, fetched), took = _fetch(server, tmp_path, "/fail/trickle", f"/img/{good}", config=config)
    assert trickled.path is None and "timed out after 2 attempts" in trickled.error, trickled.error
    assert fetched.path is not None and fetched.error is None
    # two attempts of 0.5 s, a 0.05 s backoff, and some slack for a loaded machine
    assert took < config.timeout * config.retries + 1.5, took


def test_an_iiif_service_answering_everything_with_its_info_json_fails_one_item(server, tmp_path):
    good = next(iter(server.images))
    (looped, fetched), _ = _fetch(server, tmp_path, "/loop/x", f"/iiif/{good}/info.json")
    assert looped.path is None and "gave no image" in looped.error and "JSON instead of an image" in looped.error
    assert fetched.path is not None and fetched.error is None
    assert sum(n for p, n in server.requests.items() if p.startswith("/loop/")) <= 2  # one hop, no recursion


def test_an_info_json_declaring_an_absurd_size_is_not_believed(server, tmp_path):
    liar, honest = list(server.images)[:2]
    server.info_overrides[liar] = {"width": 10**9}
    try:
        (lied, told), _ = _fetch(server, tmp_path, f"/iiif/{liar}/info.json", f"/iiif/{honest}/info.json")
    finally:
        server.info_overrides.clear()
    assert lied.original is None and "declares 1000000000x" in lied.error and "not a downscale" in lied.error
    assert told.error is None and told.original is not None and told.original.size is not None
