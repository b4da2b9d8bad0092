"""Images by URL against a real HTTP server on 127.0.0.1: cache, IIIF sizes, failures, resume."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
from PIL import Image

from sst_search.sources import Item
from sst_search.config import FetchConfig
from sst_search.sources.fetch import ImageCache, fetch_items, iiif_request_url
from sst_search.synthetic import generate_collection
from tests.image_server import ImageServer

FAST = FetchConfig(concurrency=4, max_per_host=2, timeout=1.0, retries=2, backoff=0.05, max_bytes=4000)
SIZE = 64  # the model's input size


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    coll = generate_collection(tmp_path_factory.mktemp("served"), species=1, per_species=4, seed=2)
    images = {p.stem: p for p in sorted((coll.root / "images").rglob("*.png"))}
    srv = ImageServer(images)
    yield srv
    srv.close()


def _items(urls):
    return [Item(u, None, "g", source=u) for u in urls]


def test_iiif_urls_are_requested_at_the_model_size():
    base = "https://iiif.example.org/iiif/2/abc"
    assert iiif_request_url(f"{base}/full/full/0/default.jpg", 1024) == f"{base}/full/!1024,1024/0/default.jpg"
    assert iiif_request_url(f"{base}/full/max/0/color.png", 512) == f"{base}/full/!512,512/0/color.png"
    assert iiif_request_url(f"{base}/info.json", 1024) == f"{base}/full/!1024,1024/0/default.jpg"
    assert iiif_request_url("https://example.org/photos/abc.jpg", 1024) == "https://example.org/photos/abc.jpg"


def test_fetch_caches_iiif_at_size_records_each_failure_and_never_refetches(server, tmp_path):
    names = list(server.images)
    limits = FAST.model_copy(update={"max_bytes": 10**6})
    urls = [f"{server.url}/img/{names[0]}", f"{server.url}/iiif/{names[1]}/full/full/0/default.jpg",
            f"{server.url}/iiif/{names[2]}/info.json", f"{server.url}/iiif/{names[3]}", f"{server.url}/fail/flaky"]
    failing = {"/fail/404": "HTTP 404", "/fail/500": "HTTP 500", "/fail/slow": "timed out", "/fail/truncated": "truncated",
               "/fail/html": "text/html instead of an image"}
    cache = ImageCache(tmp_path / "cache")
    server.flaky_left, server.slow_seconds = 1, 3.0
    out = fetch_items(_items(urls + [server.url + p for p in failing]), cache, limits, SIZE)
    ok, bad = out[: len(urls)], out[len(urls):]
    assert all(i.error is None and i.path.is_file() and i.fetched_at for i in ok), [i.error for i in ok]
    for item, reason in zip(bad, failing.values()):
        assert item.path is None and reason in item.error and item.source in item.error, item.error
    # IIIF: the image, info.json and the bare service id were all fetched at 64 px, not full size.
    for item in ok[1:4]:
        assert max(Image.open(item.path).size) == 64
    assert server.requests["/fail/flaky"] == 2  # one 503, retried
    assert server.requests["/fail/500"] == limits.retries and server.requests["/fail/404"] == 1
    huge = fetch_items(_items([f"{server.url}/fail/huge"]), cache, FAST, SIZE)[0]
    assert "exceeds the limit" in huge.error

    before = sum(server.requests.values())
    again = fetch_items(_items(urls), cache, limits, SIZE)
    assert [i.path for i in again] == [i.path for i in ok] and sum(server.requests.values()) == before
    # Asking whether they changed: the server answers 304 to the ETag, nothing is downloaded.
    revalidate = limits.model_copy(update={"revalidate": True})
    assert fetch_items(_items(urls[:1]), cache, revalidate, SIZE)[0].path == ok[0].path
    assert server.requests[f"/img/{names[0]}"] == 2


def _fetch_forever(urls, cache_root):
    fetch_items(_items(urls), ImageCache(cache_root), FAST.model_copy(update={"timeout": 60.0, "max_bytes": 10**6}), SIZE)


def test_killed_fetch_resumes_without_fetching_anything_twice(server, tmp_path):
    names = list(server.images)
    urls = [f"{server.url}/img/{n}" for n in names] + [f"{server.url}/fail/slow"]
    cache = tmp_path / "cache"
    server.slow_seconds = 30.0
    base = dict(server.requests)
    proc = multiprocessing.get_context("fork").Process(target=_fetch_forever, args=(urls, cache))
    proc.start()
    deadline = time.monotonic() + 30
    while len(list((cache / "urls").glob("*.json")) if (cache / "urls").is_dir() else []) < len(names):
        assert time.monotonic() < deadline, "fetching did not progress"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-request for the slow one
    proc.join()
    served = dict(server.requests)
    server.slow_seconds = 0.0
    out = fetch_items(_items(urls), ImageCache(cache), FAST.model_copy(update={"max_bytes": 10**6}), SIZE)
    assert all(i.error is None and i.path.is_file() for i in out), [i.error for i in out]
    for n in names:  # each image was downloaded once, before the kill
        path = f"/img/{n}"
        assert server.requests[path] == served[path] == base.get(path, 0) + 1
    assert server.requests["/fail/slow"] == served["/fail/slow"] + 1
