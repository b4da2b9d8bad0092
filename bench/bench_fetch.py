"""Fetch throughput from a local IIIF-style server: what indexing fetches (each image at the
model's size, ``!1024,1024``, plus its small ``info.json``) vs what a crop export fetches on
demand afterwards (the full image, once; a second export fetches nothing).

    python bench/bench_fetch.py [--n 24] [--size 2048x1536] [--max-per-host 4]

The server runs in this process on 127.0.0.1 (tests/image_server.py), so the figures bound
what the fetcher itself costs (HTTP, hashing, atomic cache writes), not a museum's network;
the server resizes every ``!1024,1024`` request on the same CPUs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sst_search.config import FetchConfig  # noqa: E402
from sst_search.sources.fetch import Fetcher, ImageCache  # noqa: E402
from sst_search.synthetic import generate_collection  # noqa: E402
from tests.image_server import ImageServer  # noqa: E402


def timed(label: str, fetcher: Fetcher, work, items: list) -> list:
    """Run ``work`` over ``items`` on 8 threads; print images/s, requests and KB per image."""
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(work, items))
    seconds = time.perf_counter() - started
    print(f"{label:>34}: {len(items) / seconds:6.1f} images/s, {fetcher.downloads:3d} requests with a body, "
          f"{fetcher.downloaded_bytes / len(items) / 1e3:7.0f} KB per image ({len(items)} in {seconds:.2f} s)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--size", default="2048x1536", help="served image size WxH")
    ap.add_argument("--max-per-host", type=int, default=4)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    config = FetchConfig(concurrency=8, max_per_host=args.max_per_host, max_bytes=500_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        coll = generate_collection(Path(tmp) / "coll", species=1, per_species=args.n, seed=0, size=(h, w))
        images = {p.stem: p for p in sorted((coll.root / "images").rglob("*.png"))}
        server = ImageServer(images)
        cache = ImageCache(Path(tmp) / "cache")
        urls = [f"{server.url}/iiif/{n}/full/max/0/default.jpg" for n in images]
        try:
            print(f"{len(images)} images of {w}x{h} on {server.url}, max {args.max_per_host} per host; "
                  f"load average {os.getloadavg()}")
            with Fetcher(cache, config, size=1024) as fetcher:
                originals = timed("index (!1024,1024 + info.json)", fetcher,
                                  lambda u: (fetcher.fetch(u), fetcher.original(u))[1], urls)
            for attempt in ("crops, full size on demand", "crops again (cached)"):
                with Fetcher(cache, config) as fetcher:
                    timed(attempt, fetcher, lambda o: fetcher.get(o.url), originals)
            print(f"load average after: {os.getloadavg()}")
        finally:
            server.close()


if __name__ == "__main__":
    main()
