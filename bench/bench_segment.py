"""Seconds per query of SST segmentation, split into image encoder and tracking.

Methods, all on the same N queries and one support with K traits:

``recipe``     the published SST recipe: support + queries written as 00000.jpg... into one
               folder, one plain ``SAM2VideoPredictor`` state, one ``propagate_in_video``
               (every query is memory for the later ones; JPEG writing counts, as the recipe
               needs it).
``per-object`` our pairwise mode, one trait at a time through memory attention and the
               mask decoder (what the official predictor does per object).
``batched``    our pairwise mode, all traits of a query as one batch (the default).
``auto``       ``batched`` with ``orientation="auto"``: each query tracked at 0/90/180/270
               degrees (four encoder passes) and the most confident turn kept.
``chain``      our chain mode (only when named in ``--methods``): every query is memory
               for the later ones, as in the recipe, without the JPEG round trip.

Run: ``python bench/bench_segment.py [--image-size 512[,1024]] [--traits 2,8] [--n 16] [--query-batch Q] [--device cuda]``;
``--issue`` runs everything the issue's benchmark asks for in one go: all four methods at
512 px with 2 and 8 traits, per-object vs batched at 512 px with 1 and 4 traits and at
1024 px with 1, 4 and 8 traits (about an hour on an idle 2-core machine).
``--query-batch`` sets how many queries ``batched`` and ``auto`` track per call.

"encoder" is the time (wall and CPU) spent inside SAM 2's ``forward_image`` (timed the same way for every
method); "tracking" is everything else (memory attention, mask decoder, memory encoder,
resizing, label maps, image I/O). Random weights: SAM 2's arithmetic does not depend on the
weight values. Each (method, K) runs in a fresh process so peak RSS is its own; the model
build is excluded. The load average is printed before and after: on a shared machine the
wall-clock figures are only comparable when it is low, CPU seconds are steadier.
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

from sst_search.config import SegmentationConfig

METHODS = ("recipe", "per-object", "batched", "auto")
OPTIONAL_METHODS = ("chain",)
#: Synthetic specimen photos (H, W); SAM 2 resizes every frame to --image-size anyway.
DATA_SIZE = (384, 512)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- workers (one per process) ------------------------------------------------------------
def _data(root: Path, n: int, k: int):
    """The synthetic reference with its mask replaced by K stripes (K traits; what the
    traits look like does not change the cost), and N query images."""
    import numpy as np

    from sst_search.references import Support, Trait, load_group_references

    group = next(p.name for p in (root / "references").iterdir() if p.is_dir())
    ref = load_group_references(root / "references" / group)[0]
    h, w = ref.mask.shape
    mask = np.zeros((h, w), np.uint8)
    cols = np.linspace(w // 8, 7 * w // 8, k + 1).astype(int)
    for t in range(k):
        mask[h // 4 : 3 * h // 4, cols[t] : cols[t + 1]] = t + 1
    support = Support("support", ref.image, mask, {t: Trait(id=t, name=f"t{t}") for t in range(1, k + 1)})
    files = sorted((root / "images" / group).glob("*.png"))
    return support, [(f"q{i:03d}", files[i % len(files)]) for i in range(n)]


class _EncoderTimer:
    """Accumulates the wall and CPU time spent in ``predictor.forward_image``."""

    def __init__(self, predictor):
        import torch

        self.seconds = self.cpu = 0.0
        inner = predictor.forward_image
        sync = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)

        def timed(batch):
            sync()
            t0, c0 = time.perf_counter(), cpu_seconds()
            try:
                return inner(batch)
            finally:
                sync()
                self.seconds += time.perf_counter() - t0
                self.cpu += cpu_seconds() - c0

        predictor.forward_image = timed


def _run_ours(method: str, support, queries, model: str, image_size: int, query_batch: int, device: str) -> tuple[float, dict]:
    from sst_search.builder import build_tracker

    tracker = build_tracker(model, weights="random", image_size=image_size, device=device,
                            batch_traits=method != "per-object")
    timer = _EncoderTimer(tracker.predictor)
    orientation = "auto" if method == "auto" else 0
    mode = "chain" if method == "chain" else "pairwise"
    t0 = time.perf_counter()
    results = list(tracker.segment([support], queries, orientation=orientation, query_batch=query_batch, mode=mode))
    seconds = time.perf_counter() - t0
    if len(results) != len(queries) or any(r.error for r in results):
        raise RuntimeError(f"{method}: {[r.error for r in results if r.error][:3]}")
    return seconds, {"encoder": timer.seconds, "encoder_cpu": timer.cpu}


def _run_recipe(support, queries, model: str, image_size: int, device: str) -> tuple[float, dict]:
    import torch
    from PIL import Image

    from sst_search.images import load_image
    from sst_search.sam2_predictor import build_sam2
    from sst_search.weights import resolve_sam2_weights

    # The same seeded random weights as ours, in SAM 2's own predictor class.
    predictor = build_sam2(model, resolve_sam2_weights(model, "random"), image_size=image_size, device=device,
                           official=True)
    timer = _EncoderTimer(predictor)
    t0 = time.perf_counter()
    n_maps = 0
    with tempfile.TemporaryDirectory(prefix="sst-video-") as video_dir:
        for i, rgb in enumerate([support.image] + [load_image(path) for _, path in queries]):
            Image.fromarray(rgb).save(Path(video_dir) / f"{i:05d}.jpg", quality=95)
        with torch.inference_mode():
            state = predictor.init_state(video_path=video_dir)
            for tid in support.trait_ids:
                predictor.add_new_mask(state, 0, tid, torch.from_numpy(support.mask == tid))
            for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
                if frame_idx:
                    best, idx = logits[:, 0].max(dim=0)
                    torch.where(best > 0, torch.tensor(obj_ids, device=idx.device)[idx], 0).to(torch.uint8).cpu().numpy()
                    n_maps += 1
    if n_maps != len(queries):
        raise RuntimeError(f"recipe: {n_maps} label maps for {len(queries)} queries")
    return time.perf_counter() - t0, {"encoder": timer.seconds, "encoder_cpu": timer.cpu}


def worker(method: str, n: int, k: int, root: Path, model: str, image_size: int, query_batch: int, device: str) -> None:
    import torch

    support, queries = _data(root, n, k)
    c0 = cpu_seconds()
    if method == "recipe":
        seconds, parts = _run_recipe(support, queries, model, image_size, device)
    else:
        seconds, parts = _run_ours(method, support, queries, model, image_size, query_batch, device)
    print(json.dumps({
        "method": method, "n": n, "k": k, "image_size": image_size, "seconds": seconds, **parts,
        "cpu_seconds": cpu_seconds() - c0, "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads(),
    }), flush=True)


# -- driver -------------------------------------------------------------------------------
#: ``--issue``: (image size, traits, methods) runs that answer the issue's benchmark section.
ISSUE_RUNS = (
    (512, (2, 8), METHODS),
    (512, (1, 4), ("per-object", "batched")),
    (1024, (1, 4, 8), ("per-object", "batched")),
)


def run_worker(method: str, n: int, k: int, image_size: int, args, root: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, str(n), str(k), "--data", str(root),
           "--image-size", str(image_size), "--model", args.model, "--query-batch", str(args.query_batch),
           "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {method} K={k} {image_size} px failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _per_query(r: dict | None, part: str, clock: str) -> float | None:
    if r is None:
        return None
    encoder = r["encoder" if clock == "seconds" else "encoder_cpu"]
    return (r[clock] - (encoder if part == "tracking" else 0)) / r["n"]


RATIOS = (
    ("tracking, per-object / batched", "per-object", "batched", "tracking"),
    ("per query, recipe / batched", "recipe", "batched", "all"),
    ("per query, recipe / per-object", "recipe", "per-object", "all"),
    ("per query, auto / batched (cost of auto)", "auto", "batched", "all"),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", default="512", help="comma-separated SAM 2 input sizes (multiples of 32)")
    ap.add_argument("--traits", default="2,8", help="comma-separated numbers of traits K")
    ap.add_argument("--n", type=int, default=16, help="number of queries")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS + OPTIONAL_METHODS)}")
    ap.add_argument("--query-batch", type=int, default=1, help="queries per tracking call for batched and auto")
    ap.add_argument("--issue", action="store_true", help="run every configuration the issue's benchmark asks for")
    ap.add_argument("--model", default=SegmentationConfig.model_fields["model"].default)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--worker", nargs=3, metavar=("METHOD", "N", "K"), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        method, n, k = args.worker
        worker(method, int(n), int(k), args.data, args.model, int(args.image_size), args.query_batch, args.device)
        return 0

    from sst_search.synthetic import generate_collection

    if args.issue:
        runs = ISSUE_RUNS
    else:
        methods = tuple(m for m in args.methods.split(",") if m)
        traits = tuple(int(k) for k in args.traits.split(","))
        runs = tuple((int(size), traits, methods) for size in args.image_size.split(","))
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sst-bench-") as tmp:
        coll = generate_collection(tmp, species=1, per_species=args.n, seed=0, size=DATA_SIZE)
        print(f"model {args.model}, {args.device} ({os.cpu_count()} CPU cores), random weights; N={args.n} distinct synthetic "
              f"queries of {DATA_SIZE[1]}x{DATA_SIZE[0]} px, one support; query batch {args.query_batch}")
        print(f"load average at start: {_load()}")
        for size, traits, methods in runs:
            for k in traits:
                for method in methods:
                    r = run_worker(method, args.n, k, size, args, coll.root)
                    rows.append(r)
                    print(f"  {size} px K={k:<2} {method:>10}: {r['seconds'] / r['n']:6.2f} s/query = encoder "
                          f"{r['encoder'] / r['n']:5.2f} + tracking {(r['seconds'] - r['encoder']) / r['n']:5.2f}  "
                          f"| CPU {r['cpu_seconds'] / r['n']:5.2f} s/query = encoder {r['encoder_cpu'] / r['n']:5.2f} + "
                          f"tracking {(r['cpu_seconds'] - r['encoder_cpu']) / r['n']:5.2f} | peak RSS {r['peak_rss_mb']:.0f} MB  "
                          f"load {_load()}", flush=True)
    print(f"torch threads per worker: {rows[0]['torch_threads']}; load average at end: {_load()}")
    by = {(r["method"], r["image_size"], r["k"]): r for r in rows}
    for size, traits, _ in runs:
        for k in traits:
            for label, a, b, part in RATIOS:
                ratios = [
                    (_per_query(by.get((a, size, k)), part, clock), _per_query(by.get((b, size, k)), part, clock))
                    for clock in ("seconds", "cpu_seconds")
                ]
                if all(x is not None and y for x, y in ratios):
                    print(f"{size} px K={k}: {label}: {ratios[0][0] / ratios[0][1]:.2f}x wall, "
                          f"{ratios[1][0] / ratios[1][1]:.2f}x CPU")
    print(f"total wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
