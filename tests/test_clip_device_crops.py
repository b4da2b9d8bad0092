"""open_clip crops made on the model's device (how a CUDA run builds its batches) against
the CPU path's PIL crops: the same crops, within two grey levels (PIL resizes in fixed point)."""

import numpy as np
import pytest
import torch
from PIL import Image

from sst_search.builder import create_embedder
from sst_search.embed.base import Region, masked_square_crop


@pytest.fixture(scope="module")
def clip():
    return create_embedder("clip", weights="random", model_name="ViT-S-32", pretrained=None, device="cpu")


def _regions():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    smooth = np.stack([(xx * 2) % 256, (yy * 2 + xx) % 256, (255 - yy * 2) % 256], axis=-1).astype(np.uint8)
    small = np.clip(smooth.astype(int) + rng.integers(-8, 9, smooth.shape), 0, 255).astype(np.uint8)
    large = np.asarray(Image.fromarray(small).resize((512, 384), Image.BILINEAR))
    regions = []
    for image in (small, large):
        h, w = image.shape[:2]
        tall = np.zeros((h, w), bool)
        tall[h // 8:h * 7 // 8, w // 3:w // 2] = True  # padded sideways to a square
        edge = np.zeros((h, w), bool)
        edge[: h // 3, w - w // 5:] = True  # its margin is cut by the image border
        regions += [Region(image), Region(image, tall), Region(image, edge)]
    return regions


def test_device_crops_match_the_cpu_path_within_two_grey_levels(clip):
    regions = _regions()
    on_device = clip.crops_on_device(regions)
    on_cpu = torch.stack([clip.preprocess(Image.fromarray(masked_square_crop(r.image, r.mask, clip.fill))) for r in regions])
    assert on_device.shape == on_cpu.shape
    std = torch.tensor(clip.preprocess.transforms[-1].std).view(1, 3, 1, 1)
    grey_levels = ((on_device - on_cpu).abs() * std * 255).amax(dim=(1, 2, 3))
    assert grey_levels.max() <= 2.01, grey_levels  # PIL rounds in fixed point
