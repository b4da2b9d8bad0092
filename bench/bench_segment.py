"""Cost of segmenting N queries: ``pairwise`` (cached supports), ``chain``, and the
published SST recipe (all frames in one folder, one plain SAM 2 video state, one
propagation).

Run: ``python bench/bench_segment.py [--image-size 512] [--sizes 4,16,64] [--model sam2.1-hiera-tiny]``

The model has random weights: the arithmetic SAM 2 performs does not depend on the
weight values, so time and memory are those of the real model. Every (method, N) runs in
a fresh process because peak RSS is a process-wide high-water mark; the parent only
generates data and never imports torch, so it cannot raise a worker's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("pairwise", "chain", "baseline")
#: Synthetic specimen photos (H, W); SAM 2 resizes every frame to --image-size anyway.
DATA_SIZE = (384, 512)
SPEEDUP_TARGET = 2.0  # pairwise vs baseline, per query, at N=16
GROWTH_TARGET = 0.15  # pairwise peak RSS from the smallest to the largest N


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def cpu_seconds() -> float:
    """User + system time of this process: unlike wall time it barely moves when other
    work shares the CPU, so it shows whether a wall-time difference is real."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- workers (one per process) ------------------------------------------------------------
def _data(root: Path, n: int):
    from sst_search.references import load_group_references

    group = next(p.name for p in (root / "references").iterdir() if p.is_dir())
    supports = load_group_references(root / "references" / group)[:1]
    files = sorted((root / "images" / group).glob("*.png"))
    queries = [(f"q{i:03d}", files[i % len(files)]) for i in range(n)]
    return supports, queries


def _run_tracker(method: str, n: int, root: Path, model: str, image_size: int) -> dict:
    from sst_search.builder import build_tracker

    supports, queries = _data(root, n)
    t0 = time.perf_counter()
    tracker = build_tracker(model, weights="random", image_size=image_size, device="cpu")
    build_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), cpu_seconds()
    results = list(tracker.segment(supports, queries, mode=method, batch_size=4))
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    errors = [r.error for r in results if r.error]
    if len(results) != n or errors:
        raise RuntimeError(f"{method}: {len(results)} results for {n} queries, errors: {errors[:3]}")
    return {"build_s": build_s, "seconds": seconds, "cpu_seconds": cpu}


def _run_baseline(n: int, root: Path, model: str, image_size: int) -> dict:
    """The published SST recipe: support + queries as 00000.jpg... in one folder, one
    plain ``SAM2VideoPredictor`` state over all of them, one forward propagation."""
    import numpy as np
    import torch
    from PIL import Image
    from sam2.build_sam import build_sam2_video_predictor

    from sst_search.images import load_image
    from sst_search.weights import get_model_spec

    supports, queries = _data(root, n)
    support = supports[0]
    t0 = time.perf_counter()
    torch.manual_seed(0)
    predictor = build_sam2_video_predictor(
        get_model_spec(model).config,
        ckpt_path=None,
        device="cpu",
        hydra_overrides_extra=[f"++model.image_size={image_size}"],
    )
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        # Without the compiled extension SAM 2 skips hole filling anyway (after a warning).
        predictor.fill_hole_area = 0
    build_s = time.perf_counter() - t0

    t0, c0 = time.perf_counter(), cpu_seconds()
    label_maps = []
    with tempfile.TemporaryDirectory(prefix="sst-video-") as video_dir:
        frames = [support.image] + [load_image(path) for _, path in queries]
        for i, rgb in enumerate(frames):
            Image.fromarray(rgb).save(Path(video_dir) / f"{i:05d}.jpg", quality=95)
        del frames
        with torch.inference_mode():
            state = predictor.init_state(video_path=video_dir)
            for tid in support.trait_ids:
                predictor.add_new_mask(state, 0, tid, torch.from_numpy(support.mask == tid))
            for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
                if frame_idx == 0:
                    continue
                best, idx = logits[:, 0].max(dim=0)
                lut = torch.tensor(obj_ids, dtype=torch.uint8)
                label_maps.append(torch.where(best > 0, lut[idx], torch.zeros_like(lut[idx])).numpy())
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if len(label_maps) != n or label_maps[0].dtype != np.uint8:
        raise RuntimeError(f"baseline: {len(label_maps)} label maps for {n} queries")
    return {"build_s": build_s, "seconds": seconds, "cpu_seconds": cpu}


def worker(method: str, n: int, root: Path, model: str, image_size: int) -> None:
    if method == "baseline":
        out = _run_baseline(n, root, model, image_size)
    else:
        out = _run_tracker(method, n, root, model, image_size)
    import torch

    out.update(
        method=method,
        n=n,
        seconds_per_query=out["seconds"] / n,
        cpu_seconds_per_query=out["cpu_seconds"] / n,
        peak_rss_mb=peak_rss_mb(),
        torch_threads=torch.get_num_threads(),
    )
    print(json.dumps(out), flush=True)


# -- driver -------------------------------------------------------------------------------
def run_worker(method: str, n: int, args, root: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, str(n), "--data", str(root),
           "--image-size", str(args.image_size), "--model", args.model]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {method} N={n} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", type=int, default=384, help="SAM 2 input size (multiple of 32)")
    ap.add_argument("--sizes", default="4,16,64", help="comma-separated numbers of queries")
    ap.add_argument("--model", default="sam2.1-hiera-tiny")
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.data, args.model, args.image_size)
        return 0

    sizes = sorted({int(s) for s in args.sizes.split(",")})
    from sst_search.synthetic import generate_collection

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sst-bench-") as tmp:
        coll = generate_collection(tmp, species=1, per_species=max(sizes), seed=0, size=DATA_SIZE)
        print(f"model: {args.model}, SAM 2 input {args.image_size}x{args.image_size} px, device: cpu")
        print("weights: random (cost does not depend on weight values)")
        print(f"data: synthetic species {coll.groups[0]!r}, {max(sizes)} distinct query images of "
              f"{DATA_SIZE[0]}x{DATA_SIZE[1]} px (HxW, PNG); the species' one reference is the support")
        print(f"CPU count: {os.cpu_count()}; load average at start: {_load()}; "
              f"parent peak RSS before workers: {peak_rss_mb():.0f} MB")
        rows = []
        for n in sizes:
            for method in METHODS:
                r = run_worker(method, n, args, coll.root)
                rows.append(r)
                print(f"  {method:>8}  N={n:<3}  {r['seconds']:7.1f} s  {r['seconds_per_query']:6.2f} s/query  "
                      f"({r['cpu_seconds_per_query']:6.2f} CPU s/query)  peak RSS {r['peak_rss_mb']:7.0f} MB",
                      flush=True)
    print(f"torch threads (workers): {rows[0]['torch_threads']}")
    build = {r["method"]: r["build_s"] for r in rows if r["n"] == sizes[0]}
    print(f"model build (excluded from timings): tracker {build['pairwise']:.1f} s, "
          f"plain SAM 2 predictor {build['baseline']:.1f} s")
    print(f"load average at end: {_load()} (wall times are only comparable on an otherwise idle CPU)")
    report(rows, sizes)
    print(f"total wall time: {time.perf_counter() - started:.0f} s")
    return 0


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def report(rows: list[dict], sizes: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    by = {(r["method"], r["n"]): r for r in rows}
    table = Table(title="wall seconds per query (CPU seconds per query) / peak RSS (MB)")
    table.add_column("method")
    for n in sizes:
        table.add_column(f"N={n} s/query", justify="right")
        table.add_column(f"N={n} RSS MB", justify="right")
    for m in METHODS:
        cells = []
        for n in sizes:
            r = by[m, n]
            cells += [f"{r['seconds_per_query']:.2f} ({r['cpu_seconds_per_query']:.2f})", f"{r['peak_rss_mb']:.0f}"]
        table.add_row(m, *cells)
    Console(width=120).print(table)

    if 16 in sizes:
        ratio = by["baseline", 16]["seconds_per_query"] / by["pairwise", 16]["seconds_per_query"]
        verdict = "PASS" if ratio >= SPEEDUP_TARGET else "FAIL"
        print(f"target 1: pairwise >= {SPEEDUP_TARGET:.0f}x faster per query than baseline at N=16: "
              f"{ratio:.2f}x -> {verdict}")
        cpu_ratio = by["baseline", 16]["cpu_seconds_per_query"] / by["pairwise", 16]["cpu_seconds_per_query"]
        print(f"  (same ratio on CPU time, for reference: {cpu_ratio:.2f}x)")
    lo, hi = sizes[0], sizes[-1]
    growth = by["pairwise", hi]["peak_rss_mb"] / by["pairwise", lo]["peak_rss_mb"] - 1.0
    verdict = "PASS" if growth < GROWTH_TARGET else "FAIL"
    print(f"target 2: pairwise peak RSS grows < {GROWTH_TARGET:.0%} from N={lo} to N={hi}: "
          f"{growth:+.1%} -> {verdict}")


if __name__ == "__main__":
    sys.exit(main())
