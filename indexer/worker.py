"""Segment + embed one unit of work into catalog records.

The same code runs in-process and inside Ray actors. Workers never touch the store: they
return :class:`~sst_search.store.SpecimenRecord` objects and the driver is the single
writer, so a crashed worker can never leave a half-written catalog.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sst_search.builder import embedder_from_config, tracker_from_config
from sst_search.config import Config
from sst_search.embed import EmbedItem
from sst_search.images import ImageLoadError, check_file, load_image, load_mask
from sst_search.measure import measure_label_map, resolve_scale
from sst_search.references import ReferencesError, Support, check_group_name, load_group_references
from sst_search.store import SPECIMEN_TRAIT, SpecimenRecord, masks_from_label_map
from sst_search.store.review import apply_corrections
from sst_search.weights import sha256_file

from .collection import Item


@dataclass
class WorkUnit:
    """Items of one group processed together: they share supports and, in chain mode, one
    pseudo-video. Hashes and fingerprints come from the plan so that what is written is
    exactly what was planned."""

    group: str | None
    items: list[Item]
    specimen_ids: dict[str, int]
    hashes: dict[str, str]
    fingerprints: dict[str, dict]
    provided_masks: dict[str, Path] = field(default_factory=dict)
    #: reviewers' corrected masks ``{trait_id: RLE}`` per item, applied over the segmentation
    corrections: dict[str, dict[int, str]] = field(default_factory=dict)


class Worker:
    """Holds the models for a whole job; SAM 2 is built only when some item needs SST.

    ``tracker`` and ``embedder`` may be given already built (a notebook or a test that
    indexes several times reuses them); otherwise they are built from ``config``.
    """

    def __init__(self, config: Config, references: Path, tracker=None, embedder=None):
        self.config = config
        self.references = Path(references)
        self.embedder = embedder if embedder is not None else embedder_from_config(config.embedding)
        self._tracker = tracker
        self._supports: dict[str, list[Support] | ReferencesError] = {}
        self.timings = {"load": 0.0, "segment": 0.0, "embed": 0.0}

    @property
    def tracker(self):
        if self._tracker is None:
            self._tracker = tracker_from_config(self.config.segmentation)
        return self._tracker

    def supports(self, group: str | None) -> list[Support] | ReferencesError:
        key = group or ""
        if key not in self._supports:
            self._supports[key] = load_supports_or_error(self.references, group)
        return self._supports[key]

    def get_timings(self) -> dict[str, float]:
        return dict(self.timings)

    def process(self, unit: WorkUnit) -> list[SpecimenRecord]:
        supports = self.supports(unit.group)
        records = {item.key: _record(unit, item) for item in unit.items}
        usable = [item for item in unit.items if not item.error]  # the others stay failed with their reason
        if isinstance(supports, ReferencesError):
            for item in usable:
                records[item.key].status, records[item.key].error = "no_reference", str(supports)
            return list(records.values())
        traits = {tid: t.name for s in supports for tid, t in s.traits.items()}

        started = time.perf_counter()
        images: dict[str, np.ndarray] = {}
        label_maps: dict[str, tuple[np.ndarray, TrackResult | None]] = {}
        for item in usable:
            try:
                images[item.key] = load_image(item.path)
                if item.key in unit.provided_masks:
                    label_maps[item.key] = (_provided_mask(unit.provided_masks[item.key], images[item.key], traits), None)
            except (ImageLoadError, ValueError) as exc:
                records[item.key].status, records[item.key].error = "failed", str(exc)
                images.pop(item.key, None)
        self.timings["load"] += time.perf_counter() - started

        started = time.perf_counter()
        sst_queries = [(key, img) for key, img in images.items() if key not in label_maps]
        if sst_queries:
            seg = self.config.segmentation
            try:
                results = self.tracker.segment(
                    supports, sst_queries, mode=seg.mode, quality=seg.quality, batch_size=seg.batch_size,
                    orientation=seg.orientation, mirror=seg.mirror, orientation_by=seg.orientation_by,
                    query_batch=seg.query_batch,
                )
                for res in results:
                    label_maps[res.query_id] = (res.label_map, res)
            except Exception as exc:  # keep what finished; the rest is retried by the next run
                for key, _ in sst_queries:
                    if key not in label_maps:
                        records[key].error = f"segmentation failed: {type(exc).__name__}: {exc}"
                        images.pop(key)
        self.timings["segment"] += time.perf_counter() - started

        for key, corrected in unit.corrections.items():
            if key in label_maps:
                label_map, res = label_maps[key]
                label_maps[key] = (apply_corrections(label_map, corrected), res)

        started = time.perf_counter()
        keys = list(label_maps)
        vectors = self.embedder.embed_batch([EmbedItem(images[k], label_maps[k][0], sorted(traits)) for k in keys])
        for key, vecs in zip(keys, vectors):
            label_map, res = label_maps[key]
            r = records[key]
            r.status = "indexed"
            r.height, r.width = label_map.shape
            if res is None:
                r.masks = masks_from_label_map(label_map, traits, source="provided")
            else:
                r.orientation = res.orientation
                r.mirrored = res.mirrored
                r.masks = masks_from_label_map(label_map, traits, res.quality, "sst", res.object_score, res.predicted_iou)
            scale = resolve_scale(r.metadata, self.config.measure.scale_column, self.config.measure.pixels_per_mm)
            if r.original_width:
                scale = scale.resampled(r.width, r.original_width)
            r.measurements = measure_label_map(label_map, images[key], traits, scale)
            r.vectors = {(self.embedder.name, traits[tid]): v for tid, v in vecs.traits.items()}
            r.vectors[(self.embedder.name, SPECIMEN_TRAIT)] = vecs.specimen
        self.timings["embed"] += time.perf_counter() - started
        return [records[item.key] for item in unit.items]


def content_hash(path: Path) -> str:
    """sha256 of the file's bytes; '' when it is not a readable regular file of a sane size
    (the worker then says why). Never blocks: FIFOs and devices are not read."""
    try:
        check_file(path)
        return sha256_file(path)
    except (OSError, ImageLoadError):
        return ""


def load_supports_or_error(references: Path, group: str | None) -> list[Support] | ReferencesError:
    """A group's supports, or the reason it has none (recorded as ``no_reference``)."""
    if not group:
        return ReferencesError("item has no group; pass --default-group or add a 'group' column")
    try:
        folder = references / check_group_name(group)
    except ReferencesError as exc:
        return exc
    if not folder.is_dir():
        return ReferencesError(f"no references for group {group!r} (expected {folder}/traits.yaml and labeled supports)")
    try:
        return load_group_references(folder)
    except ReferencesError as exc:
        return exc


def _record(unit: WorkUnit, item: Item) -> SpecimenRecord:
    return SpecimenRecord(
        specimen_id=unit.specimen_ids[item.key],
        path=item.location,
        status="failed",
        error=item.error,
        group_name=item.group,
        content_hash=unit.hashes[item.key] or None,
        fingerprint=unit.fingerprints[item.key],
        metadata=dict(item.metadata),
        item_key=item.key,
        source=item.source,
        fetched_at=item.fetched_at,
        license=item.license,
        rights_holder=item.rights_holder,
        full_source=item.original.url if item.original else None,
        original_width=item.original.size[0] if item.original and item.original.size else None,
        original_height=item.original.size[1] if item.original and item.original.size else None,
    )


def _provided_mask(path: Path, image: np.ndarray, traits: dict[int, str]) -> np.ndarray:
    mask = load_mask(path, shape=image.shape[:2])
    undeclared = sorted(set(np.unique(mask).tolist()) - {0} - set(traits))
    if undeclared:
        raise ValueError(f"{path}: mask holds trait ids not declared for this group: {undeclared}")
    return mask
