"""SAM 2's video predictor fed from memory instead of a folder of JPEGs.

``SAM2VideoPredictor.init_state`` only accepts a video path. SST builds pseudo-videos out
of specimen photos that are already in memory, reuses the support's features across
thousands of queries and encodes queries in batches, so this module adds exactly that to
the official predictor and nothing else: a state built from :class:`EncodedFrame` objects
whose image features were computed up front, batched, by :func:`encode_images`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.build_sam import build_sam2_video_predictor
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

from .weights import ResolvedWeights, get_model_spec

# SAM 2 was trained on ImageNet-normalised inputs.
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

#: Seed for random initialisation, so ``--weights random`` runs are reproducible across
#: processes and machines (a Ray worker and the local engine must build the same model).
RANDOM_INIT_SEED = 0


@dataclass
class EncodedFrame:
    """A frame ready for tracking: its original size and its image-encoder output."""

    size: tuple[int, int]  # original (H, W)
    image: torch.Tensor  # (1, 3, S, S), normalised
    backbone: dict  # SAM2Base.forward_image output for this frame (batch of 1)


class InMemoryVideoPredictor(SAM2VideoPredictor):
    """The official video predictor, with states built from pre-encoded frames."""

    def init_state_from_frames(self, frames: list[EncodedFrame | None]) -> dict:
        """A predictor state over ``frames``; ``None`` marks a slot filled later by
        :meth:`set_frame` (the query slot of a pairwise session)."""
        state: dict = {
            "images": _FrameImages(frames),
            "num_frames": len(frames),
            "offload_video_to_cpu": False,
            "offload_state_to_cpu": False,
            # Outputs stay at model resolution; callers resize to each frame's own size.
            "video_height": self.image_size,
            "video_width": self.image_size,
            "device": self.device,
            "storage_device": self.device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }
        for idx, frame in enumerate(frames):
            if frame is not None:
                self.set_frame(state, idx, frame)
        return state

    @staticmethod
    def set_frame(state: dict, frame_idx: int, frame: EncodedFrame) -> None:
        state["images"].frames[frame_idx] = frame
        state["cached_features"][frame_idx] = (frame.image, frame.backbone)

    @staticmethod
    def drop_frame(state: dict, frame_idx: int) -> None:
        """Forget a frame's pixels and features once its memory has been encoded."""
        state["images"].frames[frame_idx] = None
        state["cached_features"].pop(frame_idx, None)

    def stack_object_outputs(self, state: dict, obj_indices: list[int]) -> dict:
        """One output dict for several objects, each frame's memories stacked along the
        batch dimension in ``obj_indices`` order: what SAM 2 attends to when the objects
        run as one batch. The objects must have outputs on the same frames."""
        per_obj = [state["output_dict_per_obj"][i] for i in obj_indices]
        stacked: dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        for key, frames in stacked.items():
            if any(set(o[key]) != set(per_obj[0][key]) for o in per_obj):
                raise ValueError(f"objects {obj_indices} have {key} on different frames; they cannot share a batch")
            for t in per_obj[0][key]:
                frames[t] = _stack_outputs([o[key][t] for o in per_obj])
        return stacked

    def track_objects(
        self, state: dict, output_dict: dict, frame_idx: int, num_objects: int, keep_memory: bool
    ) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Track ``num_objects`` objects (memories stacked in ``output_dict``) into a
        non-conditioning frame in one pass of memory attention and the mask decoder.

        Returns SAM 2's compact output (memory when ``keep_memory``), the low-resolution
        mask logits ``(B, 1, h, w)`` and the decoder's predicted IoU of each chosen mask ``(B,)``.
        """
        out, pred = self._run_single_frame_inference(
            inference_state=state,
            output_dict=output_dict,
            frame_idx=frame_idx,
            batch_size=num_objects,
            is_init_cond_frame=False,
            point_inputs=None,
            mask_inputs=None,
            reverse=False,
            run_mem_encoder=keep_memory,
        )
        # With several candidate masks SAM 2 keeps the one with the highest predicted IoU.
        return out, pred, self._last_ious.float().max(dim=-1).values

    def _forward_sam_heads(self, *args, **kwargs):
        outputs = super()._forward_sam_heads(*args, **kwargs)
        self._last_ious = outputs[2]  # predicted IoU per candidate mask; SAM 2 drops it from its state
        return outputs

    def _get_image_feature(self, inference_state, frame_idx, batch_size):
        if frame_idx not in inference_state["cached_features"]:
            raise RuntimeError(
                f"frame {frame_idx} has no encoded features; pseudo-video frames must be "
                "encoded with encode_images before tracking"
            )
        return super()._get_image_feature(inference_state, frame_idx, batch_size)


def _stack_outputs(outs: list[dict]) -> dict:
    def cat(key):
        return None if outs[0][key] is None else torch.cat([o[key] for o in outs])

    return {
        "maskmem_features": cat("maskmem_features"),
        "maskmem_pos_enc": [torch.cat(levels) for levels in zip(*(o["maskmem_pos_enc"] for o in outs))],
        "pred_masks": cat("pred_masks"),
        "obj_ptr": cat("obj_ptr"),
        "object_score_logits": cat("object_score_logits"),
    }


class _FrameImages:
    """Stands in for the predictor's ``images`` tensor; indexing returns a frame's pixels."""

    def __init__(self, frames: list[EncodedFrame | None]):
        self.frames = list(frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, idx: int) -> torch.Tensor:
        frame = self.frames[idx]
        if frame is None:
            raise RuntimeError(f"frame {idx} is not loaded")
        return frame.image[0]


def preprocess(image: np.ndarray, image_size: int) -> torch.Tensor:
    """RGB uint8 -> normalised (3, S, S) tensor, resized exactly as SAM 2's own loader does."""
    pil = Image.fromarray(image).resize((image_size, image_size), Image.BICUBIC)
    t = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (t - _MEAN) / _STD


def _split_backbone(backbone: dict, i: int) -> dict:
    return {
        key: [t[i : i + 1] for t in value] if isinstance(value, list) else value[i : i + 1]
        for key, value in backbone.items()
    }


@torch.inference_mode()
def encode_images(predictor: SAM2VideoPredictor, images: list[np.ndarray]) -> list[EncodedFrame]:
    """Run the image encoder once over a batch of images (the dominant cost of SST)."""
    if not images:
        return []
    batch = torch.stack([preprocess(im, predictor.image_size) for im in images]).to(predictor.device)
    with autocast(predictor.device):
        backbone = predictor.forward_image(batch)
    return [
        EncodedFrame(size=im.shape[:2], image=batch[i : i + 1], backbone=_split_backbone(backbone, i))
        for i, im in enumerate(images)
    ]


def autocast(device: torch.device):
    """bf16 autocast on CUDA (SAM 2's intended precision); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _has_sam2_extension() -> bool:
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def build_predictor(
    model: str,
    weights: ResolvedWeights,
    image_size: int | None = None,
    device: str | torch.device | None = None,
) -> InMemoryVideoPredictor:
    """Build the real SAM 2.1 architecture from the registry, with resolved weights.

    ``image_size`` overrides the model's 1024 px input; smaller sizes trade accuracy for
    speed and are what the tests use.
    """
    spec = get_model_spec(model)
    device = torch.device(device) if device is not None else default_device()
    overrides = [f"++model._target_={InMemoryVideoPredictor.__module__}.{InMemoryVideoPredictor.__qualname__}"]
    if image_size is not None:
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
        overrides.append(f"++model.image_size={image_size}")
    if weights.is_random:
        torch.manual_seed(RANDOM_INIT_SEED)
    predictor = build_sam2_video_predictor(
        spec.config,
        ckpt_path=str(weights.path) if weights.path else None,
        device=str(device),
        hydra_overrides_extra=overrides,
    )
    assert isinstance(predictor, InMemoryVideoPredictor)
    if not _has_sam2_extension():
        # Hole filling needs SAM 2's compiled extension, which pip wheels do not ship;
        # without it SAM 2 warns on every frame and skips the step anyway.
        predictor.fill_hole_area = 0
    return predictor


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
        _, vision_feats, _, _ = self.model._prepare_backbone_features(frame.backbone)
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
