"""Static Segmentation by Tracking: track every trait from the support(s) into queries.

Each trait is one SAM 2 object. Supports are conditioning frames; queries are the frames
that follow them in a pseudo-video. Two propagation modes:

``pairwise``
    every query is tracked from the supports alone. The supports' features and memory are
    computed once per group and reused; queries are encoded in batches. Results do not
    depend on the other queries, which is what an incremental index needs.
``chain``
    one pseudo-video in which each predicted query mask becomes memory for later frames.
    Queries are ordered so each follows its most similar predecessor (see
    :mod:`sst_search.ordering`), and chains are capped in length so memory stays flat.

Queries are streamed: at most ``batch_size`` encoded queries are alive at once and a chain
keeps only the memory SAM 2 can still attend to.

This module decides which frames are tracked from which, in what order and view; SAM 2
itself is reached only through :mod:`sst_search.sam2_predictor` (a
:class:`~sst_search.sam2_predictor.TrackingSession` per group or chain).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import MODES, ORIENTATION_CRITERIA, SegmentationConfig
from .images import ImageLoadError, load_image
from .masks import logits_to_label_map, mask_iou
from .ordering import global_descriptor, greedy_chain
from .references import Support
from .sam2_predictor import (
    EncodedFrame,
    FrameOutput,
    InMemoryVideoPredictor,
    TrackingSession,
    encode_images,
    encode_resized,
    resize_for_model,
)
from .weights import ResolvedWeights

#: Rotations (degrees counter-clockwise) a query can be tracked in; ``"auto"`` tries all.
ORIENTATIONS = (0, 90, 180, 270)
#: Pairwise sessions (a group's supports, their memory) a tracker keeps for later calls.
PAIRWISE_SESSIONS_KEPT = 8

#: A query is an id plus pixels already in memory, a path to read them from, or a
#: :class:`PreparedQuery`.
Query = tuple[str, "np.ndarray | str | Path | PreparedQuery"]


@dataclass
class TrackResult:
    """The outcome for one query; ``error`` is set (and ``label_map`` None) when it failed."""

    query_id: str
    label_map: np.ndarray | None = None
    #: Cycle-consistency IoU per trait (only with ``quality=True``).
    quality: dict[int, float] = field(default_factory=dict)
    error: str | None = None
    #: SAM 2's object score logit per trait (above 0: predicted present, below 0: absent).
    object_score: dict[int, float] = field(default_factory=dict)
    #: The mask decoder's predicted IoU per trait.
    predicted_iou: dict[int, float] = field(default_factory=dict)
    #: Degrees (counter-clockwise) the query was turned before tracking; the label map is
    #: always in the query's own orientation.
    orientation: int = 0
    #: Whether the query was flipped left-right (before turning) for tracking.
    mirrored: bool = False


class SSTTracker:
    """Segments query specimens from labeled supports with a SAM 2 video predictor."""

    def __init__(
        self,
        predictor: InMemoryVideoPredictor,
        model: str,
        weights: ResolvedWeights,
        max_chain_length: int = SegmentationConfig.model_fields["max_chain_length"].default,
        batch_traits: bool = True,
    ):
        self.predictor = predictor
        self.model = model
        self.weights = weights
        self.max_chain_length = max_chain_length
        #: Run all traits of a query as one batch (same output as one trait at a time).
        self.batch_traits = batch_traits
        #: sha256 of the fine-tuning adapter applied to the model (see sst_search.finetune).
        self.adapter_sha256: str | None = None
        self._support_cache: dict[str, EncodedFrame] = {}
        self._pairwise_sessions: OrderedDict[tuple[str, ...], TrackingSession] = OrderedDict()

    @property
    def fingerprint(self) -> dict:
        return {
            "model": self.model,
            "weights_sha256": self.weights.sha256,
            "image_size": self.predictor.image_size,
            "adapter_sha256": self.adapter_sha256,
        }

    # -- encoding ---------------------------------------------------------------------
    def _encode_supports(self, supports: list[Support]) -> list[EncodedFrame]:
        """Support features are computed once per tracker and reused for every group run."""
        todo = [s for s in supports if s.digest not in self._support_cache]
        for s, enc in zip(todo, encode_images(self.predictor, [s.image for s in todo])):
            self._support_cache[s.digest] = enc
        return [self._support_cache[s.digest] for s in supports]

    def _session(self, supports: list[Support], total_frames: int | None = None) -> TrackingSession:
        trait_ids = sorted({t for s in supports for t in s.trait_ids})
        return TrackingSession(
            self.predictor, self._encode_supports(supports), [s.mask for s in supports], trait_ids, total_frames,
            batch_traits=self.batch_traits,
        )

    # -- public API -------------------------------------------------------------------
    def reconstruct_supports(self, supports: list[Support]) -> list[np.ndarray]:
        """Label maps SAM 2 emits for the supports' own (conditioning) frames.

        They should reproduce the support masks; a large gap means the model input size is
        too small for the traits (thin bands vanish at low resolution).
        """
        session = self._session(supports)
        return [
            logits_to_label_map(session.conditioning_logits(i), session.obj_trait_ids, s.mask.shape)
            for i, s in enumerate(supports)
        ]

    def segment(
        self,
        supports: list[Support],
        queries: Iterable[Query],
        mode: str = "pairwise",
        quality: bool = False,
        batch_size: int | None = None,
        cache_support: bool = True,
        orientation: int | str = 0,
        mirror: bool = False,
        orientation_by: str = "object_score",
        query_batch: int | None = None,
    ) -> Iterator[TrackResult]:
        """Yield one :class:`TrackResult` per query (chain mode yields in chain order).

        ``orientation`` turns every query by that many degrees (counter-clockwise) before
        tracking; ``"auto"`` tracks each query at 0, 90, 180 and 270 degrees and keeps the
        best, for specimens pinned and photographed in any orientation. ``mirror`` flips
        each query left-right before turning it; with ``"auto"`` both the plain and the
        mirrored views are tried (eight). ``orientation_by`` says what "best" means:
        ``"object_score"`` (SAM 2's mean object score, free) or ``"cycle"`` (the mean
        cycle-consistency IoU back onto the supports: one extra tracking session per view,
        several times slower, but it checks the masks themselves). Each view costs one
        image-encoder pass. Label maps are always returned in the query's own orientation.

        ``batch_size`` queries share one image-encoder pass; by default 8 on CUDA and 1 on
        CPU, where larger batches measured slower per image at 512 px and above.
        ``query_batch`` pairwise queries (all their views) share one pass of memory
        attention and the mask decoder, queries x traits as one batch; by default 4 on CUDA
        and 1 on CPU (not measured faster there). Results do not depend on either.
        ``cache_support=False`` rebuilds the supports' memory for every query; it exists to
        check that caching changes nothing and as the reference for benchmarks.
        """
        if not supports:
            raise ValueError("at least one support is needed")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        if orientation_by not in ORIENTATION_CRITERIA:
            raise ValueError(f"unknown orientation criterion {orientation_by!r}; choose one of {ORIENTATION_CRITERIA}")
        views = views_for(orientation, mirror)
        cuda = self.predictor.device.type == "cuda"
        batch_size = batch_size or (8 if cuda else 1)
        query_batch = query_batch or (4 if cuda else 1)
        pick = _Picker(self, supports, orientation_by)
        if mode == "pairwise":
            yield from self._pairwise(supports, queries, quality, batch_size, cache_support, views, query_batch, pick)
        else:
            yield from self._chain(supports, queries, quality, batch_size, views, pick)

    def _pairwise_session(self, supports: list[Support]) -> TrackingSession:
        """A group's pairwise session, kept for the next call with the same supports: pairwise
        tracking never changes it, and an indexer calls once per unit of a few specimens."""
        key = tuple(s.digest for s in supports)
        if key in self._pairwise_sessions:
            self._pairwise_sessions.move_to_end(key)
        else:
            self._pairwise_sessions[key] = self._session(supports)
            while len(self._pairwise_sessions) > PAIRWISE_SESSIONS_KEPT:
                self._pairwise_sessions.popitem(last=False)
        return self._pairwise_sessions[key]

    def _pairwise(self, supports, queries, quality, batch_size, cache_support, views, query_batch, pick) -> Iterator[TrackResult]:
        session = self._pairwise_session(supports) if cache_support else None
        encoded = self._encoded(queries, batch_size if cache_support else 1, views)
        for chunk in _batched(encoded, query_batch if cache_support else 1):
            current = session or self._session(supports)
            tracked = iter(current.track_frames([f for _, frames, error in chunk if error is None for f in frames]))
            for qid, frames, error in chunk:
                if error is not None:
                    yield TrackResult(qid, error=error)
                    continue
                outs = [next(tracked) for _ in frames]
                best = pick(current, frames, outs)
                yield self._result(qid, current, frames[best], outs[best], views[best], supports, quality)

    def _chain(self, supports, queries, quality, batch_size, views, pick) -> Iterator[TrackResult]:
        # First pass: one cheap descriptor per query to order the chain; pixels of files
        # are re-read when their frame comes up, so the whole collection is never held.
        sources, descriptors = {}, []
        for (qid, img, error), (_, source) in _load_with_sources(queries):
            if error is not None:
                yield TrackResult(qid, error=error)
                continue
            sources[qid] = source
            descriptors.append(global_descriptor(img.image if isinstance(img, PreparedQuery) else img))
        if not sources:
            return
        ids = list(sources)
        start = np.mean([global_descriptor(s.image) for s in supports], axis=0)
        order = [ids[i] for i in greedy_chain(start, np.stack(descriptors))]
        for chain in _chunks(order, self.max_chain_length):
            session = self._session(supports, total_frames=len(supports) + len(chain))
            position = {qid: session.num_cond + i for i, qid in enumerate(chain)}
            for qid, frames, error in self._encoded(((qid, sources[qid]) for qid in chain), batch_size, views):
                if error is not None:
                    yield TrackResult(qid, error=error)
                    continue
                # Every view is tried without touching memory; only the kept one becomes memory.
                idx = position[qid]
                best = 0
                if len(frames) > 1:
                    best = pick(session, frames, [session.track_frame(f, idx) for f in frames])
                out = session.track_frame(frames[best], idx, keep_memory=True)
                yield self._result(qid, session, frames[best], out, views[best], supports, quality)

    def _encoded(
        self, queries: Iterable[Query], batch_size: int, views: list[View]
    ) -> Iterator[tuple[str, list[EncodedFrame] | None, str | None]]:
        """Load and encode queries ``batch_size`` at a time, in order, each in every view
        (one frame per view); failures pass through. Prepared queries skip the resize."""
        size, on_cpu = self.predictor.image_size, resize_on_cpu(self.predictor.device)
        for batch in _batched(_load_queries(queries), batch_size):
            good = [(qid, prepare_query(q, size, views, on_cpu)) for qid, q, _ in batch if q is not None]
            encoded = encode_resized(self.predictor, [r for _, p in good for r in p.inputs],
                                     [v.viewed_size(p.image.shape[:2]) for _, p in good for v in views])
            frames = {qid: encoded[i * len(views) : (i + 1) * len(views)] for i, (qid, _) in enumerate(good)}
            for qid, _, error in batch:
                yield qid, frames.get(qid), error

    def _result(self, qid, session, frame, out: FrameOutput, view: View, supports, quality) -> TrackResult:
        label_map = logits_to_label_map(out.logits, session.obj_trait_ids, frame.size)
        scores = self.cycle_quality(frame, label_map, supports) if quality else {}
        ids = session.obj_trait_ids
        return TrackResult(
            qid,
            label_map=view.undo(label_map),
            quality=scores,
            object_score=dict(zip(ids, out.object_score.tolist())),
            predicted_iou=dict(zip(ids, out.predicted_iou.tolist())),
            orientation=view.turn,
            mirrored=view.mirrored,
        )

    def cycle_quality(self, frame: EncodedFrame, label_map: np.ndarray, supports: list[Support]) -> dict[int, float]:
        """Round-trip IoU per trait: track the query's prediction back onto each support
        with fresh memory and compare with the support's mask (mean over supports).

        A trait that was not found on the query scores 0: nothing can come back.
        """
        trait_ids = sorted({t for s in supports for t in s.trait_ids})
        present = [t for t in trait_ids if (label_map == t).any()]
        scores = {t: 0.0 for t in trait_ids}
        if not present:
            return scores
        back = TrackingSession(self.predictor, [frame], [label_map], present, batch_traits=self.batch_traits)
        per_trait: dict[int, list[float]] = {t: [] for t in present}
        for support, enc in zip(supports, self._encode_supports(supports)):
            returned = logits_to_label_map(back.track(enc), back.obj_trait_ids, enc.size)
            for t in present:
                if t in support.trait_ids:
                    per_trait[t].append(mask_iou(returned == t, support.mask == t))
        for t, values in per_trait.items():
            scores[t] = float(np.mean(values)) if values else 0.0
        return scores


def rotate(image: np.ndarray, degrees: int) -> np.ndarray:
    """``image`` turned counter-clockwise by a multiple of 90 degrees (negative: clockwise)."""
    if degrees % 90:
        raise ValueError(f"orientation must be a multiple of 90 degrees, got {degrees}")
    return np.ascontiguousarray(np.rot90(image, k=(degrees // 90) % 4))


@dataclass(frozen=True)
class View:
    """How a query is shown to SAM 2: flipped left-right when ``mirrored``, then turned
    ``turn`` degrees counter-clockwise."""

    turn: int = 0
    mirrored: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        return rotate(image[:, ::-1] if self.mirrored else image, self.turn)

    def viewed_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of an image of ``size`` in this view."""
        return (size[1], size[0]) if self.turn % 180 else tuple(size)

    def undo(self, image: np.ndarray) -> np.ndarray:
        """``image`` (a label map in this view) back in the query's own orientation."""
        back = rotate(image, -self.turn)
        return np.ascontiguousarray(back[:, ::-1]) if self.mirrored else back


@dataclass(frozen=True)
class PreparedQuery:
    """A query decoded and resized for SAM 2 ahead of time, one model input per view: the
    indexer's preparing threads make these while the model encodes earlier queries, so
    the model never waits for a decode or a resize."""

    image: np.ndarray
    image_size: int
    views: tuple[View, ...]
    #: Per view: resized to the model's size on the CPU, or at the image's own size for the
    #: device to resize.
    inputs: tuple[np.ndarray, ...]


def prepare_query(image: np.ndarray | PreparedQuery, image_size: int, views: list[View],
                  resize: bool = True) -> PreparedQuery:
    """``image`` as SAM 2's inputs in every view (a query already prepared for the same
    size and views is returned as it is). ``resize=False`` leaves the views at the image's
    own size for the device to resize (what a GPU does much faster than a CPU)."""
    if isinstance(image, PreparedQuery):
        if image.image_size == image_size and image.views == tuple(views):
            return image
        image = image.image
    viewed = (v.apply(image) for v in views)
    return PreparedQuery(image, image_size, tuple(views),
                         tuple(resize_for_model(x, image_size) if resize else x for x in viewed))


def resize_on_cpu(device: torch.device) -> bool:
    """Whether queries are resized for SAM 2 on the CPU (Pillow, exactly as SAM 2's own loader)
    or uploaded at their own size and resized on the device: on CUDA the device is faster."""
    return torch.device(device).type != "cuda"


class _Picker:
    """Chooses the view of a query whose tracking SAM 2 is surest of (mean object score)
    or that best survives the round trip back onto the supports (mean cycle IoU)."""

    def __init__(self, tracker: SSTTracker, supports: list[Support], by: str):
        self.tracker, self.supports, self.by = tracker, supports, by

    def __call__(self, session: TrackingSession, frames: list[EncodedFrame], outs: list[FrameOutput]) -> int:
        if len(outs) == 1:
            return 0
        if self.by == "object_score":
            scores = [float(o.object_score.mean()) for o in outs]
        else:
            scores = []
            for frame, out in zip(frames, outs):
                label_map = logits_to_label_map(out.logits, session.obj_trait_ids, frame.size)
                per_trait = self.tracker.cycle_quality(frame, label_map, self.supports)
                scores.append(float(np.mean(list(per_trait.values()))))
        return int(np.argmax(scores))


def parse_orientation(value: int | str) -> int | str:
    """``"auto"`` or an angle in :data:`ORIENTATIONS` (as int), from a CLI string or a config value."""
    if value == "auto":
        return value
    try:
        turn = int(value)
    except (TypeError, ValueError):
        turn = -1
    if turn not in ORIENTATIONS:
        raise ValueError(f"orientation must be 'auto' or one of {ORIENTATIONS}, got {value!r}")
    return turn


def views_for(orientation: int | str, mirror: bool) -> list[View]:
    """The views a query is tracked in for these settings (see :meth:`SSTTracker.segment`)."""
    turn = parse_orientation(orientation)
    turns = ORIENTATIONS if turn == "auto" else (turn,)
    flips = (False, True) if (mirror and turn == "auto") else (mirror,)
    return [View(t, m) for m in flips for t in turns]


def _load_with_sources(queries: Iterable[Query]) -> Iterator[tuple[tuple, Query]]:
    for query in queries:
        yield next(_load_queries([query])), query


def _load_queries(queries: Iterable[Query]) -> Iterator[tuple[str, np.ndarray | PreparedQuery | None, str | None]]:
    """Read each query lazily; a bad file becomes an error result, never an exception."""
    for qid, source in queries:
        if isinstance(source, PreparedQuery):
            yield qid, source, None
            continue
        if isinstance(source, np.ndarray):
            if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
                yield qid, None, f"{qid}: expected an HxWx3 uint8 RGB array, got {source.dtype} {source.shape}"
            else:
                yield qid, source, None
            continue
        try:
            yield qid, load_image(source), None
        except ImageLoadError as exc:
            yield qid, None, str(exc)


def _batched(it: Iterable, n: int) -> Iterator[list]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
