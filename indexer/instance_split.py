"""``index --instances``: split every photo into one item per instance before indexing.

Each photo (a drawer, a tray, a field photo) is searched for instances with the instance
references; every instance becomes an item of its own: a crop with a margin written under
``<db>.instances/``, keyed ``<photo key>#<number>``, with the photo's group and metadata
plus ``sourcePath`` and ``instanceNumber``. The items then go through the usual plan,
trait segmentation and embedding. Splitting is incremental per photo: a photo whose bytes
and instance fingerprint (references, SAM 2, thresholds) are unchanged is not split again,
and its crops, unchanged too, are then skipped by the plan as well.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sst_search.builder import build_instance_finder, tracker_from_config
from sst_search.config import Config
from sst_search.images import ImageLoadError, load_image, save_image
from sst_search.instance_finding import InstanceFinder, crop_instance
from sst_search.references import load_instance_references, references_fingerprint
from sst_search.store import Store, encode_mask
from sst_search.store.instance_tables import (
    InstanceRow,
    InstanceSource,
    instance_source_states,
    instance_sources,
    remove_instance_sources,
    write_instance_source,
)

from .collection import Item
from .plan import content_hash, segmentation_fingerprint
from .worker import Worker


@dataclass
class SplitSummary:
    photos: int = 0
    split: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    instances: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def crops_dir(db: Path) -> Path:
    return Path(db).resolve().with_name(Path(db).name + ".instances")


def split_instances(
    items: list[Item],
    store: Store,
    config: Config,
    instance_references: Path,
    crops: Path,
    worker: Worker | None = None,
    force: bool = False,
) -> tuple[list[Item], SplitSummary]:
    """The instance items of ``items`` (photos), splitting only new or changed photos."""
    refs = load_instance_references(instance_references)
    fingerprint = {
        "kind": refs[0].kind,
        "instance_references": references_fingerprint(refs),
        "segmentation": {k: v for k, v in segmentation_fingerprint(config).items() if k not in ("mode", "quality")},
        "instances": config.instances.model_dump(mode="json"),
    }
    states = instance_source_states(store)
    summary = SplitSummary(photos=len(items))
    finder: InstanceFinder | None = None
    out: list[Item] = []
    seen: set[str] = set()
    for item in items:
        path = str(item.path.resolve())
        seen.add(path)
        digest = content_hash(item.path)
        old = states.get(path)
        if not force and old and old[2] == "split" and old[0] == digest and json.loads(old[1] or "null") == fingerprint:
            (source,) = instance_sources(store, [path])
            if all(Path(r.crop_path).is_file() for r in source.instances):
                summary.unchanged += 1
                summary.instances += len(source.instances)
                out.extend(_instance_item(item, r) for r in source.instances)
                continue
        source = InstanceSource(path, item.key, digest or None, fingerprint, "failed", item.group, dict(item.metadata))
        try:
            image = load_image(item.path)
            if finder is None:
                tracker = worker.tracker if worker is not None else tracker_from_config(config.segmentation)
                finder = build_instance_finder(tracker, config.instances)
            result = finder.find(image, refs)
        except (ImageLoadError, ValueError, RuntimeError) as exc:  # one bad photo never stops the run
            source.error = str(exc)
            write_instance_source(store, source)
            summary.failed += 1
            summary.failures.append((path, source.error))
            continue
        folder = crops / _folder_name(path)
        shutil.rmtree(folder, ignore_errors=True)
        source.status, source.candidates = "split", result.candidates
        source.height, source.width = image.shape[:2]
        for inst in result.instances:
            crop = crop_instance(image, inst.mask, config.instances.margin, inst.number)
            crop_path = folder / f"{inst.number:03d}.png"
            save_image(crop_path, crop.image)
            source.instances.append(InstanceRow(
                number=inst.number, item_key=f"{item.key}#{inst.number}", crop_path=str(crop_path),
                box=inst.box, crop_box=crop.crop_box, rle=encode_mask(inst.mask), area=inst.area,
                score=inst.score, cycle_iou=inst.cycle_iou, forward_iou=inst.forward_iou, origin=inst.origin,
            ))
        write_instance_source(store, source)
        summary.split += 1
        summary.instances += len(source.instances)
        out.extend(_instance_item(item, r) for r in source.instances)
    gone = [p for p in states if p not in seen]
    summary.removed = remove_instance_sources(store, gone)
    for p in gone:
        shutil.rmtree(crops / _folder_name(p), ignore_errors=True)
    return out, summary


def _folder_name(source_path: str) -> str:
    return hashlib.sha256(source_path.encode()).hexdigest()[:16]


def _instance_item(photo: Item, row: InstanceRow) -> Item:
    metadata = {**photo.metadata, "sourcePath": photo.key, "instanceNumber": str(row.number)}
    return Item(row.item_key, Path(row.crop_path), photo.group, metadata)
