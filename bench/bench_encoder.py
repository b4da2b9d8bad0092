"""A/B of ways to run SAM 2's image encoder: seconds per frame and how far the outputs move.

The image encoder (Hiera through ``forward_image``) dominates the cost of segmenting a
query. Each variant below is something SAM 2 or PyTorch offers without changing weights:

``default``         what :func:`sst_search.sam2_predictor.encode_images` does: one frame per
                    call under ``torch.inference_mode``.
``no-grad``         ``torch.no_grad`` instead of ``inference_mode``.
``batch-N``         N frames per encoder call (``segmentation.batch_size``), time per frame.
``channels-last``   encoder convolutions and the input in channels-last memory format
                    (``segmentation.channels_last``).
``compile``         ``torch.compile(image_encoder.forward, dynamic=False)`` (inductor,
                    default mode; on CPU it builds C++ kernels with gcc).
``compile-sam2``    SAM 2's own ``compile_image_encoder`` flag
                    (``segmentation.compile_encoder``): the same with ``mode="max-autotune",
                    fullgraph=True`` (``--sam2-compile``; its autotuning takes long on CPU).
``bf16``            bf16 autocast, SAM 2's precision on CUDA, here on the CPU.

Per-frame times interleave the variants (default, A, B, ..., default, A, B, ...) for
``--reps`` rounds on the same frames and report medians, wall and CPU, and each variant's
ratio to ``default`` within a round (median and range over rounds); the first call of
each variant (for ``compile`` the compilation) is timed apart and excluded. Outputs are
compared with ``default``: the encoder features (max abs diff over every level), then the
low-res mask logits of the frames tracked from one support with K traits in a pairwise
session (max abs diff) and whether the label maps are identical. Random weights (the cost
does not depend on them; the differences are those of random-weight features).

Run: ``PYTHONPATH=. python bench/bench_encoder.py [--image-size 512[,1024]] [--frames 4]
[--reps 5] [--variants default,no-grad,...] [--sam2-compile]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
from machine_load import load

from sst_search.config import SegmentationConfig

VARIANTS = ("default", "no-grad", "batch-4", "channels-last", "compile", "bf16")
#: Traits of the tracked comparison (stripes over the synthetic specimen).
K = 2
#: Logit margin below which a pixel's decision is a float tie (as in the equivalence tests).
TIE = 1e-5


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_encoder(name: str, predictor, build: Callable) -> tuple[Callable, int]:
    """``(encode(batch) -> backbone dict, frames per call)`` for variant ``name``. The product's
    own options get a predictor built with them (``build(**options)``, same seeded weights);
    the others that change modules work on a copy, so variants never change one another."""
    import torch

    per_call = int(name.split("-")[1]) if name.startswith("batch-") else 1
    grad = torch.no_grad if name == "no-grad" else torch.inference_mode
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16" else nullcontext()
    model = predictor
    if name == "channels-last":  # segmentation.channels_last
        model = build(channels_last=True)
    elif name == "compile-sam2":  # segmentation.compile_encoder
        model = build(compile_encoder=True)
    elif name == "compile":
        model = copy.deepcopy(predictor)
        model.image_encoder.forward = torch.compile(model.image_encoder.forward, dynamic=False)
    prepare = lambda x: x.contiguous(memory_format=model.encoder_memory_format)  # noqa: E731

    def encode(batch: torch.Tensor) -> dict:
        with grad(), cast:
            out = model.forward_image(prepare(batch))
        return {k: [t.float() for t in v] if isinstance(v, list) else v.float() for k, v in out.items()}

    return encode, per_call


def encode_frames(encode: Callable, per_call: int, batch) -> list:
    """EncodedFrames of ``batch`` (N, 3, S, S), ``per_call`` frames per encoder call."""
    from sst_search.sam2_predictor import EncodedFrame

    frames = []
    for i in range(0, len(batch), per_call):
        part = batch[i : i + per_call]
        out = encode(part)
        for j in range(len(part)):
            backbone = {k: [t[j : j + 1] for t in v] if isinstance(v, list) else v[j : j + 1] for k, v in out.items()}
            frames.append(EncodedFrame(size=(batch.shape[-2], batch.shape[-1]), image=part[j : j + 1], backbone=backbone))
    return frames


def _features_diff(a: list, b: list) -> float:
    import torch

    return max(
        (x - y).abs().max().item()
        for fa, fb in zip(a, b)
        for key in ("vision_features", "backbone_fpn", "vision_pos_enc")
        for x, y in zip(*(([f.backbone[key]] if torch.is_tensor(f.backbone[key]) else f.backbone[key]) for f in (fa, fb)))
    )


def _track(predictor, support_frame, support_mask, frames) -> tuple[list, list]:
    """Logits and label maps of ``frames`` tracked from the support (pairwise, all traits batched)."""
    from sst_search.masks import logits_to_label_map
    from sst_search.tracking import TrackingSession

    session = TrackingSession(predictor, [support_frame], [support_mask], list(range(1, K + 1)))
    outs = session.track_frames(frames)
    return [o.logits for o in outs], [logits_to_label_map(o.logits, session.obj_trait_ids, f.size) for o, f in zip(outs, frames)]


def run_size(image_size: int, args, images: list, support_image, support_mask) -> list[dict]:
    import torch

    from sst_search.builder import build_tracker
    from sst_search.masks import decision_margin
    from sst_search.sam2_predictor import preprocess

    def build(**options):
        return build_tracker(args.model, weights="random", image_size=image_size, device="cpu", **options).predictor

    predictor = build()
    batch = torch.stack([preprocess(im, image_size) for im in images])
    support = torch.stack([preprocess(support_image, image_size)])
    rows = []
    encoders = {}
    for name in args.variants:
        encode, per_call = make_encoder(name, predictor, build)
        t0, c0 = time.perf_counter(), cpu_seconds()
        encode(batch[:per_call])  # warm-up; for the compiled variants, the compilation
        first = time.perf_counter() - t0
        encoders[name] = (encode, per_call)
        rows.append({"variant": name, "first_call": first, "first_call_cpu": cpu_seconds() - c0, "wall": [], "cpu": []})
        print(f"  {image_size} px {name:>13}: first call {first:7.2f} s  {load()}", flush=True)
    for _ in range(args.reps):
        for row in rows:
            encode, per_call = encoders[row["variant"]]
            t0, c0 = time.perf_counter(), cpu_seconds()
            encode_frames(encode, per_call, batch)
            row["wall"].append((time.perf_counter() - t0) / len(batch))
            row["cpu"].append((cpu_seconds() - c0) / len(batch))
    reference = None
    for row in rows:
        encode, per_call = encoders[row["variant"]]
        frames = encode_frames(encode, per_call, batch)
        support_frame = encode_frames(encode, 1, support)[0]
        logits, maps = _track(predictor, support_frame, support_mask, frames)
        if reference is None:
            reference = frames, logits, maps
        row["features_diff"] = _features_diff(frames, reference[0])
        row["logits_diff"] = max((a - b).abs().max().item() for a, b in zip(logits, reference[1]))
        row["maps_identical"] = all((a == b).all() for a, b in zip(maps, reference[2]))
        row["pixels_differ"] = sum(int((a != b).sum()) for a, b in zip(maps, reference[2]))
        row["decided_differ"] = sum(
            int(((a != b) & (decision_margin(ref, b.shape) >= TIE)).sum()) for a, b, ref in zip(maps, reference[2], reference[1])
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", default="512", help="comma-separated SAM 2 input sizes (multiples of 32)")
    ap.add_argument("--frames", type=int, default=4, help="frames encoded per round (one query each)")
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds; medians are reported")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, 'default' first")
    ap.add_argument("--sam2-compile", action="store_true", help="also SAM 2's compile_image_encoder (max-autotune)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    ap.add_argument("--model", default=SegmentationConfig.model_fields["model"].default)
    args = ap.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v] + (["compile-sam2"] if args.sam2_compile else [])
    if args.variants[0] != "default":
        raise SystemExit("the first variant must be 'default' (the reference of the comparisons)")

    import torch

    from sst_search.images import load_image
    from sst_search.references import load_group_references
    from sst_search.synthetic import generate_collection

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sst-bench-") as tmp:
        coll = generate_collection(tmp, species=1, per_species=args.frames, seed=0, size=(384, 512))
        group = next(p for p in (coll.root / "references").iterdir() if p.is_dir())
        ref = load_group_references(group)[0]
        images = [load_image(p) for p in sorted((coll.root / "images" / group.name).glob("*.png"))][: args.frames]
    h, w = ref.mask.shape
    mask = np.zeros((h, w), np.uint8)
    cols = np.linspace(w // 8, 7 * w // 8, K + 1).astype(int)
    for t in range(K):
        mask[h // 4 : 3 * h // 4, cols[t] : cols[t + 1]] = t + 1
    print(f"model {args.model}, CPU ({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads), "
          f"random weights; {len(images)} frames per round, {args.reps} interleaved rounds; K={K} traits tracked")
    print(f"at start: {load()}")
    for size in (int(s) for s in args.image_size.split(",")):
        rows = run_size(size, args, images, ref.image, mask)
        print(f"{size} px ({load()}):")
        print(f"  {'variant':>13} | {'s/frame':>8} | {'vs default, paired by round':>27} | {'CPU s/frame':>11} | {'first call s':>12} | "
              f"{'features diff':>13} | {'logits diff':>11} | maps identical (pixels differing, of them not float ties)")
        for r in rows:
            wall, cpu = statistics.median(r["wall"]), statistics.median(r["cpu"])
            ratios = [a / b for a, b in zip(r["wall"], rows[0]["wall"])]
            paired = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            print(f"  {r['variant']:>13} | {wall:8.3f} | {paired:>27} | {cpu:11.3f} | {r['first_call']:12.1f} | "
                  f"{r['features_diff']:13.2e} | {r['logits_diff']:11.2e} | {r['maps_identical']} "
                  f"({r['pixels_differ']}, {r['decided_differ']} not ties)",
                  flush=True)
    print(f"at end: {load()}; total wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
