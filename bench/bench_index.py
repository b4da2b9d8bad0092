"""End-to-end indexing throughput: images/s and the share of each stage, local vs Ray.

Random SAM 2 weights (the cost does not depend on the weight values). Stage seconds are
summed over workers, so with Ray they add up to more than the wall time.

    python bench/bench_index.py [--image-size 512] [--species 3] [--per-species 8] [--embedder color-pattern]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from indexer.job import run_index
from sst_search.config import Config
from sst_search.synthetic import generate_collection


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--species", type=int, default=3)
    ap.add_argument("--per-species", type=int, default=8)
    ap.add_argument("--embedder", default="color-pattern")
    ap.add_argument("--mode", default="pairwise")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_index_"))
    coll = generate_collection(work / "collection", species=args.species, per_species=args.per_species, seed=0)
    n = args.species * args.per_species
    embedding = {"embedder": args.embedder}
    if args.embedder in ("clip", "bioclip"):
        embedding["weights"] = "random"
        if args.embedder == "clip":
            embedding["model_name"] = "ViT-B-32"
    print(f"model sam2.1-hiera-tiny, image_size {args.image_size}, mode {args.mode}, weights: random "
          f"(cost does not depend on weight values), embedder {args.embedder}")
    print(f"collection: {n} synthetic images of 192x256 px; cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}")
    print(f"{'engine':<8}{'wall s':>8}{'images/s':>10}  stage shares (of summed stage time)")
    for engine in ("local", "ray"):
        config = Config.model_validate(
            {
                "segmentation": {"weights": "random", "image_size": args.image_size, "mode": args.mode, "device": "cpu"},
                "embedding": embedding,
                "indexer": {"engine": engine, "num_workers": args.workers, "commit_every": 4},
            }
        )
        started = time.perf_counter()
        summary = run_index(coll.manifest, coll.references, work / f"{engine}.duckdb", config, quiet=True)
        wall = time.perf_counter() - started
        assert summary.counts["indexed"] == n, summary.counts
        stages = {k: summary.timings.get(k, 0.0) for k in ("load", "segment", "embed", "write")}
        total = sum(stages.values()) or 1.0
        shares = "  ".join(f"{k} {v / total:5.1%} ({v:.1f}s)" for k, v in stages.items())
        label = f"{engine}" + (f" x{args.workers}" if engine == "ray" else "")
        print(f"{label:<8}{wall:>8.1f}{n / wall:>10.2f}  {shares}")


if __name__ == "__main__":
    main()
