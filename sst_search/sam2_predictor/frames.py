"""Photos in, SAM 2 image features out: the dominant cost of SST, done once per image.

SAM 2's own loader reads a folder of JPEGs and encodes one frame at a time on demand.
SST's frames are specimen photos already in memory, encoded in batches ahead of tracking
and reused (a support for thousands of queries, a photo for both its mask proposals and
its tracking), so this module encodes them itself, exactly as SAM 2 would: the same
resize, the same normalisation, SAM 2's own ``forward_image``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sam2.modeling.sam2_base import SAM2Base

# SAM 2 was trained on ImageNet-normalised inputs.
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@dataclass
class EncodedFrame:
    """A frame ready for tracking: its original size and its image-encoder output."""

    size: tuple[int, int]  # original (H, W)
    image: torch.Tensor  # (1, 3, S, S), normalised
    backbone: dict  # SAM2Base.forward_image output for this frame (batch of 1)


def resize_for_model(image: np.ndarray, image_size: int) -> np.ndarray:
    """RGB uint8 -> ``(S, S, 3)`` uint8, resized exactly as SAM 2's own loader does. The CPU
    half of :func:`preprocess`, kept in bytes so that preparing threads can run it ahead
    of the model and hand a quarter of the float tensor's size to the device."""
    return np.array(Image.fromarray(image).resize((image_size, image_size), Image.BICUBIC))  # writable: torch reads it


def normalize_for_model(resized: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(..., S, S, 3)`` uint8 -> ImageNet-normalised float ``(..., 3, S, S)`` on the tensor's device
    (the same float32 operations wherever they run, so the same values)."""
    t = torch.as_tensor(resized).movedim(-1, -3).float() / 255.0
    return (t - _MEAN.to(t.device)) / _STD.to(t.device)


def preprocess(image: np.ndarray, image_size: int) -> torch.Tensor:
    """RGB uint8 -> normalised (3, S, S) tensor, resized exactly as SAM 2's own loader does."""
    return normalize_for_model(resize_for_model(image, image_size))


def _split_backbone(backbone: dict, i: int) -> dict:
    return {
        key: [t[i : i + 1] for t in value] if isinstance(value, list) else value[i : i + 1]
        for key, value in backbone.items()
    }


@torch.inference_mode()
def encode_images(predictor: SAM2Base, images: list[np.ndarray]) -> list[EncodedFrame]:
    """Run the image encoder once over a batch of images (the dominant cost of SST)."""
    return encode_resized(predictor, [resize_for_model(im, predictor.image_size) for im in images],
                          [im.shape[:2] for im in images])


@torch.inference_mode()
def encode_resized(predictor: SAM2Base, resized: list[np.ndarray], sizes: list[tuple[int, int]]) -> list[EncodedFrame]:
    """:func:`encode_images` of images already through :func:`resize_for_model`, or of
    images still at their own size, which are resized on the device instead (see
    :func:`resize_on_device`): uploaded as bytes, normalised on the device, encoded as one
    batch. ``sizes`` are the originals' (H, W)."""
    if not resized:
        return []
    s = predictor.image_size
    if all(r.shape[:2] == (s, s) for r in resized):
        pixels = _upload(predictor, torch.from_numpy(np.stack(resized)))
    else:
        pixels = torch.stack([resize_on_device(_upload(predictor, torch.from_numpy(r)), s) for r in resized])
    batch = normalize_for_model(pixels)
    batch = batch.contiguous(memory_format=getattr(predictor, "encoder_memory_format", torch.contiguous_format))
    with autocast(predictor.device):
        backbone = predictor.forward_image(batch)
    return [
        EncodedFrame(size=tuple(size), image=batch[i : i + 1], backbone=_split_backbone(backbone, i))
        for i, size in enumerate(sizes)
    ]


def _upload(predictor: SAM2Base, pixels: torch.Tensor) -> torch.Tensor:
    if predictor.device.type == "cuda":
        return pixels.pin_memory().to(predictor.device, non_blocking=True)
    return pixels.to(predictor.device)


def resize_masks(masks: np.ndarray, image_size: int, device: torch.device) -> torch.Tensor:
    """Binary ``(T, H, W)`` masks -> ``(T, 1, S, S)`` floats on ``device``, resized as SAM 2's
    ``add_new_mask`` resizes a user's mask (antialiased, then thresholded back to 0/1)."""
    m = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None].to(device)
    if m.shape[-2:] != (image_size, image_size):
        m = F.interpolate(m, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        m = (m >= 0.5).float()
    return m


def resize_on_device(pixels: torch.Tensor, image_size: int) -> torch.Tensor:
    """``(H, W, 3)`` uint8 on any device -> ``(S, S, 3)`` uint8 on that device: bicubic with
    antialiasing, rounded to bytes like :func:`resize_for_model`'s Pillow resize, which it
    approximates to within one grey level (0.17 on average on the synthetic specimens). On a GPU this replaces the CPU's largest per-image cost (an upscale of every
    photo to 1024 x 1024) with a kernel that takes microseconds."""
    t = pixels.permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(image_size, image_size), mode="bicubic", align_corners=False, antialias=True)
    return t.clamp_(0, 255).round_().to(torch.uint8)[0].permute(1, 2, 0)


def backbone_tokens(model: SAM2Base, backbone: dict) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
    """An image-encoder output as SAM 2's tracking reads it: per level, tokens
    ``(HW, B, C)``, their position encodings and the level's ``(H, W)``."""
    _, feats, pos, sizes = model._prepare_backbone_features(backbone)
    return feats, pos, sizes


def autocast(device: torch.device):
    """bf16 autocast on CUDA (SAM 2's intended precision); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
