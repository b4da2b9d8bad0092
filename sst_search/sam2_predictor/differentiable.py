"""The two steps of SST inference rebuilt from ``SAM2Base`` building blocks, keeping autograd.

The video predictor's public methods run under ``torch.inference_mode``, so fine-tuning
(:mod:`sst_search.finetune.roundtrip`) re-creates the two steps SST inference takes (see
:class:`~.session.TrackingSession`) here, where SAM 2's private methods may be called:

1. *condition* (:func:`condition`): a frame plus a mask becomes a conditioning output.
   SAM 2.1 turns the mask straight into output logits
   (``use_mask_input_as_output_without_sam``) and derives the object pointer from the mask
   decoder; the memory is then encoded from the upsampled low-resolution logits, as
   ``propagate_in_video_preflight`` does, and rounded to bf16 as the predictor stores it.
2. *track* (:func:`track`): memory attention over that conditioning output, then the mask
   decoder, on a frame in slot 1 of a two-frame pseudo-video.

Inference binarises a user mask before the memory encoder
(``binarize_mask_from_pts_for_mem_enc``), which would cut the graph, so a ``soft`` mask is
encoded with ``is_mask_from_pts=False``: SAM 2 then applies its sigmoid (with its 20x/-10
scale) to the logits ``20 * mask - 10``, a smooth function of the soft mask. The image
encoder runs under ``no_grad`` (:func:`encode_backbone`): it is frozen and its features
are the same with or without an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base

from .frames import autocast, backbone_tokens, preprocess


@dataclass
class FrameFeatures:
    """One frame's image-encoder output, flattened and repeated for ``batch`` objects."""

    vision_feats: list[torch.Tensor]
    vision_pos: list[torch.Tensor]
    feat_sizes: list[tuple[int, int]]


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


def condition(model: SAM2Base, frame: FrameFeatures, masks: torch.Tensor, soft: bool) -> dict:
    """A conditioning output (memory + object pointer) for ``masks`` on ``frame``: what
    :func:`track` reads, opaque to its callers.

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
    features, pos = model._encode_new_memory(
        current_vision_feats=frame.vision_feats,
        feat_sizes=frame.feat_sizes,
        pred_masks_high_res=high_res,
        object_score_logits=out["object_score_logits"],
        is_mask_from_pts=not soft,
    )
    # The predictor stores memory in bf16; the cast passes gradients straight through.
    out["maskmem_features"] = features.to(torch.bfloat16).to(features.dtype)
    out["maskmem_pos_enc"] = pos
    return out


def track(model: SAM2Base, frame: FrameFeatures, conditioning: dict) -> dict:
    """Track the conditioning objects onto ``frame`` (slot 1 of a two-frame pseudo-video):
    ``logits`` of the mask SAM 2 picks (highest predicted IoU), its ``candidates`` with
    their predicted ``ious`` (a loss needs them), and the ``object_scores``.

    Unlike ``track_step`` this keeps the candidates and IoUs, which SAM 2's frame step
    computes and drops.
    """
    _, sam_outputs, _, _ = model._track_step(
        frame_idx=1,
        is_init_cond_frame=False,
        current_vision_feats=frame.vision_feats,
        current_vision_pos_embeds=frame.vision_pos,
        feat_sizes=frame.feat_sizes,
        point_inputs=None,
        mask_inputs=None,
        output_dict={"cond_frame_outputs": {0: conditioning}, "non_cond_frame_outputs": {}},
        num_frames=2,
        track_in_reverse=False,
        prev_sam_mask_logits=None,
    )
    _, candidates, ious, _, chosen, _, object_scores = sam_outputs
    return {
        "logits": chosen.float(),
        "candidates": candidates.float(),
        "ious": ious.float(),
        "object_scores": object_scores.float(),
    }
