"""The differentiable SST round trip: support -> query -> support, on SAM 2's own primitives.

The video predictor's public methods run under ``torch.inference_mode``, so this module
re-creates exactly the two steps SST inference takes (see :mod:`sst_search.tracking`) from
``SAM2Base`` building blocks, keeping the autograd graph:

1. *condition*: a frame plus a mask becomes a conditioning output. SAM 2.1 turns the mask
   straight into output logits (``use_mask_input_as_output_without_sam``) and derives the
   object pointer from the mask decoder; the memory is then encoded from the upsampled
   low-resolution logits, as ``propagate_in_video_preflight`` does, and rounded to bf16 as
   the predictor stores it.
2. *track*: memory attention over that conditioning output, then the mask decoder, on a
   frame in slot 1 of a two-frame pseudo-video.

Where gradients flow: the query prediction enters the return trip as ``sigmoid(logits)``,
a soft mask. Inference binarises a user mask before the memory encoder
(``binarize_mask_from_pts_for_mem_enc``), which would cut the graph, so the soft mask is
encoded with ``is_mask_from_pts=False``: SAM 2 then applies its sigmoid (with its 20x/-10
scale) to the logits ``20 * mask - 10``, a smooth function of the soft mask. The loss on
the support therefore reaches the trained parameters three ways: the return trip's memory
attention and mask decoder, the query mask through the memory encoder (frozen but
differentiable), and the query mask through the mask decoder that makes the object
pointer. The image encoder runs under ``no_grad``: it is frozen and its features are the
same with or without an adapter.

The model stays in eval mode throughout (no dropout, the inference memory selection), so
training sees the network that inference will run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base

from ..sam2_predictor import autocast, backbone_tokens, encode_memory, preprocess, track_step_outputs

#: SAM 2 marks an absent object with logits of -1024; BCE on those would be ~1024 per pixel
#: and swamp the loss without carrying a gradient, so loss logits are clamped to this range.
LOGIT_CLAMP = 32.0


@dataclass
class FrameFeatures:
    """One frame's image-encoder output, flattened and repeated for ``batch`` objects."""

    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]


@dataclass
class RoundTrip:
    """Logits at model resolution, ``(num_traits, 1, S, S)``, and object scores ``(num_traits, 1)``."""

    query_logits: torch.Tensor
    query_object_scores: torch.Tensor
    return_logits: torch.Tensor
    return_candidates: torch.Tensor  # (num_traits, M, S, S): SAM 2's candidate masks
    return_ious: torch.Tensor  # (num_traits, M): their predicted IoUs
    return_object_scores: torch.Tensor


@torch.no_grad()
def encode_backbone(model: SAM2Base, image: np.ndarray) -> dict:
    """Frozen image-encoder features of one RGB image (plain tensors, usable by autograd)."""
    x = preprocess(image, model.image_size)[None].to(model.device)
    with autocast(model.device):
        return model.forward_image(x)


def frame_features(model: SAM2Base, backbone: dict, batch: int) -> FrameFeatures:
    """Repeat one frame's features along SAM 2's batch dimension: one entry per trait."""
    expanded = {
        key: [t.expand(batch, -1, -1, -1) for t in backbone[key]] for key in ("backbone_fpn", "vision_pos_enc")
    }
    feats, pos, sizes = backbone_tokens(model, expanded)
    return FrameFeatures(feats, pos, sizes)


def resize_masks(masks: np.ndarray, image_size: int, device: torch.device) -> torch.Tensor:
    """Binary ``(T, H, W)`` masks -> ``(T, 1, S, S)`` floats, resized as ``add_new_mask`` does."""
    m = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None].to(device)
    if m.shape[-2:] != (image_size, image_size):
        m = F.interpolate(m, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        m = (m >= 0.5).float()
    return m


def condition(model: SAM2Base, frame: FrameFeatures, masks: torch.Tensor, soft: bool) -> dict:
    """A conditioning output (memory + object pointer) for ``masks`` on ``frame``.

    ``soft`` masks keep their gradient through the memory encoder; hard ones are binarised
    there exactly as inference does with a user-given mask.
    """
    out = model.track_step(
        frame_idx=0,
        is_init_cond_frame=True,
        current_vision_feats=frame.vision_feats,
        current_vision_pos_embeds=frame.vision_pos,
        feat_sizes=frame.feat_sizes,
        point_inputs=None,
        mask_inputs=masks,
        output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
        num_frames=2,
        run_mem_encoder=False,
    )
    size = (model.image_size, model.image_size)
    high_res = F.interpolate(out["pred_masks"].float(), size=size, mode="bilinear", align_corners=False)
    features, pos = encode_memory(model, frame.vision_feats, frame.feat_sizes, high_res, out["object_score_logits"],
                                  binarize=not soft)
    # The predictor stores memory in bf16; the cast passes gradients straight through.
    out["maskmem_features"] = features.to(torch.bfloat16).to(features.dtype)
    out["maskmem_pos_enc"] = pos
    return out


def track(model: SAM2Base, frame: FrameFeatures, conditioning: dict) -> dict:
    """Track the conditioning objects onto ``frame`` (slot 1 of a two-frame pseudo-video).

    Besides the mask SAM 2 picks (highest predicted IoU), the candidate masks and their
    predicted IoUs are returned: the loss needs them (see :func:`cycle_loss`).
    """
    sam_outputs = track_step_outputs(
        model, 1, frame.vision_feats, frame.vision_pos, frame.feat_sizes,
        {"cond_frame_outputs": {0: conditioning}, "non_cond_frame_outputs": {}}, num_frames=2,
    )
    _, candidates, ious, _, chosen, _, object_scores = sam_outputs
    return {
        "logits": chosen.float(),
        "candidates": candidates.float(),
        "ious": ious.float(),
        "object_scores": object_scores.float(),
    }


def round_trip(model: SAM2Base, support: FrameFeatures, support_masks: torch.Tensor, query: FrameFeatures) -> RoundTrip:
    """Support -> query with the labeled masks, then query -> support with fresh memory
    holding only the (soft) query prediction.

    A trait SAM 2 finds nowhere on the query has logits of -1024, whose sigmoid is exactly
    0, so the return trip sees "no object" for it, as inference does.
    """
    forward = track(model, query, condition(model, support, support_masks, soft=False))
    back = track(model, support, condition(model, query, torch.sigmoid(forward["logits"]), soft=True))
    return RoundTrip(
        query_logits=forward["logits"],
        query_object_scores=forward["object_scores"],
        return_logits=back["logits"],
        return_candidates=back["candidates"],
        return_ious=back["ious"],
        return_object_scores=back["object_scores"],
    )


def _bce_dice(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask BCE and Dice over the trailing pixel dimension."""
    logits = logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * target).sum(-1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)
    return bce, dice


def cycle_loss(
    out: RoundTrip, target: torch.Tensor, iou_weight: float = 1.0, object_weight: float = 1.0
) -> dict[str, torch.Tensor]:
    """The round-trip loss against the support masks, per trait then averaged.

    ``cycle`` is BCE + Dice of the mask SAM 2 returns (what inference would output); it is
    the number to watch. What is minimised (``total``) follows SAM 2's own training recipe,
    because SAM 2 picks one of several candidate masks by its predicted IoU and a plain loss
    on the picked mask jumps whenever that choice flips:

    - ``mask``: BCE + Dice of the best candidate per trait;
    - ``iou``: L1 between predicted and actual IoU of every candidate, so the choice at
      inference learns to follow the best candidate;
    - ``object``: BCE pushing the object score towards "present" (every support trait is on
      the support); a trait whose score falls below zero gets SAM 2's constant no-object
      mask and, with it, no gradient at all.
    """
    target = target.flatten(1).to(out.return_logits.dtype)  # (T, P)
    bce, dice = _bce_dice(out.return_logits.flatten(1), target)
    candidates = out.return_candidates.flatten(2)  # (T, M, P)
    cand_bce, cand_dice = _bce_dice(candidates, target[:, None].expand_as(candidates))
    mask = (cand_bce + cand_dice).min(dim=1).values
    with torch.no_grad():
        hard = (candidates > 0).float()
        inter = (hard * target[:, None]).sum(-1)
        union = hard.sum(-1) + target[:, None].sum(-1) - inter
        actual_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    iou = (out.return_ious - actual_iou).abs().mean(-1)
    scores = out.return_object_scores.flatten()
    obj = F.binary_cross_entropy_with_logits(scores, torch.ones_like(scores), reduction="none")
    total = mask.mean() + iou_weight * iou.mean() + object_weight * obj.mean()
    return {
        "bce": bce.mean(),
        "dice": dice.mean(),
        "cycle": (bce + dice).mean(),
        "mask": mask.mean(),
        "iou": iou.mean(),
        "object": obj.mean(),
        "total": total,
    }
