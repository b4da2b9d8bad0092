"""Segment + embed one unit of work into catalog records.

The same code runs in-process and inside Ray actors. Workers never touch the store: they
return :class:`~sst_search.store.SpecimenRecord` objects and the driver is the single
writer, so a crashed worker can never leave a half-written catalog.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sst_search.builder import embedder_from_config, tracker_from_config
from sst_search.config import Config
from sst_search.embed import EmbedItem
from sst_search.embed.base import SpecimenVectors
from sst_search.images import ImageLoadError, check_file, load_image, load_mask
from sst_search.measure import measure_label_map, resolve_scale
from sst_search.references import (
    ReferencesError,
    Support,
    check_group_name,
    load_group_references,
)
from sst_search.sam2_predictor import default_device
from sst_search.store import SPECIMEN_TRAIT, SpecimenRecord, masks_from_label_map
from sst_search.store.review_tables import apply_corrections
from sst_search.tracking import (
    PreparedQuery,
    TrackResult,
    prepare_query,
    resize_on_cpu,
    views_for,
)
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


@dataclass
class PreparedItem:
    """One item read and made ready for the model: its pixels, a provided label map, or
    the SAM 2 inputs of an item to segment; ``error`` says why it cannot go on."""

    key: str
    image: np.ndarray | None = None
    label_map: np.ndarray | None = None
    query: PreparedQuery | None = None
    error: str | None = None


@dataclass
class Segmented:
    """A unit's label maps (with the tracker's result for SST items) and why others failed."""

    label_maps: dict[str, tuple[np.ndarray, TrackResult | None]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class Worker:
    """Holds the models for a whole job; SAM 2 is built only when some item needs SST.

    ``tracker`` and ``embedder`` may be given already built (a notebook or a test that
    indexes several times reuses them); otherwise they are built from ``config``.

    A unit goes through three stages: :meth:`prepare` (per item, no model: decode, resize,
    read a provided mask), :meth:`segment` (the tracker, one caller at a time) and
    :meth:`finish` (embed, measure, encode masks). :meth:`process` runs them one after
    another; :class:`indexer.pipeline.Pipeline` runs them on threads so that the model
    never waits for one item's CPU work. Either way the records are the same.
    """

    def __init__(self, config: Config, references: Path, tracker=None, embedder=None):
        self.config = config
        self.references = Path(references)
        self.embedder = embedder if embedder is not None else embedder_from_config(config.embedding)
        self._tracker = tracker
        self._supports: dict[str, list[Support] | ReferencesError] = {}
        self._lock = threading.Lock()
        #: seconds per stage; "encode" is the masks' run-length encoding for the catalog
        self.timings = {"load": 0.0, "segment": 0.0, "embed": 0.0, "encode": 0.0, "measure": 0.0}

    @property
    def tracker(self):
        if self._tracker is None:
            self._tracker = tracker_from_config(self.config.segmentation)
        return self._tracker

    def supports(self, group: str | None) -> list[Support] | ReferencesError:
        key = group or ""
        with self._lock:
            if key not in self._supports:
                self._supports[key] = load_supports_or_error(self.references, group)
            return self._supports[key]

    def get_timings(self) -> dict[str, float]:
        with self._lock:
            return dict(self.timings)

    def _count(self, stage: str, started: float) -> float:
        """Add the time since ``started`` to ``stage``; returns now, where the next stage starts."""
        now = time.perf_counter()
        with self._lock:
            self.timings[stage] += now - started
        return now

    def process(self, unit: WorkUnit) -> list[SpecimenRecord]:
        prepared = [self.prepare(unit, item) for item in unit.items]
        return self.finish(unit, prepared, self.segment(unit, prepared))

    def _traits(self, unit: WorkUnit) -> dict[int, str] | None:
        supports = self.supports(unit.group)
        return None if isinstance(supports, ReferencesError) else {tid: t.name for s in supports for tid, t in s.traits.items()}

    def prepare(self, unit: WorkUnit, item: Item) -> PreparedItem:
        """Read one item and get it ready for the model; never raises for a bad file."""
        started = time.perf_counter()
        prepared = PreparedItem(item.key, error=item.error)
        traits = self._traits(unit)
        if item.error or traits is None:
            return prepared
        try:
            prepared.image = load_image(item.path)
            if item.key in unit.provided_masks:
                prepared.label_map = _provided_mask(unit.provided_masks[item.key], prepared.image, traits)
            else:
                seg = self.config.segmentation
                prepared.query = prepare_query(prepared.image, self._model_input_size(), views_for(seg.orientation, seg.mirror),
                                               resize=resize_on_cpu(self._model_device()))
        except (ImageLoadError, ValueError) as exc:
            prepared.image, prepared.error = None, str(exc)
        self._count("load", started)
        return prepared

    def _model_device(self) -> torch.device:
        """Where SAM 2 runs, known from the config without building the model."""
        if self._tracker is not None:
            return self._tracker.predictor.device
        return torch.device(self.config.segmentation.device) if self.config.segmentation.device else default_device()

    def _model_input_size(self) -> int:
        """SAM 2's input size, known from the config without building the model."""
        return self._tracker.predictor.image_size if self._tracker is not None else self.config.segmentation.image_size

    def segment(self, unit: WorkUnit, prepared: list[PreparedItem]) -> Segmented:
        """Track the unit's SST items; a tracker failure keeps what finished and fails the rest."""
        out = Segmented()
        supports = self.supports(unit.group)
        if isinstance(supports, ReferencesError):
            return out
        for p in prepared:
            if p.label_map is not None:
                out.label_maps[p.key] = (p.label_map, None)
        queries = [(p.key, p.query) for p in prepared if p.query is not None]
        if not queries:
            return out
        started = time.perf_counter()
        seg = self.config.segmentation
        try:
            for res in self.tracker.segment(
                supports, queries, mode=seg.mode, quality=seg.quality, batch_size=seg.batch_size,
                orientation=seg.orientation, mirror=seg.mirror, orientation_by=seg.orientation_by,
                query_batch=seg.query_batch,
            ):
                if res.error is not None:
                    out.errors[res.query_id] = res.error
                else:
                    out.label_maps[res.query_id] = (res.label_map, res)
        except Exception as exc:  # keep what finished; the rest is retried by the next run
            for key, _ in queries:
                if key not in out.label_maps:
                    out.errors[key] = f"segmentation failed: {type(exc).__name__}: {exc}"
        self._count("segment", started)
        return out

    def finish(self, unit: WorkUnit, prepared: list[PreparedItem], segmented: Segmented) -> list[SpecimenRecord]:
        """Records of a unit: embed its label maps as one batch, measure and encode each mask."""
        records = {item.key: _record(unit, item) for item in unit.items}
        traits = self._traits(unit)
        if traits is None:
            reason = str(self.supports(unit.group))
            for item in unit.items:
                if not item.error:
                    records[item.key].status, records[item.key].error = "no_reference", reason
            return list(records.values())
        images = {p.key: p.image for p in prepared}
        for p in prepared:
            if p.error and not records[p.key].error:
                records[p.key].error = p.error
        for key, error in segmented.errors.items():
            records[key].error = error
        label_maps = dict(segmented.label_maps)
        for key, corrected in unit.corrections.items():
            if key in label_maps:
                label_map, res = label_maps[key]
                label_maps[key] = (apply_corrections(label_map, corrected), res)

        started = time.perf_counter()
        vectors = self._embed(label_maps, images, sorted(traits), records)
        self._count("embed", started)
        for key, vecs in vectors.items():
            label_map, res = label_maps[key]
            r = records[key]
            try:
                started = time.perf_counter()
                r.height, r.width = label_map.shape
                if res is None:
                    r.masks = masks_from_label_map(label_map, traits, source="provided")
                else:
                    r.orientation = res.orientation
                    r.mirrored = res.mirrored
                    r.masks = masks_from_label_map(label_map, traits, res.quality, "sst", res.object_score, res.predicted_iou)
                started = self._count("encode", started)
                scale = resolve_scale(r.metadata, self.config.measure.scale_column, self.config.measure.pixels_per_mm)
                if r.original_width:
                    scale = scale.resampled(r.width, r.original_width)
                r.measurements = measure_label_map(label_map, images[key], traits, scale)
                self._count("measure", started)
            except Exception as exc:  # noqa: BLE001 - one item's failure, recorded; the unit goes on
                r.masks, r.measurements, r.error = [], [], f"measuring failed: {type(exc).__name__}: {exc}"
                continue
            r.status = "indexed"
            r.vectors = {(self.embedder.name, traits[tid]): v for tid, v in vecs.traits.items()}
            r.vectors[(self.embedder.name, SPECIMEN_TRAIT)] = vecs.specimen
        return [records[item.key] for item in unit.items]


    def _embed(self, label_maps: dict, images: dict, trait_ids: list[int], records: dict) -> dict[str, SpecimenVectors]:
        """The unit's vectors as one batch; if the batch fails, item by item, so that only the
        items that cannot be embedded fail (with the reason in their record)."""
        keys = list(label_maps)
        items = [EmbedItem(images[k], label_maps[k][0], trait_ids) for k in keys]
        try:
            return dict(zip(keys, self.embedder.embed_batch(items)))
        except Exception:  # noqa: BLE001 - find the culprits below
            pass
        vectors = {}
        for key, item in zip(keys, items):
            try:
                vectors[key] = self.embedder.embed_batch([item])[0]
            except Exception as exc:  # noqa: BLE001
                records[key].error = f"embedding failed: {type(exc).__name__}: {exc}"
        return vectors


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
    # the ids present, from a histogram of the uint8 mask: np.unique sorts every pixel
    undeclared = sorted(set(np.flatnonzero(np.bincount(mask.ravel(), minlength=1)).tolist()) - {0} - set(traits))
    if undeclared:
        raise ValueError(f"{path}: mask holds trait ids not declared for this group: {undeclared}")
    return mask
