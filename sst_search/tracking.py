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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from .images import ImageLoadError, load_image
from .masks import logits_to_label_map, mask_iou
from .ordering import global_descriptor, greedy_chain
from .references import Support
from .sam2_predictor import (
    EncodedFrame,
    InMemoryVideoPredictor,
    autocast,
    build_predictor,
    encode_images,
)
from .weights import ResolvedWeights, resolve_sam2_weights

MODES = ("pairwise", "chain")

#: A query is an id plus either pixels already in memory or a path to read them from.
Query = tuple[str, "np.ndarray | str | Path"]


@dataclass
class TrackResult:
    """The outcome for one query; ``error`` is set (and ``label_map`` None) when it failed."""

    query_id: str
    label_map: np.ndarray | None = None
    quality: dict[int, float] = field(default_factory=dict)
    error: str | None = None


class TrackingSession:
    """A SAM 2 state whose conditioning frames (and their memory) are fixed.

    ``track`` runs one more frame through memory attention and the mask decoder. With
    ``keep_memory`` the frame's prediction is encoded and attended to by later frames
    (chain mode); without it the state is left exactly as before (pairwise mode).

    A trait is conditioned only on the supports where it is drawn. A support whose mask
    lacks a trait contributes nothing to that trait: no guess of SAM 2 on a labeled image
    becomes memory, whether the annotator left the trait out because it is hidden,
    absent or just not labeled. This equals the official predictor started at the first
    query (``propagate_in_video(start_frame_idx=len(supports))``); its default start
    would instead track the trait through that support frame and remember the guess.
    Tests in ``tests/test_sam2_equivalence.py`` check both statements.
    """

    def __init__(
        self,
        predictor: InMemoryVideoPredictor,
        cond_frames: list[EncodedFrame],
        cond_masks: list[np.ndarray],
        trait_ids: list[int],
        total_frames: int | None = None,
    ):
        self.predictor = predictor
        self.trait_ids = list(trait_ids)
        self.num_cond = len(cond_frames)
        total = total_frames if total_frames is not None else self.num_cond + 1
        self.state = predictor.init_state_from_frames(list(cond_frames) + [None] * (total - self.num_cond))
        # How far back SAM 2 can look: older non-conditioning outputs are dropped.
        self._horizon = max(predictor.num_maskmem, predictor.max_obj_ptrs_in_encoder)
        with torch.inference_mode(), autocast(predictor.device):
            for frame_idx, mask in enumerate(cond_masks):
                for tid in self.trait_ids:
                    m = mask == tid
                    if m.any():
                        predictor.add_new_mask(self.state, frame_idx, tid, torch.from_numpy(m))
            missing = [t for t in self.trait_ids if t not in self.state["obj_id_to_idx"]]
            if missing:
                raise ValueError(f"traits {missing} appear in no conditioning mask")
            predictor.propagate_in_video_preflight(self.state)
        # Memory is encoded; the conditioning frames' pixels and features are not needed.
        for frame_idx in range(self.num_cond):
            predictor.drop_frame(self.state, frame_idx)

    @property
    def obj_trait_ids(self) -> list[int]:
        """Trait ids in SAM 2's object order (the order of the logits)."""
        return [self.state["obj_idx_to_id"][i] for i in range(len(self.state["obj_idx_to_id"]))]

    def conditioning_logits(self, frame_idx: int) -> torch.Tensor:
        """What SAM 2 outputs for a conditioning frame; traits absent there get SAM 2's
        no-object score (finite, so resizing the logits cannot produce NaNs)."""
        logits = []
        for obj_idx in range(len(self.state["obj_ids"])):
            out = self.state["output_dict_per_obj"][obj_idx]["cond_frame_outputs"].get(frame_idx)
            if out is None:
                logits.append(torch.full_like(logits[-1] if logits else self._any_cond_logits(), NO_OBJ_SCORE))
            else:
                logits.append(out["pred_masks"].float())
        return torch.cat(logits, dim=0)

    def _any_cond_logits(self) -> torch.Tensor:
        for obj_out in self.state["output_dict_per_obj"].values():
            for out in obj_out["cond_frame_outputs"].values():
                return out["pred_masks"].float()
        raise RuntimeError("session has no conditioning outputs")

    @torch.inference_mode()
    def track(self, frame: EncodedFrame, frame_idx: int | None = None, keep_memory: bool = False) -> torch.Tensor:
        """Low-resolution logits ``(num_traits, 1, h, w)`` for ``frame``."""
        p, state = self.predictor, self.state
        frame_idx = self.num_cond if frame_idx is None else frame_idx
        p.set_frame(state, frame_idx, frame)
        logits = []
        with autocast(p.device):
            for obj_idx in range(len(state["obj_ids"])):
                obj_out = state["output_dict_per_obj"][obj_idx]
                out, pred = p._run_single_frame_inference(
                    inference_state=state,
                    output_dict=obj_out,
                    frame_idx=frame_idx,
                    batch_size=1,
                    is_init_cond_frame=False,
                    point_inputs=None,
                    mask_inputs=None,
                    reverse=False,
                    run_mem_encoder=keep_memory,
                )
                if keep_memory:
                    out["pred_masks"] = None  # only memory and pointers are read later
                    obj_out["non_cond_frame_outputs"][frame_idx] = out
                    for old in [t for t in obj_out["non_cond_frame_outputs"] if t <= frame_idx - self._horizon]:
                        del obj_out["non_cond_frame_outputs"][old]
                logits.append(pred.float())
        p.drop_frame(state, frame_idx)
        return torch.cat(logits, dim=0)


class SSTTracker:
    """Segments query specimens from labeled supports with a SAM 2 video predictor."""

    def __init__(
        self,
        predictor: InMemoryVideoPredictor,
        model: str,
        weights: ResolvedWeights,
        max_chain_length: int = 256,
    ):
        self.predictor = predictor
        self.model = model
        self.weights = weights
        self.max_chain_length = max_chain_length
        #: sha256 of the fine-tuning adapter applied to the model (see sst_search.finetune).
        self.adapter_sha256: str | None = None
        self._support_cache: dict[str, EncodedFrame] = {}

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
            self.predictor, self._encode_supports(supports), [s.mask for s in supports], trait_ids, total_frames
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
    ) -> Iterator[TrackResult]:
        """Yield one :class:`TrackResult` per query (chain mode yields in chain order).

        ``batch_size`` queries share one image-encoder pass; by default 8 on CUDA and 1 on
        CPU, where larger batches measured slower per image at 512 px and above.
        ``cache_support=False`` rebuilds the supports' memory for every query; it exists to
        check that caching changes nothing and as the reference for benchmarks.
        """
        if not supports:
            raise ValueError("at least one support is needed")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        if batch_size is None:
            batch_size = 8 if self.predictor.device.type == "cuda" else 1
        if mode == "pairwise":
            yield from self._pairwise(supports, queries, quality, batch_size, cache_support)
        else:
            yield from self._chain(supports, queries, quality, batch_size)

    def _pairwise(self, supports, queries, quality, batch_size, cache_support) -> Iterator[TrackResult]:
        session = self._session(supports) if cache_support else None
        for qid, frame, error in self._encoded(queries, batch_size if cache_support else 1):
            if error is not None:
                yield TrackResult(qid, error=error)
                continue
            current = session or self._session(supports)
            yield self._result(qid, current, frame, current.track(frame), supports, quality)

    def _chain(self, supports, queries, quality, batch_size) -> Iterator[TrackResult]:
        # First pass: one cheap descriptor per query to order the chain; pixels of files
        # are re-read when their frame comes up, so the whole collection is never held.
        sources, descriptors = {}, []
        for (qid, img, error), (_, source) in _load_with_sources(queries):
            if error is not None:
                yield TrackResult(qid, error=error)
                continue
            sources[qid] = source
            descriptors.append(global_descriptor(img))
        if not sources:
            return
        ids = list(sources)
        start = np.mean([global_descriptor(s.image) for s in supports], axis=0)
        order = [ids[i] for i in greedy_chain(start, np.stack(descriptors))]
        for chain in _chunks(order, self.max_chain_length):
            session = self._session(supports, total_frames=len(supports) + len(chain))
            position = {qid: session.num_cond + i for i, qid in enumerate(chain)}
            for qid, frame, error in self._encoded(((qid, sources[qid]) for qid in chain), batch_size):
                if error is not None:
                    yield TrackResult(qid, error=error)
                    continue
                logits = session.track(frame, frame_idx=position[qid], keep_memory=True)
                yield self._result(qid, session, frame, logits, supports, quality)

    def _encoded(self, queries: Iterable[Query], batch_size: int) -> Iterator[tuple[str, EncodedFrame | None, str | None]]:
        """Load and encode queries ``batch_size`` at a time, in order; failures pass through."""
        for batch in _batched(_load_queries(queries), batch_size):
            good = [(qid, img) for qid, img, _ in batch if img is not None]
            frames = dict(zip((q for q, _ in good), encode_images(self.predictor, [img for _, img in good])))
            for qid, _, error in batch:
                yield qid, frames.get(qid), error

    def _result(self, qid, session, frame, logits, supports, quality) -> TrackResult:
        label_map = logits_to_label_map(logits, session.obj_trait_ids, frame.size)
        scores = self.cycle_quality(frame, label_map, supports) if quality else {}
        return TrackResult(qid, label_map=label_map, quality=scores)

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
        back = TrackingSession(self.predictor, [frame], [label_map], present)
        per_trait: dict[int, list[float]] = {t: [] for t in present}
        for support, enc in zip(supports, self._encode_supports(supports)):
            returned = logits_to_label_map(back.track(enc), back.obj_trait_ids, enc.size)
            for t in present:
                if t in support.trait_ids:
                    per_trait[t].append(mask_iou(returned == t, support.mask == t))
        for t, values in per_trait.items():
            scores[t] = float(np.mean(values)) if values else 0.0
        return scores


def _load_with_sources(queries: Iterable[Query]) -> Iterator[tuple[tuple, Query]]:
    for query in queries:
        yield next(_load_queries([query])), query


def _load_queries(queries: Iterable[Query]) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """Read each query lazily; a bad file becomes an error result, never an exception."""
    for qid, source in queries:
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


def build_tracker(
    model: str = "sam2.1-hiera-tiny",
    weights: str | Path | None = None,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    allow_download: bool | None = None,
    max_chain_length: int = 256,
    adapter: str | Path | None = None,
) -> SSTTracker:
    """Resolve weights, build the real SAM 2.1 video predictor and wrap it for SST.

    ``adapter`` is a fine-tuned adapter file; it must have been trained on this very base
    model (name, weights, image size), otherwise ``AdapterMismatchError`` is raised.
    """
    resolved = resolve_sam2_weights(model, weights, allow_download=allow_download)
    predictor = build_predictor(model, resolved, image_size=image_size, device=device)
    tracker = SSTTracker(predictor, model, resolved, max_chain_length=max_chain_length)
    if adapter is not None:
        from .finetune import apply_adapter  # fine-tuning pulls in peft; plain tracking does not need it

        apply_adapter(tracker, adapter)
    return tracker
