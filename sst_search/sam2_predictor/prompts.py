"""SAM 2's point, box and grid prompts on the tracker's own model, reading frames SST encoded.

Labeling by clicking and instance proposals use SAM 2's image predictor and automatic
mask generator. Both are built here on the video predictor's modules (one checkpoint, one
copy in memory) and read an :class:`~.frames.EncodedFrame` when one is given, so a photo
that is both prompted and tracked goes through the image encoder once.
"""

from __future__ import annotations

import numpy as np
import torch
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

from .frames import EncodedFrame, autocast, backbone_tokens, encode_images


class _EncodedImagePredictor(SAM2ImagePredictor):
    """SAM 2's image predictor on the video predictor's own modules (same checkpoint), reading
    the features of an :class:`EncodedFrame` when one is given, so proposing masks on a photo
    and tracking into it share one image-encoder pass.

    The official predictor assumes a 1024 px input (its feature sizes are constants); here
    they follow the model's ``image_size``.
    """

    def __init__(self, model: SAM2VideoPredictor, **kwargs):
        super().__init__(model, **kwargs)
        s = model.image_size
        self._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
        self.frame: EncodedFrame | None = None

    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        # The frame stands for the whole photo; crops (crop_n_layers > 0) are encoded afresh.
        frame = self.frame
        if frame is None or tuple(frame.size) != tuple(image.shape[:2]):
            frame = encode_images(self.model, [np.ascontiguousarray(image)])[0]
        self.reset_predictor()
        self._orig_hw = [tuple(image.shape[:2])]
        vision_feats, _, _ = backbone_tokens(self.model, frame.backbone)
        if self.model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        feats = [
            feat.permute(1, 2, 0).reshape(1, -1, *size)
            for feat, size in zip(vision_feats[::-1], self._bb_feat_sizes[::-1])
        ][::-1]
        self._features = {"image_embed": feats[-1], "high_res_feats": feats[:-1]}
        self._is_image_set = True


class MaskProposer:
    """SAM 2's automatic mask generator (a grid of point prompts, each prompt's masks kept by
    predicted IoU and stability, then box NMS) built on the tracker's own SAM 2 modules."""

    def __init__(self, predictor: SAM2VideoPredictor, **generator_options):
        self.generator = SAM2AutomaticMaskGenerator(predictor, output_mode="binary_mask", **generator_options)
        self.generator.predictor = _EncodedImagePredictor(predictor)
        self.device = predictor.device

    def propose(self, image: np.ndarray, frame: EncodedFrame | None = None) -> list[dict]:
        """SAM 2's mask records for ``image`` (``segmentation``, ``predicted_iou``,
        ``stability_score``...), reusing ``frame``'s features when given."""
        self.generator.predictor.frame = frame
        try:
            with torch.inference_mode(), autocast(self.device):
                return self.generator.generate(np.ascontiguousarray(image))
        finally:
            self.generator.predictor.frame = None


def image_predictor(model: SAM2VideoPredictor) -> SAM2ImagePredictor:
    """SAM 2's point/box image predictor over an already built model, so interactive labeling
    uses exactly the weights and input size of the index's tracker, without a second model."""
    return _EncodedImagePredictor(model)
