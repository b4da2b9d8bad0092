"""One-shot instance segmentation: find every specimen of a photo from one labeled photo.

A drawer or field photo holds any number of specimens; one reference photo whose mask
marks each instance (:class:`~sst_search.references.InstanceReference`) says what an
instance looks like. For a new photo:

1. **Propose** candidate masks with SAM 2's automatic mask generator (a grid of point
   prompts, same checkpoint as tracking, sharing the photo's image-encoder pass).
2. **Forward**: track the reference instances into the photo (one SAM 2 object per
   instance). Their masks join the candidates, so an instance the proposals missed can
   still be found.
3. **Cycle**: track every candidate back onto each reference photo with fresh memory
   (the candidate is the only conditioning mask) and score it by its best IoU with a
   reference instance. This is SST's retrieval score: a mask that is really an instance
   of the kind comes back onto an instance; a patch of background, a label or half a
   specimen does not.
4. A proposal's score is the larger of its cycle IoU and its IoU with a forward-tracked
   instance (the reference confirms it in either direction); a forward mask's score is its
   cycle IoU alone (its forward IoU would be 1 by construction). Candidates reaching
   ``min_score`` are kept, greedily by score, dropping any that overlaps a better one by
   ``nms_iou`` or more. Nothing kept is a valid answer: a photo may hold no specimen.

Kept instances are numbered in reading order (rows top to bottom, then left to right) so
the numbers on a drawn outline are stable and easy to follow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .config import InstancesConfig
from .masks import bbox, iou_matrix, logits_to_masks
from .references import InstanceReference
from .sam2_predictor import (
    EncodedFrame,
    InMemoryVideoPredictor,
    TrackingSession,
    encode_images,
)

#: Where a candidate came from.
PROPOSAL, FORWARD, GIVEN = "proposal", "forward", "given"


@dataclass
class Instance:
    """One kept instance of a photo: mask and box in the photo's pixels, and its scores."""

    number: int
    mask: np.ndarray
    box: tuple[int, int, int, int]  # x0, y0, x1, y1, exclusive ends
    score: float
    cycle_iou: float
    forward_iou: float
    origin: str  # proposal | forward | given

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class InstanceResult:
    """The instances of one photo, plus what it took to find them."""

    size: tuple[int, int]
    instances: list[Instance]
    candidates: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.instances)

    def instance_map(self) -> np.ndarray:
        """uint8 map, k on instance k's pixels (where two overlap, the higher score wins)."""
        out = np.zeros(self.size, np.uint8)
        for inst in sorted(self.instances, key=lambda i: i.score):
            out[inst.mask] = inst.number
        return out


@dataclass
class ScoredCandidates:
    """Every candidate of a photo with both scores, before selection."""

    size: tuple[int, int]
    masks: np.ndarray  # (K, H, W) bool
    origins: list[str]
    cycle_iou: np.ndarray  # (K,)
    forward_iou: np.ndarray  # (K,)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> np.ndarray:
        return np.maximum(self.cycle_iou, self.forward_iou)


def select_instances(scored: ScoredCandidates, min_score: float, nms_iou: float) -> InstanceResult:
    """Candidates reaching ``min_score``, best first, each dropped when it overlaps an already
    kept one by ``nms_iou`` (mask IoU) or more; numbered in reading order."""
    score = scored.score
    masks = scored.masks
    kept: list[int] = []
    for j in np.argsort(-score, kind="stable"):
        if score[j] < min_score:
            break
        if kept and iou_matrix(masks[j : j + 1], masks[kept]).max() >= nms_iou:
            continue
        kept.append(int(j))
    boxes = {j: bbox(masks[j]) for j in kept}
    instances = [
        Instance(number, masks[j], boxes[j], float(score[j]), float(scored.cycle_iou[j]),
                 float(scored.forward_iou[j]), scored.origins[j])
        for number, j in enumerate(_reading_order(kept, boxes), start=1)
    ]
    return InstanceResult(scored.size, instances, candidates=len(masks), timings=dict(scored.timings))


class InstanceFinder:
    """Finds the instances of photos from instance references with one SAM 2 model.

    Reference features and the forward sessions (reference memory) are computed once and
    reused for every photo; each candidate's way back starts from fresh memory.
    """

    def __init__(self, predictor: InMemoryVideoPredictor, config: InstancesConfig | None = None):
        # Loads SAM 2's image predictor (torchvision): only where instances are found.
        from .sam2_predictor import MaskProposer

        self.predictor = predictor
        self.config = config or InstancesConfig()
        c = self.config
        self.proposer = MaskProposer(
            predictor,
            points_per_side=c.points_per_side,
            points_per_batch=c.points_per_batch,
            pred_iou_thresh=c.pred_iou_thresh,
            stability_score_thresh=c.stability_score_thresh,
        )
        self._frames: dict[str, EncodedFrame] = {}
        self._forward: dict[str, TrackingSession] = {}

    # -- the three steps ------------------------------------------------------------------

    def propose(self, image: np.ndarray, frame: EncodedFrame | None = None) -> list[np.ndarray]:
        """Candidate masks of SAM 2's automatic mask generator, best predicted IoU first,
        at most ``max_candidates``, within the configured area range."""
        records = self.proposer.propose(image, frame)
        records.sort(key=lambda r: -r["predicted_iou"])
        masks = [np.asarray(r["segmentation"], bool) for r in records]
        return self._area_filter(masks, image.shape[:2])[: self.config.max_candidates]

    def forward(self, frame: EncodedFrame, references: list[InstanceReference]) -> list[np.ndarray]:
        """Each reference instance tracked into ``frame`` (empty results dropped)."""
        out = []
        for ref in references:
            session = self._forward_session(ref)
            masks = logits_to_masks(session.track(frame), frame.size)
            out.extend(m for m in masks if m.any())
        return out

    def cycle_scores(self, frame: EncodedFrame, masks: np.ndarray, references: list[InstanceReference]) -> np.ndarray:
        """Per candidate: best IoU of its round trip (photo -> reference, fresh memory) with
        any reference instance, over all references. All candidates are objects of one
        session (they may overlap: each has its own memory) and run as one batch."""
        back = TrackingSession(self.predictor, [frame], [masks], list(range(1, len(masks) + 1)))
        order = [k - 1 for k in back.obj_trait_ids]
        scores = np.zeros(len(masks))
        for ref in references:
            ref_frame = self._frame(ref)
            returned = logits_to_masks(back.track(ref_frame), ref_frame.size)
            best = iou_matrix(returned, np.stack(ref.instance_masks())).max(axis=1)
            scores[order] = np.maximum(scores[order], best)
        return scores

    # -- all together ---------------------------------------------------------------------

    def score(
        self,
        image: np.ndarray,
        references: list[InstanceReference],
        candidates: list[np.ndarray] | None = None,
    ) -> ScoredCandidates:
        """Propose (or take ``candidates``, e.g. from another detector), add the forward-tracked
        reference instances, and score every candidate in both directions."""
        if not references:
            raise ValueError("at least one instance reference is needed")
        size = image.shape[:2]
        timings: dict[str, float] = {}
        t = time.perf_counter()
        frame = encode_images(self.predictor, [image])[0]
        timings["encode"] = time.perf_counter() - t

        t = time.perf_counter()
        if candidates is None:
            proposed, origin = self.propose(image, frame), PROPOSAL
        else:
            proposed, origin = self._area_filter([np.asarray(m, bool) for m in candidates], size), GIVEN
        timings["propose"] = time.perf_counter() - t

        t = time.perf_counter()
        forward = self._area_filter(self.forward(frame, references), size)
        masks = np.stack(proposed + forward) if proposed or forward else np.zeros((0, *size), bool)
        cycle = self.cycle_scores(frame, masks, references) if len(masks) else np.zeros(0)
        fwd = np.zeros(len(masks))
        if forward and proposed:
            fwd[: len(proposed)] = iou_matrix(masks[: len(proposed)], np.stack(forward)).max(axis=1)
        timings["score"] = time.perf_counter() - t
        origins = [origin] * len(proposed) + [FORWARD] * len(forward)
        return ScoredCandidates(size, masks, origins, cycle, fwd, timings)

    def find(
        self,
        image: np.ndarray,
        references: list[InstanceReference],
        candidates: list[np.ndarray] | None = None,
    ) -> InstanceResult:
        """The instances of ``image`` (see :meth:`score` and :func:`select_instances`)."""
        return select_instances(self.score(image, references, candidates), self.config.min_score, self.config.nms_iou)

    # -- helpers -------------------------------------------------------------------------

    def _area_filter(self, masks: list[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
        total = size[0] * size[1]
        lo, hi = self.config.min_area * total, self.config.max_area * total
        return [m for m in masks if m.any() and lo <= m.sum() <= hi]

    def _frame(self, ref: InstanceReference) -> EncodedFrame:
        if ref.digest not in self._frames:
            self._frames[ref.digest] = encode_images(self.predictor, [ref.image])[0]
        return self._frames[ref.digest]

    def _forward_session(self, ref: InstanceReference) -> TrackingSession:
        if ref.digest not in self._forward:
            self._forward[ref.digest] = TrackingSession(self.predictor, [self._frame(ref)], [ref.instances], ref.instance_ids)
        return self._forward[ref.digest]


def _reading_order(kept: list[int], boxes: dict[int, tuple[int, int, int, int]]) -> list[int]:
    """Rows top to bottom (a new row starts below half the median height), then left to right."""
    if not kept:
        return []
    half = np.median([boxes[j][3] - boxes[j][1] for j in kept]) / 2
    by_top = sorted(kept, key=lambda j: (boxes[j][1] + boxes[j][3]) / 2)
    rows: list[list[int]] = []
    row_y = None
    for j in by_top:
        cy = (boxes[j][1] + boxes[j][3]) / 2
        if row_y is None or cy - row_y > half:
            rows.append([])
            row_y = cy
        rows[-1].append(j)
    return [j for row in rows for j in sorted(row, key=lambda j: boxes[j][0])]


# -- instances become items ----------------------------------------------------------------


@dataclass
class InstanceCrop:
    """An instance cut out of its photo with a margin: the item an index stores."""

    number: int
    image: np.ndarray  # crop, RGB
    mask: np.ndarray  # instance mask in crop pixels
    box: tuple[int, int, int, int]  # instance box in the photo
    crop_box: tuple[int, int, int, int]  # where the crop lies in the photo


def crop_instance(image: np.ndarray, mask: np.ndarray, margin: float = 0.1, number: int = 0) -> InstanceCrop:
    """The instance's box grown by ``margin`` x its longer side on every side, clipped to the photo."""
    box = bbox(mask)
    if box is None:
        raise ValueError("an instance mask is empty")
    x0, y0, x1, y1 = box
    pad = int(round(margin * max(x1 - x0, y1 - y0)))
    h, w = image.shape[:2]
    cx0, cy0, cx1, cy1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
    return InstanceCrop(
        number,
        np.ascontiguousarray(image[cy0:cy1, cx0:cx1]),
        np.ascontiguousarray(mask[cy0:cy1, cx0:cx1]),
        box,
        (cx0, cy0, cx1, cy1),
    )
