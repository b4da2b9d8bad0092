"""Segmentation and retrieval metrics, free of file I/O.

Everything here works on arrays and id lists so that folder evaluation, the k-shot
protocol and retrieval evaluation over an index all score results the same way.

Segmentation definitions (label maps: 0 = background, k = trait k)
-------------------------------------------------------------------
* A *pair* is one (image, trait) with the trait present in the ground truth (GT).
  Its IoU is ``|P ∩ G| / |P ∪ G|`` at the GT's resolution.
* A missing prediction scores IoU 0 for every GT trait of that image (and the image is
  listed), so skipping hard images can never raise a score.
* A trait absent from both GT and prediction is not a pair: it says nothing.
* A trait predicted but absent from the GT is a *false positive*. It has no IoU (the
  union is all prediction) and is counted in its own column rather than folded into the
  mean as 0: otherwise the same error would weigh differently depending on how many
  traits the GT happens to have.
* Image mIoU: mean IoU over that image's pairs.
* Group mIoU: mean IoU over all pairs of the group (a pixel-independent, pair-weighted
  mean; images with more annotated traits weigh more).
* Overall mIoU: mean of the group mIoUs, so that each species counts equally however
  many test images it has (the published splits are per species). The pair-weighted
  mean over every pair of every group is reported as ``pooled_miou`` too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from statistics import fmean

import numpy as np


class PairStatus(str, Enum):
    SCORED = "scored"
    MISSING_PREDICTION = "missing_prediction"
    FALSE_POSITIVE = "false_positive"


@dataclass(frozen=True)
class TraitOverlap:
    """Pixel counts of one trait in one image; the IoU follows from them."""

    item_id: str
    group: str
    trait_id: int
    intersection: int
    gt_pixels: int
    pred_pixels: int
    predicted: bool = True  # False when the image had no prediction at all

    @property
    def status(self) -> PairStatus:
        if not self.predicted:
            return PairStatus.MISSING_PREDICTION
        if self.gt_pixels == 0:
            return PairStatus.FALSE_POSITIVE
        return PairStatus.SCORED

    @property
    def iou(self) -> float | None:
        """IoU of a pair; None for a false positive (no GT, so no IoU)."""
        if self.gt_pixels == 0:
            return None
        return self.intersection / (self.gt_pixels + self.pred_pixels - self.intersection)


def trait_overlaps(
    pred: np.ndarray | None, gt: np.ndarray, item_id: str = "", group: str = ""
) -> list[TraitOverlap]:
    """Overlap of every trait present in ``gt`` or ``pred``; ``pred=None`` = no prediction.

    One 256x256 confusion matrix gives all traits in a single pass over the pixels, which
    matters for 1024x1024 masks times hundreds of images.
    """
    if gt.ndim != 2:
        raise ValueError(f"{item_id or 'ground truth'}: label map must be 2-D, got shape {gt.shape}")
    if pred is None:
        ids, counts = np.unique(gt[gt > 0], return_counts=True)
        return [
            TraitOverlap(item_id, group, int(t), 0, int(c), 0, predicted=False)
            for t, c in zip(ids.tolist(), counts.tolist())
        ]
    if pred.shape != gt.shape:
        raise ValueError(f"{item_id or 'prediction'}: prediction shape {pred.shape} differs from ground truth {gt.shape}")
    cm = np.bincount(
        gt.astype(np.int64).ravel() * 256 + pred.astype(np.int64).ravel(), minlength=256 * 256
    ).reshape(256, 256)
    gt_px, pred_px = cm.sum(axis=1), cm.sum(axis=0)
    present = np.flatnonzero((gt_px + pred_px)[1:] > 0) + 1
    return [
        TraitOverlap(item_id, group, int(t), int(cm[t, t]), int(gt_px[t]), int(pred_px[t]))
        for t in present
    ]


@dataclass(frozen=True)
class TraitRow:
    """Per-(group, trait) summary: ``miou`` over the images whose GT has the trait."""

    group: str
    trait_id: int
    images: int
    miou: float
    missing_predictions: int
    false_positives: int


class SegmentationScores:
    """Aggregates :class:`TraitOverlap` records with the definitions in the module docstring."""

    def __init__(self, overlaps: Iterable[TraitOverlap] = ()):
        self.overlaps: list[TraitOverlap] = list(overlaps)

    def add(self, overlaps: Iterable[TraitOverlap]) -> None:
        self.overlaps.extend(overlaps)

    @property
    def pairs(self) -> list[TraitOverlap]:
        """Overlaps that count in mIoU: GT has the trait (scored or missing prediction)."""
        return [o for o in self.overlaps if o.iou is not None]

    def _mean_by(self, key: Callable[[TraitOverlap], Hashable]) -> dict:
        buckets: dict[Hashable, list[float]] = defaultdict(list)
        for o in self.pairs:
            buckets[key(o)].append(o.iou)
        return {k: fmean(v) for k, v in sorted(buckets.items())}

    def image_miou(self) -> dict[tuple[str, str], float]:
        """``{(group, item_id): mIoU}`` over each image's GT traits."""
        return self._mean_by(lambda o: (o.group, o.item_id))

    def group_miou(self) -> dict[str, float]:
        return self._mean_by(lambda o: o.group)

    @property
    def overall_miou(self) -> float | None:
        """Mean of the group mIoUs; None when nothing was scored."""
        groups = self.group_miou()
        return fmean(groups.values()) if groups else None

    @property
    def pooled_miou(self) -> float | None:
        """Mean over every (image, trait) pair of every group."""
        pairs = self.pairs
        return fmean(o.iou for o in pairs) if pairs else None

    def trait_rows(self) -> list[TraitRow]:
        buckets: dict[tuple[str, int], list[TraitOverlap]] = defaultdict(list)
        for o in self.overlaps:
            buckets[(o.group, o.trait_id)].append(o)
        rows = []
        for (group, tid), items in sorted(buckets.items()):
            scored = [o.iou for o in items if o.iou is not None]
            rows.append(
                TraitRow(
                    group=group,
                    trait_id=tid,
                    images=len(scored),
                    miou=fmean(scored) if scored else float("nan"),
                    missing_predictions=sum(o.status is PairStatus.MISSING_PREDICTION for o in items),
                    false_positives=sum(o.status is PairStatus.FALSE_POSITIVE for o in items),
                )
            )
        return rows


# --------------------------------------------------------------------------- retrieval

Relevance = Collection[Hashable] | Callable[[Hashable], bool]


def _hits(ranked: Sequence[Hashable], relevant: Relevance, k: int) -> list[bool]:
    """Relevance of the first ``k`` ranks; a repeated id earns nothing the second time
    (otherwise a ranking could exceed a precision of 1 by listing one hit twice)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    is_rel = relevant if callable(relevant) else relevant.__contains__
    seen: set[Hashable] = set()
    hits = []
    for item in ranked[:k]:
        hits.append(item not in seen and bool(is_rel(item)))
        seen.add(item)
    return hits


def precision_at_k(ranked: Sequence[Hashable], relevant: Relevance, k: int) -> float:
    """P@k = (number of relevant ids among the first k ranks) / k.

    ``relevant`` is a set of ids or a predicate on an id. A ranking shorter than ``k``
    is padded with non-relevant results: returning fewer results is not rewarded.
    """
    return sum(_hits(ranked, relevant, k)) / k


def average_precision_at_k(
    ranked: Sequence[Hashable], relevant: Relevance, k: int, n_relevant: int | None = None
) -> float:
    """AP@k = (1 / min(k, R)) * sum_{i=1..k} P@i * rel(i).

    ``rel(i)`` is 1 when the id at rank i is relevant, ``R`` the number of relevant ids
    in the whole gallery. Normalising by ``min(k, R)`` makes a perfect top-k score 1.0
    even when more than k ids are relevant. ``R`` is ``len(relevant)`` for a set;
    with a predicate, pass ``n_relevant`` (the gallery size the predicate accepts).
    ``R == 0`` leaves AP undefined and raises ``ValueError``.
    """
    if n_relevant is None:
        if callable(relevant):
            raise ValueError("a relevance predicate needs n_relevant (how many gallery ids are relevant)")
        n_relevant = len(relevant)
    if n_relevant <= 0:
        raise ValueError("no relevant ids: average precision is undefined")
    total, found = 0.0, 0
    for rank, hit in enumerate(_hits(ranked, relevant, k), start=1):
        if hit:
            found += 1
            total += found / rank
    return total / min(k, n_relevant)


@dataclass(frozen=True)
class RetrievalScores:
    """Means over queries; queries with no relevant id cannot have an AP and are skipped."""

    k: int
    map_at_k: float | None
    precision_at_k: float | None
    queries: int
    skipped: int


def retrieval_scores(
    queries: Iterable[tuple[Sequence[Hashable], Relevance] | tuple[Sequence[Hashable], Relevance, int]],
    k: int,
) -> RetrievalScores:
    """mAP@k and mean P@k over ``(ranked, relevant[, n_relevant])`` tuples."""
    aps, precisions, skipped = [], [], 0
    for ranked, relevant, *rest in queries:
        n_rel = rest[0] if rest else (None if callable(relevant) else len(relevant))
        if n_rel is None:
            raise ValueError("a relevance predicate needs n_relevant as the third tuple item")
        if n_rel == 0:
            skipped += 1
            continue
        aps.append(average_precision_at_k(ranked, relevant, k, n_rel))
        precisions.append(precision_at_k(ranked, relevant, k))
    return RetrievalScores(
        k=k,
        map_at_k=fmean(aps) if aps else None,
        precision_at_k=fmean(precisions) if precisions else None,
        queries=len(aps),
        skipped=skipped,
    )
