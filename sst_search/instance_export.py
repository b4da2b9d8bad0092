"""Instances out: cut-outs of each instance and one COCO file per photo.

Used by ``segment --instances`` (straight from the finder) and ``export instances`` (from an
index). Masks are COCO RLE (pycocotools), boxes COCO ``[x, y, w, h]``; the score of each
annotation is its cycle/forward IoU, so a COCO evaluator can rank detections by it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .images import ImageLoadError, load_image, save_mask
from .instance_finding import Instance, InstanceFinder, crop_instance
from .masks import bbox, cutout
from .references import InstanceReference
from .segmentation_run import write_summary
from .store.rle import encode_mask


@dataclass
class ExportedInstance:
    """What an export needs of an instance: its number, mask in the photo and score."""

    number: int
    mask: np.ndarray
    score: float | None = None

    @classmethod
    def of(cls, instance: Instance) -> ExportedInstance:
        return cls(instance.number, instance.mask, instance.score)


def coco_for_photo(file_name: str, size: tuple[int, int], instances: Sequence[ExportedInstance], kind: str) -> dict:
    """A COCO dataset of one photo: one category (the instance kind), one annotation per instance."""
    h, w = size
    annotations = []
    for inst in instances:
        x0, y0, x1, y1 = bbox(inst.mask)
        box = [x0, y0, x1 - x0, y1 - y0]
        annotations.append({
            "id": inst.number, "image_id": 1, "category_id": 1, "iscrowd": 0,
            "segmentation": json.loads(encode_mask(inst.mask)), "area": int(inst.mask.sum()), "bbox": box,
            **({"score": float(inst.score)} if inst.score is not None else {}),
        })
    return {
        "images": [{"id": 1, "file_name": file_name, "height": int(h), "width": int(w)}],
        "categories": [{"id": 1, "name": kind}],
        "annotations": annotations,
    }


def write_cutouts(
    image: np.ndarray,
    instances: Sequence[ExportedInstance],
    out_dir: Path,
    background: str = "transparent",
    margin: float = 0.1,
) -> list[Path]:
    """``out_dir/NNN.png`` per instance: its crop with the background made transparent or black."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for inst in instances:
        crop = crop_instance(image, inst.mask, margin, inst.number)
        path = out_dir / f"{inst.number:03d}.png"
        Image.fromarray(cutout(crop.image, crop.mask, background)).save(path)
        paths.append(path)
    return paths


def write_photo_instances(
    out_dir: Path,
    stem: str,
    image: np.ndarray,
    file_name: str,
    instances: Sequence[ExportedInstance],
    kind: str,
    background: str = "transparent",
    margin: float = 0.1,
) -> dict:
    """Everything one photo's instances export to: ``<stem>.instances.png`` (id map),
    ``<stem>.coco.json`` and ``<stem>/NNN.png`` cut-outs. Returns the COCO dataset."""
    out_dir.mkdir(parents=True, exist_ok=True)
    id_map = np.zeros(image.shape[:2], np.uint8)
    for inst in sorted(instances, key=lambda i: -1.0 if i.score is None else i.score):
        id_map[inst.mask] = inst.number
    save_mask(out_dir / f"{stem}.instances.png", id_map)
    coco = coco_for_photo(file_name, image.shape[:2], instances, kind)
    (out_dir / f"{stem}.coco.json").write_text(json.dumps(coco))
    write_cutouts(image, instances, out_dir / stem, background, margin)
    return coco


def run_instance_segmentation(
    finder: InstanceFinder,
    references: Sequence[InstanceReference],
    photos: Sequence[Path],
    out_dir: Path,
    background: str = "transparent",
) -> dict:
    """Find the instances of every photo and write them (see :func:`write_photo_instances`)
    plus ``summary.json`` (count and scores per photo). A bad photo is recorded as failed
    and the others go on; the summary is written even when the run is interrupted."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = references[0].kind
    summary: dict = {"kind": kind, "references": [r.image_path or r.id for r in references], "photos": {}}
    started = time.perf_counter()
    try:
        for path in photos:
            try:
                image = load_image(path)
                result = finder.find(image, list(references))
            except (ImageLoadError, ValueError) as exc:
                summary["photos"][path.stem] = {"path": str(path), "status": "failed", "error": str(exc)}
                continue
            exported = [ExportedInstance.of(i) for i in result.instances]
            write_photo_instances(out_dir, path.stem, image, path.name, exported, kind, background, finder.config.margin)
            summary["photos"][path.stem] = {
                "path": str(path), "status": "ok", "count": result.count, "candidates": result.candidates,
                "instances": [
                    {"number": i.number, "box": list(i.box), "area": i.area, "score": round(i.score, 4),
                     "cycle_iou": round(i.cycle_iou, 4), "forward_iou": round(i.forward_iou, 4), "origin": i.origin}
                    for i in result.instances
                ],
                "seconds": {k: round(v, 3) for k, v in result.timings.items()},
            }
    finally:
        write_summary(summary, summary["photos"].values(), len(photos), started, out_dir)
    return summary
