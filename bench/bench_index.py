"""End-to-end indexing throughput: images/s, seconds per image of every stage, and the non-model cost.

Random weights throughout (the cost does not depend on the weight values). Each row is one
``run_index`` of the same synthetic collection into a new store:

``serial``      every stage one after another in one thread (``indexer.threads: 0``)
``pipeline``    the pipelined indexer with ``--workers`` threads (default: all cores)
``ray``         Ray actors (``--ray N``), each running the pipeline on its share of the cores

Stage seconds (load = decode + resize, segment, embed, encode = masks to RLE, measure, write) are summed over the
threads that ran them, so in a pipelined run they add up to more than the wall time.
``model`` is the time spent inside the SAM 2 and open_clip calls (the image encoder, a group's
support set-up, tracking from the supports, the image tower; on CUDA each call synchronises), and the **non-model cost** is everything else: in the serial row,
run with one torch thread, ``(wall - model) / images`` is what one core spends per image
around the models. In a pipelined row the forward passes overlap the rest, so instead of a
difference it prints ``model busy``: the share of the wall time the model thread spent
segmenting; near 100% the model never waits for the CPU stages, and then
``non-model (serial) / cores`` is the CPU's share per image (printed as ``non-model / core``).
``--masks`` indexes the ground-truth masks instead of segmenting (no SAM 2, and with the
colour embedder no model at all): then every row's wall time per image is non-model cost.
``cpu`` is the process's CPU time per image (all its threads): on a machine other jobs load,
wall times include waiting for a core, so compare ``cpu`` between runs there (in a serial
``--masks`` row with the colour embedder it is the non-model cost on one core).

    python bench/bench_index.py [--image-size 1024] [--species 3] [--per-species 8] [--size 192x256]
        [--embedder color-pattern|bioclip|clip] [--device cpu|cuda] [--workers N] [--ray N]
        [--masks] [--model sam2.1-hiera-tiny] [--query-batch N] [--batch-size N] [--rows serial,pipeline]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from indexer.job import run_index
from indexer.pipeline import default_threads
from sst_search.builder import build_tracker, embedder_from_config
from sst_search.config import Config
from sst_search.synthetic import generate_collection

STAGES = ("load", "segment", "embed", "encode", "measure", "write")


class ModelClock:
    """Seconds spent inside the models' calls (outermost calls only, per thread): SAM 2's image
    encoder, the set-up of a group's supports and tracking from them (memory attention, its
    projections and attention, the mask decoder), and the embedder's image tower."""

    def __init__(self, calls: list[tuple[object, str]], device: torch.device):
        self.seconds = 0.0
        self._local = threading.local()  # nesting per thread: the pipeline runs models on several
        self._lock = threading.Lock()
        self._cuda = device.type == "cuda"
        self._restore = []
        for owner, name in calls:
            inner = getattr(owner, name)
            setattr(owner, name, self._timed(inner))
            self._restore.append((owner, name))

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()

    def _timed(self, inner):
        def timed(*args, **kwargs):
            local = self._local
            outermost = getattr(local, "depth", 0) == 0
            if outermost:
                self._sync()
                started = time.perf_counter()
            local.depth = getattr(local, "depth", 0) + 1
            try:
                return inner(*args, **kwargs)
            finally:
                local.depth -= 1
                if outermost:
                    self._sync()
                    with self._lock:
                        self.seconds += time.perf_counter() - started
        return timed

    def close(self) -> None:
        for owner, name in self._restore:
            delattr(owner, name)  # the instance attribute goes; the class's method shows again


@contextmanager
def clocked(tracker, embedder, device):
    calls = []
    if tracker is not None:
        calls += [(tracker.predictor, name) for name in ("forward_image", "add_new_masks", "support_memory",
                                                         "track_from_support", "track_objects")]
    if hasattr(embedder, "model"):
        calls.append((embedder.model, "encode_image"))
    clock = ModelClock(calls, device)
    try:
        yield clock
    finally:
        clock.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=512, help="SAM 2 input size")
    ap.add_argument("--size", default="192x256", help="synthetic image HxW")
    ap.add_argument("--species", type=int, default=3)
    ap.add_argument("--per-species", type=int, default=8)
    ap.add_argument("--embedder", default="color-pattern")
    ap.add_argument("--model", default="sam2.1-hiera-tiny")
    ap.add_argument("--mode", default="pairwise")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=None, help="pipeline threads (default: all cores)")
    ap.add_argument("--ray", type=int, default=0, help="also run Ray with this many actors")
    ap.add_argument("--masks", action="store_true", help="index ground-truth masks: no SAM 2")
    ap.add_argument("--batch-size", type=int, default=None, help="queries per image-encoder batch")
    ap.add_argument("--query-batch", type=int, default=None, help="pairwise queries per tracking call")
    ap.add_argument("--commit-every", type=int, default=16)
    ap.add_argument("--rows", default="serial,pipeline", help="which of serial,pipeline to run")
    ap.add_argument("--repeat", type=int, default=1, help="runs per pipelined row (the fastest is printed)")
    args = ap.parse_args()

    h, w = (int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench_index_"))
    coll = generate_collection(work / "collection", species=args.species, per_species=args.per_species, seed=0, size=(h, w))
    n = args.species * args.per_species
    embedding = {"embedder": args.embedder}
    if args.embedder in ("clip", "bioclip"):
        embedding["weights"] = "random"
        if args.embedder == "clip":
            embedding["model_name"] = "ViT-B-32"
    segmentation = {"weights": "random", "image_size": args.image_size, "mode": args.mode, "device": args.device,
                    "model": args.model, "batch_size": args.batch_size, "query_batch": args.query_batch}
    device = torch.device(args.device)
    tracker = None if args.masks else build_tracker(args.model, weights="random", image_size=args.image_size, device=args.device)
    embedder = embedder_from_config(Config.model_validate({"embedding": embedding}).embedding)
    threads = args.workers or default_threads()
    print(f"model {args.model} at {args.image_size} px on {args.device}, mode {args.mode}, embedder {args.embedder}, "
          f"weights random (cost does not depend on weight values){', ground-truth masks (no SAM 2)' if args.masks else ''}")
    print(f"collection: {n} synthetic images of {h}x{w} px; cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}, "
          f"pipeline threads {threads}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'row':<14}{'wall s':>8}{'img/s':>8}{'model':>8}{'non-model':>10}{'busy':>6}{'cpu':>7}   per image: "
          + "  ".join(STAGES) + "   (ms per image; stage times summed over threads)")
    rows = [r for r in args.rows.split(",") if r] + (["ray"] if args.ray else [])
    serial_non_model = None
    for row in rows:
        best = None
        for rep in range(1 if row == "serial" else args.repeat):  # the serial baseline is the slow one
            indexer = {"commit_every": args.commit_every, "threads": 0 if row == "serial" else threads}
            if row == "ray":
                indexer.update(engine="ray", num_workers=args.ray, threads=None)
            config = Config.model_validate({"segmentation": segmentation, "embedding": embedding, "indexer": indexer})
            torch_threads = torch.get_num_threads()
            if row == "serial":
                torch.set_num_threads(1)  # one core: what every other stage costs per image per core
            local = row != "ray"
            with clocked(tracker if local else None, embedder if local else None, device) as clock:
                started, cpu_started = time.perf_counter(), time.process_time()
                summary = run_index(coll.manifest, coll.references, work / f"{row}{rep}.duckdb", config, quiet=True,
                                    masks=coll.ground_truth if args.masks else None,
                                    tracker=tracker if local else None, embedder=embedder if local else None)
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            torch.set_num_threads(torch_threads)
            assert summary.counts["indexed"] == n, summary.counts
            if best is None or wall < best[0]:
                best = (wall, clock.seconds, summary.timings, cpu)
        wall, model, timings, cpu = best
        ms = lambda seconds: f"{1000 * seconds / n:.1f}"  # noqa: E731
        label, model_col, non_model, busy = "serial x1", ms(model), ms(wall - model), "-"
        if row == "serial":
            serial_non_model = wall - model
        else:
            label = f"ray x{args.ray}" if row == "ray" else f"pipeline x{threads}"
            model_col = ms(model) if row != "ray" else "-"
            non_model = ms(serial_non_model / threads) + "/c" if serial_non_model is not None and row != "ray" else "-"
            busy = f"{timings.get('segment', 0.0) / wall:.0%}" if row != "ray" and not args.masks else "-"
        stages = "  ".join(f"{k} {ms(timings.get(k, 0.0))}" for k in STAGES)
        cpu_col = ms(cpu) if row != "ray" else "-"  # Ray actors are other processes
        print(f"{label:<14}{wall:>8.2f}{n / wall:>8.1f}{model_col:>8}{non_model:>10}{busy:>6}{cpu_col:>7}   {stages}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
