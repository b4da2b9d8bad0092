"""Fetch throughput from a local IIIF-style server: images/s and bytes per image when the
model's size (``!1024,1024``) is requested vs the full image.

    python bench/bench_fetch.py [--n 24] [--size 2048x1536] [--max-per-host 4]

The server runs in this process on 127.0.0.1 (tests/image_server.py), so the figures bound
what the fetcher itself costs (HTTP, hashing, atomic cache writes), not a museum's network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sst_search.config import FetchConfig  # noqa: E402
from sst_search.sources.fetch import Fetcher, ImageCache  # noqa: E402
from sst_search.synthetic import generate_collection  # noqa: E402
from tests.image_server import ImageServer  # noqa: E402


def run(server: ImageServer, names: list[str], size: int | None, max_per_host: int, cache: Path) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    config = FetchConfig(concurrency=8, max_per_host=max_per_host, max_bytes=500_000_000)
    urls = [f"{server.url}/iiif/{n}/full/max/0/default.jpg" for n in names]
    started = time.perf_counter()
    with Fetcher(ImageCache(cache), config, size) as fetcher, ThreadPoolExecutor(8) as pool:
        records = list(pool.map(fetcher.fetch, urls))
        seconds = time.perf_counter() - started
        return {"images": len(records), "seconds": seconds, "images_per_s": len(records) / seconds,
                "bytes_per_image": fetcher.downloaded_bytes / max(1, fetcher.downloads)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--size", default="2048x1536", help="served image size WxH")
    ap.add_argument("--max-per-host", type=int, default=4)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        coll = generate_collection(Path(tmp) / "coll", species=1, per_species=args.n, seed=0, size=(h, w))
        images = {p.stem: p for p in sorted((coll.root / "images").rglob("*.png"))}
        server = ImageServer(images)
        try:
            print(f"{len(images)} images of {w}x{h} on {server.url}, max {args.max_per_host} per host; "
                  f"load average {os.getloadavg()}")
            for label, size in (("1024 px (!1024,1024)", 1024), ("full size", None)):
                r = run(server, list(images), size, args.max_per_host, Path(tmp) / f"cache-{size}")
                print(f"{label:>22}: {r['images_per_s']:.1f} images/s, {r['bytes_per_image'] / 1e3:.0f} KB per image "
                      f"({r['images']} in {r['seconds']:.2f} s)")
            print(f"load average after: {os.getloadavg()}")
        finally:
            server.close()


if __name__ == "__main__":
    main()
