"""Trait maps at collection scale: build time and peak memory, and the Map page in Chromium.

Build: ``fit_coordinates`` (what ``sst-search map`` and an index run call) on ``--n``
synthetic trait vectors (dim 512, clustered like species, L2-normalised), each (n, method)
in its own process so its peak RSS is its own; printed with the RSS of the vectors alone.

Browser (``--browser``): a store of the largest ``--n`` built through ``Store.write_columns``
(bench_query's builder), its map fitted and published, ``sst-search ui`` started on it and
the Map page opened in headless Chromium: the time from a fresh page load until the scatter
reports every point drawn (``data-drawn``, set once a WebGL frame of all of them is
finished), then a square lasso around ``--lasso`` points (the ones nearest the view's
centre) and the time from releasing the mouse until the page names the selection and its
gallery images have loaded.

    python bench/bench_map.py --n 20000 --browser        # a quick check
    python bench/bench_map.py --n 100000 --methods "" --browser --store /tmp/bench-map   # the page only, store kept
    nice python bench/bench_map.py --n 100000,1000000 --browser   # the figures in bench/README.md

Wall times are only comparable on an otherwise idle machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_query import EMBEDDER, TRAIT, build_store, clustered_vectors, repeated  # noqa: E402
from machine_load import load  # noqa: E402

from sst_search.config import IndexConfig  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CLUSTERS = 200
#: Gallery cards the Map page draws at most (ui/views/pattern.py).
GALLERY_MAX = 48


def _fit(n: int, dim: int, method: str, queue) -> None:
    from sst_search.pattern_map import fit_coordinates

    vectors, _ = clustered_vectors(n, dim, CLUSTERS, 0.6, seed=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    xy, fitted, _ = fit_coordinates(vectors, method, seed=0)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((seconds, before / 2**20, peak / 2**20, int(fitted.sum())))


def bench_build(ns: list[int], dim: int, methods: list[str]) -> None:
    print(f"map build, dim {dim}, {CLUSTERS} clusters ({load()})")
    print("n\tmethod\tfitted\tseconds\tpeak RSS GiB\t(RSS before the fit, vectors included)")
    ctx = mp.get_context("spawn")
    for n in ns:
        for method in methods:
            queue = ctx.Queue()
            child = ctx.Process(target=_fit, args=(n, dim, method, queue))
            child.start()
            seconds, before, peak, fitted = queue.get()
            child.join()
            print(f"{n}\t{method}\t{fitted}\t{seconds:.1f}\t{peak:.2f}\t({before:.2f})", flush=True)
    print(f"({load()})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCATTER = "iframe[title$='map_scatter']"


def lasso_box(db: Path, frame, n: int) -> dict:
    """A square on the page around about ``n`` points nearest the middle of the scatter's view,
    worked out from the stored map and the view the scatter reports (``data-view``)."""
    from sst_search.pattern_map import load_map
    from sst_search.store import Store
    from sst_search.store.snapshots import resolve_snapshot

    with Store.open(resolve_snapshot(db), read_only=True) as store:
        xy = load_map(store, EMBEDDER, TRAIT).xy
    area = frame.locator("#overlay").bounding_box()
    x0, x1, y0, y1 = json.loads(frame.locator("#gl").get_attribute("data-view"))
    px = (xy[:, 0] - x0) / (x1 - x0) * area["width"]
    py = (y1 - xy[:, 1]) / (y1 - y0) * area["height"]
    cx, cy = area["width"] / 2, area["height"] / 2
    far = np.maximum(np.abs(px - cx), np.abs(py - cy))  # a square holds the points nearest in this distance
    half = float(np.partition(far, min(n, len(far)) - 1)[min(n, len(far)) - 1]) + 0.5
    return {"x0": area["x"] + cx - half, "x1": area["x"] + cx + half, "y0": area["y"] + cy - half, "y1": area["y"] + cy + half}


def build_browser_store(db: Path, n: int, dim: int, method: str) -> None:
    """A published store of ``n`` specimens with a ``method`` map of the bench trait."""
    from sst_search.pattern_map import build_map
    from sst_search.store import Store
    from sst_search.store.snapshots import publish_snapshot

    vectors, labels = clustered_vectors(n, dim, CLUSTERS, 0.6, seed=1)
    ids = np.arange(1, n + 1, dtype=np.int64)
    groups = pa.array([f"species-{c % 40:02d}" for c in range(CLUSTERS)]).take(pa.array(labels))
    t = time.perf_counter()
    build_store(db, IndexConfig(), ids, vectors, groups, repeated("Finca La Esperanza", n), repeated("2001-01-01", n))
    del vectors
    with Store.open(db) as store:
        build_map(store, EMBEDDER, TRAIT, method)
    publish_snapshot(db)
    print(f"store + map + publish {time.perf_counter() - t:.0f} s ({load()})")


def bench_browser(n: int, dim: int, method: str, lasso: int, store_dir: Path | None = None,
                  timeout_ms: int = 600_000) -> None:
    """Time the Map page on a store of ``n`` points: built in a temporary folder, or once in
    ``store_dir`` and reused by later runs (the build dominates a run's wall time)."""
    print(f"\nbrowser, {n} points ({method})")
    with tempfile.TemporaryDirectory(prefix="bench-map-") as work:
        db = (store_dir or Path(work)) / f"bench-{n}-{method}.duckdb"
        if store_dir is None or not db.exists():
            db.parent.mkdir(parents=True, exist_ok=True)
            build_browser_store(db, n, dim, method)
        time_page(db, n, lasso, timeout_ms)


def time_page(db: Path, n: int, lasso: int, timeout_ms: int) -> None:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "sst_search.cli", "ui", "--db", str(db), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(timeout_ms)
            for _ in range(120):
                try:
                    page.goto(f"http://127.0.0.1:{port}/?page=map")
                    break
                except Exception:  # the server is still starting
                    time.sleep(1)
            frame = page.frame_locator(SCATTER)
            drawn = frame.locator(f"body[data-drawn='{n}']")  # set once a frame of every point is finished
            drawn.wait_for()  # the first session read the map and packed its points for every later one
            page.reload()  # time a fresh session on a warm server: what a second curator sees
            started = time.perf_counter()
            drawn.wait_for()
            print(f"map page shows {n} points: {time.perf_counter() - started:.2f} s", flush=True)
            box = lasso_box(db, frame, lasso)
            frame.get_by_role("button", name="Lasso", exact=True).click()  # the map opens in pan mode
            page.mouse.move(box["x0"], box["y0"])
            page.mouse.down()
            for x, y in ((box["x1"], box["y0"]), (box["x1"], box["y1"]), (box["x0"], box["y1"]), (box["x0"], box["y0"])):
                page.mouse.move(x, y, steps=5)
            started = time.perf_counter()
            page.mouse.up()
            named = page.get_by_text(re.compile(r"Selection: \d+ specimens"))
            named.wait_for()
            selected = int(named.inner_text().split()[1])
            page.wait_for_function(  # every gallery card drawn, and any image in them loaded
                "n => document.querySelectorAll(\"[class*='st-key-map-sel-']:not([class*='open'])\").length >= n"
                " && [...document.querySelectorAll(\"[class*='st-key-map-sel-'] img\")].every(i => i.complete)",
                arg=min(selected, GALLERY_MAX), polling=50)
            print(f"lasso of {selected} points answered (selection named, gallery loaded): "
                  f"{time.perf_counter() - started:.2f} s ({load()})", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100000,1000000", help="comma-separated collection sizes")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--methods", default="umap,pca", help='map build methods to time ("" for none)')
    parser.add_argument("--browser", action="store_true", help="also time the Map page in Chromium (largest --n)")
    parser.add_argument("--browser-method", default="pca", help="map method of the browser store (the page cost does not depend on it)")
    parser.add_argument("--lasso", type=int, default=10_000, help="points to lasso in the browser")
    parser.add_argument("--store", type=Path, help="keep the browser's store in this folder and reuse it on later runs")
    args = parser.parse_args()
    ns = [int(x) for x in args.n.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    if methods:
        bench_build(ns, args.dim, methods)
    if args.browser:
        bench_browser(max(ns), args.dim, args.browser_method, args.lasso, args.store)


if __name__ == "__main__":
    main()
