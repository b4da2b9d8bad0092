"""Seconds per photo of ``--instances``: proposal, scoring and per-instance segmentation, by
number of instances and of candidates.

Run: ``python bench/bench_instances.py [--image-size 256] [--photo 384x512] [--counts 0,3,12]
[--points 4,8,16] [--device cpu]``

One synthetic drawer per count (``sst_search.synthetic.render_drawer``), one instance
reference (a tray of 4). SAM 2 hiera-t has random weights: the arithmetic does not depend
on the weight values, but the *number* of proposals does (random confidences), so the
stages are timed with the counts under control:

- ``propose``: SAM 2's automatic mask generator with a ``points``² grid on the photo (all
  confidence filters off), the photo's encoder pass shared; its candidate count is printed.
- ``score``: forward tracking of the reference instances plus the cycle (each candidate
  tracked back onto the reference, fresh memory) for the drawer's true instances given as
  candidates, i.e. ``count`` candidates plus the forward masks.
- ``segment``: SST trait segmentation of each instance crop (pairwise, cached support).

Each row also gives CPU seconds (user + system) of the whole photo, which move far less
than wall time when other work shares the machine; the load average is printed at start
and end, and figures taken on a loaded machine must be read as such.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from sst_search.config import SegmentationConfig


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=SegmentationConfig.model_fields["model"].default)
    ap.add_argument("--image-size", type=int, default=256, help="SAM 2 input size")
    ap.add_argument("--photo", default="384x512", help="drawer photo HxW")
    ap.add_argument("--counts", default="0,3,12", help="specimens per drawer")
    ap.add_argument("--points", default="4,8", help="proposal grid sides (points_per_side)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()

    import torch

    from sst_search.builder import build_instance_finder, build_tracker
    from sst_search.config import InstancesConfig
    from sst_search.instance_finding import crop_instance
    from sst_search.references import InstanceReference, load_support
    from sst_search.sam2_predictor import encode_images
    from sst_search.synthetic import generate_drawers, render_drawer

    h, w = (int(v) for v in args.photo.split("x"))
    counts = [int(c) for c in args.counts.split(",")]
    points = [int(p) for p in args.points.split(",")]
    print(f"load average at start: {os.getloadavg()}  cpus: {os.cpu_count()}  torch threads: {torch.get_num_threads()}")
    print(f"model {args.model} (random weights), SAM 2 input {args.image_size} px, photo {h}x{w}, device {args.device}")

    tracker = build_tracker(args.model, weights="random", image_size=args.image_size, device=args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench-instances-"))
    out = generate_drawers(tmp, counts=(0,), size=(h, w), reference_count=4)
    trait_support = load_support(
        out.references / "alba" / "alba-ref.png", out.references / "alba" / "alba-ref.mask.png",
        out.references / "alba" / "traits.yaml",
    )
    tray = render_drawer("alba", 4, (h, w), seed=99)
    reference = InstanceReference("tray", tray.image, tray.instances, "specimen")
    open_filters = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=0.0005, max_area=0.9,
                        min_score=0.0, max_candidates=1024)

    # Warm-up: reference features and the forward session are built once per finder and reused.
    finders = {p: build_instance_finder(tracker, InstancesConfig(points_per_side=p, **open_filters)) for p in points}
    for finder in finders.values():
        finder.find(tray.image, [reference], candidates=tray.instance_masks())
    list(tracker.segment([trait_support], [("warm", tray.image[: h // 3, : w // 3])]))

    rows = []
    header = f"{'count':>5} {'points':>6} {'proposals':>9} {'propose s':>9} {'cands':>5} {'score s':>8} {'segment s':>9} {'total s':>8} {'cpu s':>7}"
    print(header)
    for count in counts:
        photo = render_drawer("alba", count, (h, w), seed=7, index=count)
        for p, finder in finders.items():
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            frame = encode_images(tracker.predictor, [photo.image])[0]
            proposals = finder.propose(photo.image, frame)
            propose_s = time.perf_counter() - t0
            result = finder.find(photo.image, [reference], candidates=photo.instance_masks())
            score_s = result.timings["encode"] + result.timings["score"]
            t1 = time.perf_counter()
            crops = [(f"i{k}", crop_instance(photo.image, m, 0.1).image) for k, m in enumerate(photo.instance_masks())]
            list(tracker.segment([trait_support], crops))
            segment_s = time.perf_counter() - t1
            row = {
                "count": count, "points_per_side": p, "proposals": len(proposals), "propose_s": propose_s,
                "candidates_scored": result.candidates, "score_s": score_s, "segment_s": segment_s,
                "total_s": propose_s + score_s + segment_s, "cpu_s": cpu_seconds() - cpu0,
            }
            rows.append(row)
            print(f"{count:>5} {p:>6} {len(proposals):>9} {propose_s:>9.2f} {result.candidates:>5} {score_s:>8.2f} "
                  f"{segment_s:>9.2f} {row['total_s']:>8.2f} {row['cpu_s']:>7.2f}")
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"load_end": os.getloadavg(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
