"""Images by URL against a real HTTP server on 127.0.0.1: cache, IIIF sizes, failures, and a
whole index run killed while fetching, then resumed."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from indexer.job import run_index
from sst_search.config import FetchConfig
from sst_search.sources import Item
from sst_search.sources.fetch import ImageCache, fetch_items, iiif_request_url
from sst_search.store import Store, specimen_id
from sst_search.synthetic import generate_collection
from tests.fixtures import random_weights_config, random_weights_settings
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


def test_killed_index_run_loses_nothing_and_fetches_nothing_twice(tmp_path):
    """SIGKILL a whole ``sst-search index`` while it fetches, then run it again."""
    coll = generate_collection(tmp_path / "coll", species=1, per_species=3, seed=8)
    group = coll.groups[0]
    images = sorted((coll.root / "images").rglob("*.png"))
    server = ImageServer({p.stem: p for p in images})
    server.slow_seconds = 60.0
    try:
        urls = [f"{server.url}/img/{p.stem}" for p in images] + [f"{server.url}/fail/slow", f"{server.url}/gone.png"]
        manifest = tmp_path / "manifest.csv"
        manifest.write_text("path,group\n" + "".join(f"{u},{group}\n" for u in urls))
        # Provided masks (named like the cached files: the sha256 of the served bytes) stand in for SAM 2.
        masks = tmp_path / "masks"
        masks.mkdir()
        for p in images:
            shutil.copy(coll.ground_truth / group / p.name, masks / f"{hashlib.sha256(p.read_bytes()).hexdigest()}.png")
        config_file = tmp_path / "config.yaml"
        config_file.write_text(yaml.safe_dump(random_weights_settings()))
        db = tmp_path / "index.duckdb"
        cli = [sys.executable, "-c", "import sys; from sst_search.cli import app; sys.argv[0] = 'sst-search'; app()"]
        proc = subprocess.Popen([*cli, "index", str(manifest), "--references", str(coll.references), "--db", str(db),
                                 "--config", str(config_file), "--masks", str(masks), "--quiet"],
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        records = db.with_name("index.duckdb.images") / "urls"
        deadline = time.monotonic() + 60
        while len(list(records.glob("*.json")) if records.is_dir() else []) < len(images) \
                or not server.requests["/fail/slow"]:
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not reach the slow image"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-request for the slow image
        proc.wait()

        quick = random_weights_config(fetch={"timeout": 0.5, "retries": 1})
        summary = run_index(manifest, coll.references, db, quick, masks=masks)
        assert summary.counts["indexed"] == len(images) and summary.counts["failed"] == 2, summary.failures
        assert all(server.requests[f"/img/{p.stem}"] == 1 for p in images)  # nothing fetched twice
        with Store.open(db, read_only=True) as store:
            rows = {u: store.get_specimen(specimen_id(u)) for u in urls}
        assert all(rows[u]["status"] == "indexed" for u in urls[: len(images)])  # nothing lost
        assert rows[urls[-2]]["status"] == "failed" and "timed out" in rows[urls[-2]]["error"]
        assert rows[urls[-1]]["status"] == "failed" and "HTTP 404" in rows[urls[-1]]["error"]
    finally:
        server.slow_seconds = 0.0
        server.close()
