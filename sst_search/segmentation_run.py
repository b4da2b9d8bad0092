"""Segment query images against supports: one image in memory (:func:`segment`), or a set
written as masks + ``summary.json`` (:func:`run_segmentation`).

The library behind ``sst-search segment``: masks are written as soon as each query is
done and the summary is written even if the run is interrupted, so finished work is never
lost and a bad query never stops the others.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import Progress

from .images import is_image_file, load_image, save_image, save_mask
from .masks import overlay, trait_stats
from .references import Support, load_group_references

if TYPE_CHECKING:
    import numpy as np

    from .config import Config
    from .tracking import SSTTracker, TrackResult


class DuplicateStemError(ValueError):
    pass


def expand_queries(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories expanded to their images (sorted); unique stems required
    because outputs are named after them."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if is_image_file(f) and not f.name.endswith(".mask.png")))
        else:
            files.append(p)
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise DuplicateStemError(f"{f} and {seen[f.stem]} share the stem {f.stem!r}; outputs are named by stem")
        seen[f.stem] = f
    return files


def segment(
    image: np.ndarray | str | Path,
    supports: Support | list[Support] | str | Path,
    *,
    tracker: SSTTracker | None = None,
    config: Config | str | Path | None = None,
) -> TrackResult:
    """Track the supports' traits into one image and return its label map with the scores.

    The notebook's ``sst-search segment`` for a single image: ``supports`` may be a
    references group folder (images, ``.mask.png`` files and ``traits.yaml``) instead of
    loaded :class:`Support` objects. Building SAM 2 is the slow part, so pass a built
    ``tracker`` when segmenting many images; otherwise one is built from
    ``config.segmentation`` (a :class:`Config`, a YAML file, or ``None`` for the defaults),
    whose mode, orientation and quality settings apply either way. An image that cannot be
    segmented raises ``ValueError`` naming it: there is no batch here to carry on.
    """
    from .builder import tracker_from_config
    from .config import Config, load_config

    if not isinstance(config, Config):
        config = load_config(config)
    seg = config.segmentation
    if isinstance(supports, (str, Path)):
        supports = load_group_references(supports)
    elif isinstance(supports, Support):
        supports = [supports]
    tracker = tracker or tracker_from_config(seg)
    query_id = str(image) if isinstance(image, (str, Path)) else "image"
    result = next(iter(tracker.segment(
        supports, [(query_id, image)], mode=seg.mode, quality=seg.quality, orientation=seg.orientation,
        mirror=seg.mirror, orientation_by=seg.orientation_by,
    )))
    if result.error is not None:
        raise ValueError(result.error)
    return result


def run_segmentation(
    tracker: SSTTracker,
    supports: list[Support],
    queries: list[Path],
    out_dir: Path,
    mode: str = "pairwise",
    quality: bool = False,
    write_overlays: bool = False,
    batch_size: int | None = None,
    quiet: bool = False,
    orientation: int | str = 0,
    mirror: bool = False,
    orientation_by: str = "object_score",
    query_batch: int | None = None,
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    traits = {tid: t.name for s in supports for tid, t in s.traits.items()}
    by_id = {q.stem: q for q in queries}
    summary = {
        "model": tracker.model,
        "weights": {
            "sha256": tracker.weights.sha256,
            "path": str(tracker.weights.path) if tracker.weights.path else None,
            "random": tracker.weights.is_random,
        },
        "mode": mode,
        "orientation": orientation,
        "mirror": mirror,
        "orientation_by": orientation_by,
        "image_size": tracker.predictor.image_size,
        "supports": [{"id": s.id, "image": s.image_path, "mask": s.mask_path, "sha256": s.digest} for s in supports],
        "traits": {str(k): v for k, v in sorted(traits.items())},
        "images": {},
    }
    started = time.perf_counter()
    try:
        with Progress(disable=quiet, transient=True) as progress:
            task = progress.add_task(f"segment ({mode})", total=len(queries))
            results = tracker.segment(
                supports, [(q.stem, q) for q in queries], mode=mode, quality=quality, batch_size=batch_size,
                orientation=orientation, mirror=mirror, orientation_by=orientation_by, query_batch=query_batch,
            )
            for res in results:
                entry: dict = {"path": str(by_id[res.query_id])}
                if res.error is not None:
                    entry.update(status="failed", error=res.error)
                else:
                    save_mask(out_dir / f"{res.query_id}.png", res.label_map)
                    if write_overlays:
                        img = load_image(by_id[res.query_id])
                        save_image(out_dir / f"{res.query_id}.overlay.png", overlay(img, res.label_map))
                    stats = trait_stats(res.label_map, sorted(traits))
                    entry.update(
                        status="ok",
                        size=list(res.label_map.shape),
                        orientation=res.orientation,
                        mirrored=res.mirrored,
                        traits={
                            traits[tid]: {
                                "id": tid,
                                **stats.get(tid, {"area": 0, "bbox": None}),
                                "quality": res.quality.get(tid),
                                "object_score": res.object_score.get(tid),
                                "predicted_iou": res.predicted_iou.get(tid),
                            }
                            for tid in sorted(traits)
                        },
                    )
                summary["images"][res.query_id] = entry
                progress.advance(task)
    finally:
        write_summary(summary, summary["images"].values(), len(queries), started, out_dir)
    return summary


def write_summary(summary: dict, entries: Iterable[dict], total: int, started: float, out_dir: Path) -> None:
    """Count and time a run into ``summary.json``; called from ``finally`` so an interrupted
    run still leaves the record of what it finished."""
    statuses = [e["status"] for e in entries]
    summary["counts"] = {"ok": statuses.count("ok"), "failed": statuses.count("failed"), "total": total}
    summary["seconds"] = round(time.perf_counter() - started, 3)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
