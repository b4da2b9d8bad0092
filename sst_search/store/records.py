"""What the indexer hands the store: one :class:`SpecimenRecord` per processed item."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from sst_search.masks import bbox
from sst_search.store.rle import decode_mask, encode_mask
from sst_search.store.schema import MASK_SOURCES, STATUSES


def specimen_id(key: str) -> int:
    """Stable 63-bit id of an item key (its path relative to the manifest or collection folder,
    see ``Item.key``): workers agree without coordination, and moving the collection keeps it."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") & ((1 << 63) - 1)


@dataclass(frozen=True)
class TraitMask:
    """One trait of one specimen, mask stored as COCO RLE JSON."""

    trait_id: int
    trait_name: str
    rle: str
    area: int
    bbox: tuple[int, int, int, int]
    quality: float | None = None
    source: str = "sst"
    object_score: float | None = None
    predicted_iou: float | None = None

    @classmethod
    def from_mask(
        cls, trait_id: int, trait_name: str, mask: np.ndarray, quality: float | None = None, source: str = "sst",
        object_score: float | None = None, predicted_iou: float | None = None,
    ) -> TraitMask:
        mask = np.asarray(mask, dtype=bool)
        box = bbox(mask)
        if box is None:
            raise ValueError(f"trait {trait_name!r} ({trait_id}) has an empty mask")
        return cls(trait_id, trait_name, encode_mask(mask), int(mask.sum()), box, quality, source, object_score, predicted_iou)

    def mask(self) -> np.ndarray:
        return decode_mask(self.rle)


def masks_from_label_map(
    label_map: np.ndarray,
    trait_names: Mapping[int, str],
    quality: Mapping[int, float] | None = None,
    source: str = "sst",
    object_score: Mapping[int, float] | None = None,
    predicted_iou: Mapping[int, float] | None = None,
) -> list[TraitMask]:
    """A :class:`TraitMask` for each named trait present in ``label_map``, with the
    tracker's confidences for it when given."""
    quality, object_score, predicted_iou = quality or {}, object_score or {}, predicted_iou or {}
    return [
        TraitMask.from_mask(
            tid, name, label_map == tid, quality.get(tid), source, object_score.get(tid), predicted_iou.get(tid)
        )
        for tid, name in sorted(trait_names.items())
        if (label_map == tid).any()
    ]


@dataclass
class SpecimenRecord:
    """Everything the store keeps about one item after one attempt to index it.

    ``vectors`` maps ``(embedder, trait_name)`` to a unit vector; the whole-specimen vector
    uses trait name ``__specimen__``. A failed item has a status, an error and nothing else,
    and writing it removes whatever an earlier run stored for it.
    """

    specimen_id: int
    path: str
    status: str
    group_name: str | None = None
    content_hash: str | None = None
    error: str | None = None
    fingerprint: dict | None = None
    width: int | None = None
    height: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    orientation: int | None = None
    mirrored: bool | None = None
    masks: list[TraitMask] = field(default_factory=list)
    #: One row per mask from :func:`sst_search.measure.measure_label_map`.
    measurements: list[dict] = field(default_factory=list)
    vectors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    #: Provenance: the item's key, the URL and time the pixels were fetched, licence, rights holder.
    item_key: str | None = None
    source: str | None = None
    fetched_at: datetime | None = None
    license: str | None = None
    rights_holder: str | None = None
    #: The full-resolution image and its size when ``path`` holds a downsampled one.
    full_source: str | None = None
    original_width: int | None = None
    original_height: int | None = None

    def validate(self) -> None:
        where = f"{self.path} (specimen {self.specimen_id})"
        if self.status not in STATUSES:
            raise ValueError(f"{where}: status {self.status!r} is not one of {STATUSES}")
        if not 0 <= self.specimen_id < (1 << 63):
            raise ValueError(f"{where}: specimen_id must be a non-negative 63-bit integer")
        for m in self.masks:
            if m.source not in MASK_SOURCES:
                raise ValueError(f"{where}: mask source {m.source!r} is not one of {MASK_SOURCES}")
        if (self.vectors or self.measurements) and self.status != "indexed":
            raise ValueError(f"{where}: only indexed specimens carry vectors and measurements (status {self.status!r})")
        for (embedder, trait), vec in self.vectors.items():
            vec = np.asarray(vec)
            if vec.ndim != 1 or not np.all(np.isfinite(vec)):
                raise ValueError(f"{where}: {embedder}/{trait} vector must be a finite 1-D array")
            if abs(float(np.linalg.norm(vec)) - 1.0) > 1e-3:
                raise ValueError(f"{where}: {embedder}/{trait} vector is not L2-normalised")
