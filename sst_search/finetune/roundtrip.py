"""The differentiable SST round trip, support -> query -> support, and its loss.

The two steps of SST inference, *condition* (a frame plus a mask becomes memory) and
*track* (memory attention and the mask decoder on the next frame), come from the SAM 2
boundary with the autograd graph kept (see :mod:`sst_search.sam2_predictor.differentiable`).

Where gradients flow: the query prediction enters the return trip as ``sigmoid(logits)``,
a soft mask, conditioned with ``soft=True`` so that the memory encoder does not binarise
it. The loss on the support therefore reaches the trained parameters three ways: the
return trip's memory attention and mask decoder, the query mask through the memory
encoder (frozen but differentiable), and the query mask through the mask decoder that
makes the object pointer. The image encoder is frozen and runs without a graph.

The model stays in eval mode throughout (no dropout, the inference memory selection), so
training sees the network that inference will run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..sam2_predictor import (
    FrameFeatures,
    InMemoryVideoPredictor,
    condition,
    encode_backbone,
    frame_features,
    resize_masks,
    track,
)

#: Fine-tuning's view of SAM 2's differentiable steps (:mod:`.train` prepares frames and
#: targets with them), next to what this module adds.
__all__ = [
    "LOGIT_CLAMP",
    "RoundTrip",
    "condition",
    "cycle_loss",
    "encode_backbone",
    "frame_features",
    "resize_masks",
    "round_trip",
    "track",
]

#: SAM 2 marks an absent object with logits of -1024; BCE on those would be ~1024 per pixel
#: and swamp the loss without carrying a gradient, so loss logits are clamped to this range.
LOGIT_CLAMP = 32.0


@dataclass
class RoundTrip:
    """Logits at model resolution, ``(num_traits, 1, S, S)``, and object scores ``(num_traits, 1)``."""

    query_logits: torch.Tensor
    query_object_scores: torch.Tensor
    return_logits: torch.Tensor
    return_candidates: torch.Tensor  # (num_traits, M, S, S): SAM 2's candidate masks
    return_ious: torch.Tensor  # (num_traits, M): their predicted IoUs
    return_object_scores: torch.Tensor


def round_trip(
    model: InMemoryVideoPredictor, support: FrameFeatures, support_masks: torch.Tensor, query: FrameFeatures
) -> RoundTrip:
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
