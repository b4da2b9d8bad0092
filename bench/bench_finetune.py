"""Cost of OC-CCL fine-tuning on CPU: seconds per step and peak RSS, LoRA vs full.

Run: ``python bench/bench_finetune.py [--image-sizes 256,512] [--steps 6] [--lora-rank 4]``

The model has random weights: the arithmetic SAM 2 performs (and its gradients) does not
depend on the weight values, so time and memory are those of the real model. A step is
one query: image encoder (no grad) on the augmented query, support -> query ->
support round trip for every trait, backward, AdamW. Every configuration runs in a fresh
process because peak RSS is a process-wide high-water mark; the parent never imports torch.
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

KINDS = ("lora", "full")
#: Synthetic specimen photos (H, W); SAM 2 resizes every frame to the input size anyway.
DATA_SIZE = (384, 512)
WARMUP_STEPS = 2  # first steps pay one-off allocator and kernel set-up costs


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def worker(kind: str, image_size: int, steps: int, rank: int, root: Path, model: str) -> None:
    import torch

    from sst_search.builder import build_tracker
    from sst_search.finetune import FinetuneConfig, finetune
    from sst_search.images import load_image
    from sst_search.references import load_group_references

    group = next(p.name for p in (root / "references").iterdir() if p.is_dir())
    support = load_group_references(root / "references" / group)[0]
    queries = [load_image(f) for f in sorted((root / "images" / group).glob("*.png"))]
    tracker = build_tracker(model, weights="random", image_size=image_size, device="cpu")
    rss_model = peak_rss_mb()
    stamps: list[float] = []
    config = FinetuneConfig(kind=kind, steps=WARMUP_STEPS + steps, lora_rank=rank, seed=0)
    result = finetune(tracker, support, queries, config, on_step=lambda *_: stamps.append(time.perf_counter()))
    timed = stamps[WARMUP_STEPS - 1 :]
    out = {
        "kind": kind,
        "image_size": image_size,
        "traits": len(support.trait_ids),
        "trainable": result.trainable_parameters,
        "seconds_per_step": (timed[-1] - timed[0]) / (len(timed) - 1),
        "peak_rss_mb": peak_rss_mb(),
        "model_rss_mb": rss_model,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out), flush=True)


def run_worker(kind: str, size: int, args, root: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, str(size), "--data", str(root), "--steps", str(args.steps),
           "--lora-rank", str(args.lora_rank), "--model", args.model]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} {size}px failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-sizes", default="256,512", help="comma-separated SAM 2 input sizes")
    ap.add_argument("--steps", type=int, default=6, help=f"timed steps (after {WARMUP_STEPS} warm-up steps)")
    ap.add_argument("--lora-rank", type=int, default=4)
    ap.add_argument("--model", default=SegmentationConfig.model_fields["model"].default)
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.steps, args.lora_rank, args.data, args.model)
        return 0

    sizes = [int(s) for s in args.image_sizes.split(",")]
    from sst_search.synthetic import generate_collection

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sst-bench-ft-") as tmp:
        coll = generate_collection(tmp, species=1, per_species=4, seed=0, size=DATA_SIZE)
        print(f"model: {args.model}, device: cpu, CPU count: {os.cpu_count()}")
        print("weights: random (cost does not depend on weight values)")
        print(f"data: synthetic species {coll.groups[0]!r}, 1 support + 4 queries of {DATA_SIZE[0]}x{DATA_SIZE[1]} px; "
              f"augmentation on; {args.steps} timed steps after {WARMUP_STEPS} warm-up steps")  # fmt: skip
        rows = []
        for size in sizes:
            for kind in KINDS:
                r = run_worker(kind, size, args, coll.root)
                rows.append(r)
                label = f"lora r={args.lora_rank}" if kind == "lora" else "full"
                print(f"  {size:>5} px  {label:<10} {r['trainable']:>10,} trainable  {r['traits']} traits  "
                      f"{r['seconds_per_step']:6.2f} s/step  peak RSS {r['peak_rss_mb']:6.0f} MB "
                      f"(model alone {r['model_rss_mb']:.0f} MB)", flush=True)  # fmt: skip
    print(f"torch threads (workers): {rows[0]['torch_threads']}; total wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
