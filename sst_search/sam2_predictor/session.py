"""SAM 2 sessions with fixed conditioning frames: how SST tracks, in SAM 2's own arithmetic.

A :class:`TrackingSession` holds SAM 2's inference state for one pseudo-video whose first
frames are supports with masks. It adds the masks and encodes their memory once, then
tracks any number of frames from it: pairwise queries in batches from the supports'
memory (projected once per session), or chain frames through SAM 2's own frame step, kept
as memory for the next. SST's tracker (:mod:`sst_search.tracking`), instance finding and
fine-tuning's checks build on this class and never see the state itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from .frames import EncodedFrame, autocast
from .predictor import InMemoryVideoPredictor


@dataclass
class FrameOutput:
    """One tracked frame: low-res logits ``(K, 1, h, w)``, SAM 2's object score logit
    ``(K,)`` (above 0 SAM 2 predicts the trait present, below 0 absent) and the mask
    decoder's predicted IoU of each mask ``(K,)``."""

    logits: torch.Tensor
    object_score: torch.Tensor
    predicted_iou: torch.Tensor


class TrackingSession:
    """A SAM 2 inference state whose conditioning frames (and their memory) are fixed; the
    state itself stays private to this package.

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

    A conditioning mask is a label map (object k on pixels equal to k) or, for objects that
    may overlap, a stack of boolean masks (object k is ``mask[k - 1]``).
    """

    def __init__(
        self,
        predictor: InMemoryVideoPredictor,
        cond_frames: list[EncodedFrame],
        cond_masks: list[np.ndarray],
        trait_ids: list[int],
        total_frames: int | None = None,
        batch_traits: bool = True,
    ):
        self.predictor = predictor
        self.trait_ids = list(trait_ids)
        self.num_cond = len(cond_frames)
        total = total_frames if total_frames is not None else self.num_cond + 1
        self._state = predictor.init_state_from_frames(list(cond_frames) + [None] * (total - self.num_cond))
        # How far back SAM 2 can look: older non-conditioning outputs are dropped.
        self._horizon = max(predictor.num_maskmem, predictor.max_obj_ptrs_in_encoder)
        with torch.inference_mode(), autocast(predictor.device):
            for frame_idx, mask in enumerate(cond_masks):
                drawn = {tid: mask[tid - 1] if mask.ndim == 3 else mask == tid for tid in self.trait_ids}
                drawn = {tid: m for tid, m in drawn.items() if m.any()}
                if drawn:
                    masks = np.stack(list(drawn.values())).astype(bool, copy=False)
                    predictor.add_new_masks(self._state, frame_idx, list(drawn), masks)
            missing = [t for t in self.trait_ids if t not in self._state["obj_id_to_idx"]]
            if missing:
                raise ValueError(f"traits {missing} appear in no conditioning mask")
            predictor.propagate_in_video_preflight(self._state)
        self._groups = self._batches(batch_traits)
        self._support_memory: list | None = None  # built on the first pairwise query
        # Memory is encoded; the conditioning frames' pixels and features are not needed.
        for frame_idx in range(self.num_cond):
            predictor.drop_frame(self._state, frame_idx)

    @property
    def obj_trait_ids(self) -> list[int]:
        """Trait ids in SAM 2's object order (the order of the logits)."""
        return [self._state["obj_idx_to_id"][i] for i in range(len(self._state["obj_idx_to_id"]))]

    def conditioning_logits(self, frame_idx: int) -> torch.Tensor:
        """What SAM 2 outputs for a conditioning frame; traits absent there get SAM 2's
        no-object score (finite, so resizing the logits cannot produce NaNs)."""
        logits = []
        for obj_idx in range(len(self._state["obj_ids"])):
            out = self._state["output_dict_per_obj"][obj_idx]["cond_frame_outputs"].get(frame_idx)
            if out is None:
                logits.append(torch.full_like(logits[-1] if logits else self._any_cond_logits(), NO_OBJ_SCORE))
            else:
                logits.append(out["pred_masks"].float())
        return torch.cat(logits, dim=0)

    def _any_cond_logits(self) -> torch.Tensor:
        for obj_out in self._state["output_dict_per_obj"].values():
            for out in obj_out["cond_frame_outputs"].values():
                return out["pred_masks"].float()
        raise RuntimeError("session has no conditioning outputs")

    def _batches(self, batch_traits: bool) -> list[tuple[list[int], dict]]:
        """Objects that run together through memory attention and the mask decoder, with
        the output dict they read and write. Batched, traits conditioned on the same
        supports share one batch (usually all of them); otherwise one object per batch,
        exactly as the official predictor runs them."""
        outputs = self._state["output_dict_per_obj"]
        if not batch_traits:
            return [([i], outputs[i]) for i in range(len(outputs))]
        by_supports: dict[tuple[int, ...], list[int]] = {}
        for i in range(len(outputs)):
            by_supports.setdefault(tuple(sorted(outputs[i]["cond_frame_outputs"])), []).append(i)
        return [(idx, self.predictor.stack_object_outputs(self._state, idx)) for idx in by_supports.values()]

    @torch.inference_mode()
    def track(self, frame: EncodedFrame, frame_idx: int | None = None, keep_memory: bool = False) -> torch.Tensor:
        """Low-resolution logits ``(num_traits, 1, h, w)`` for ``frame``."""
        return self.track_frame(frame, frame_idx, keep_memory).logits

    @torch.inference_mode()
    def track_frame(self, frame: EncodedFrame, frame_idx: int | None = None, keep_memory: bool = False) -> FrameOutput:
        """Logits and SAM 2's own confidences for ``frame``, all traits in SAM 2's object order.

        Without ``frame_idx`` and ``keep_memory`` the frame is a pairwise query (see
        :meth:`track_frames`); otherwise it runs through SAM 2's own frame step.
        """
        if frame_idx is None and not keep_memory:
            return self.track_frames([frame])[0]
        p, state = self.predictor, self._state
        p.set_frame(state, frame_idx, frame)
        n = len(state["obj_ids"])
        logits, scores, ious = [None] * n, [None] * n, [None] * n
        with autocast(p.device):
            for obj_indices, output_dict in self._groups:
                out, pred, iou = p.track_objects(state, output_dict, frame_idx, len(obj_indices), keep_memory)
                for j, i in enumerate(obj_indices):
                    logits[i] = pred[j : j + 1].float()
                    scores[i] = out["object_score_logits"][j].float()
                    ious[i] = iou[j]
                if keep_memory:
                    out["pred_masks"] = None  # only memory and pointers are read later
                    output_dict["non_cond_frame_outputs"][frame_idx] = out
                    for old in [t for t in output_dict["non_cond_frame_outputs"] if t <= frame_idx - self._horizon]:
                        del output_dict["non_cond_frame_outputs"][old]
        p.drop_frame(state, frame_idx)
        return FrameOutput(torch.cat(logits), torch.cat(scores).cpu(), torch.stack(ious).cpu())

    @torch.inference_mode()
    def track_frames(self, frames: list[EncodedFrame]) -> list[FrameOutput]:
        """Pairwise queries: each frame tracked from the supports alone, never kept as memory.

        All frames and all traits of a batch go through memory attention and the mask
        decoder in one call; the supports' memory is projected once per session.
        """
        if not frames:
            return []
        p, n, q = self.predictor, len(self._state["obj_ids"]), len(frames)
        logits: list[torch.Tensor | None] = [None] * (q * n)  # query-major, objects in SAM 2's order
        scores = torch.empty(q, n, device=p.device)
        ious = torch.empty(q, n, device=p.device)
        with autocast(p.device):
            if self._support_memory is None:
                self._support_memory = [
                    p.support_memory(self._state, output_dict, self.num_cond, len(obj_indices))
                    for obj_indices, output_dict in self._groups
                ]
            for (obj_indices, _), memory in zip(self._groups, self._support_memory):
                out = p.track_from_support(memory, frames)
                k = len(obj_indices)
                for j, i in enumerate(obj_indices):
                    for f in range(q):
                        logits[f * n + i] = out.logits[f * k + j : f * k + j + 1]
                scores[:, obj_indices] = out.object_score.view(q, k).float()
                ious[:, obj_indices] = out.predicted_iou.view(q, k).float()
        # One copy of every query's confidences to the host, not one synchronisation per query.
        scores, ious = scores.cpu(), ious.cpu()
        return [FrameOutput(torch.cat(logits[f * n : (f + 1) * n]), scores[f], ious[f]) for f in range(q)]
