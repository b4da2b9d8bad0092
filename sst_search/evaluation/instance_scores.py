"""Instance recall and precision: how many specimens of a photo were found, and how many
found things were specimens.

A predicted instance matches a ground-truth instance when their mask IoU is at least
``iou`` (0.5 by default, COCO's loosest threshold); matching is one-to-one, greedy by IoU
(highest first), as in COCO evaluation without score ranking. Photos are compared as
instance-id maps (0 background, k instance k), which is what ``segment --instances``
writes (``<stem>.instances.png``) and what ground truth such as the synthetic drawers
holds. A photo without any instance and without any prediction counts as perfect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..images import ImageLoadError, is_image_file, load_mask
from ..masks import iou_matrix
from .eval_seg import EvaluationInputError


@dataclass
class PhotoCounts:
    photo: str
    truth: int
    predicted: int
    matched: int


@dataclass
class InstanceEvalReport:
    iou: float
    photos: list[PhotoCounts] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # ground truth without a prediction (counted as found nothing)

    @property
    def truth(self) -> int:
        return sum(p.truth for p in self.photos)

    @property
    def predicted(self) -> int:
        return sum(p.predicted for p in self.photos)

    @property
    def matched(self) -> int:
        return sum(p.matched for p in self.photos)

    @property
    def recall(self) -> float:
        return self.matched / self.truth if self.truth else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.predicted if self.predicted else 1.0

    @property
    def count_error(self) -> float:
        """Mean absolute difference between predicted and true instance counts per photo."""
        return float(np.mean([abs(p.predicted - p.truth) for p in self.photos])) if self.photos else 0.0

    def __str__(self) -> str:
        return (
            f"{len(self.photos)} photos, {self.truth} true instances, {self.predicted} predicted: "
            f"recall {self.recall:.3f}, precision {self.precision:.3f} at mask IoU >= {self.iou}, "
            f"mean |count error| {self.count_error:.2f}"
            + (f"; {len(self.missing)} photos without a prediction" if self.missing else "")
        )


def instance_masks(instance_map: np.ndarray) -> np.ndarray:
    """``(K, H, W)`` boolean masks of the instances of an id map, by id."""
    ids = sorted(set(np.unique(instance_map).tolist()) - {0})
    return np.stack([instance_map == k for k in ids]) if ids else np.zeros((0, *instance_map.shape), bool)


def match_instances(predicted: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> int:
    """Number of one-to-one matches at mask IoU >= ``iou``, greedy by IoU."""
    scores = iou_matrix(predicted, truth)
    matched, used_p, used_t = 0, set(), set()
    for flat in np.argsort(-scores, axis=None, kind="stable"):
        p, t = np.unravel_index(flat, scores.shape)
        if scores[p, t] < iou:
            break
        if p in used_p or t in used_t:
            continue
        used_p.add(p)
        used_t.add(t)
        matched += 1
    return matched


def evaluate_instance_folders(pred: Path, gt: Path, iou: float = 0.5) -> InstanceEvalReport:
    """Compare ``pred/<stem>.instances.png`` (or ``<stem>.png``) with ``gt/<stem>.png`` id maps."""
    pred, gt = Path(pred), Path(gt)
    for folder, what in ((pred, "predictions"), (gt, "ground truth")):
        if not folder.is_dir():
            raise EvaluationInputError(f"{folder}: {what} folder does not exist")
    truth_files = sorted(p for p in gt.rglob("*") if is_image_file(p))
    if not truth_files:
        raise EvaluationInputError(f"{gt}: no ground-truth instance maps")
    report = InstanceEvalReport(iou)
    for truth_path in truth_files:
        stem = truth_path.stem
        candidates = [pred / f"{stem}.instances.png", pred / f"{stem}.png"]
        pred_path = next((c for c in candidates if c.is_file()), None)
        try:
            truth = load_mask(truth_path)
            predicted = load_mask(pred_path, shape=truth.shape) if pred_path else np.zeros_like(truth)
        except ImageLoadError as exc:
            raise EvaluationInputError(str(exc)) from exc
        if pred_path is None:
            report.missing.append(stem)
        t, p = instance_masks(truth), instance_masks(predicted)
        report.photos.append(PhotoCounts(stem, len(t), len(p), match_instances(p, t, iou)))
    return report
