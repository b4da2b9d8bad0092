"""Trait masks as COCO run-length encoding: compact in the catalog, lossless, and readable
by any COCO tool."""

from __future__ import annotations

import json

import numpy as np
from pycocotools import mask as mask_utils


def encode_mask(mask: np.ndarray) -> str:
    """JSON ``{"size": [h, w], "counts": str}`` of a boolean HxW mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return json.dumps({"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")})


def decode_mask(rle: str | dict) -> np.ndarray:
    """The boolean HxW mask back from :func:`encode_mask`'s JSON (or its parsed dict)."""
    obj = json.loads(rle) if isinstance(rle, str) else dict(rle)
    counts = obj["counts"]
    obj["counts"] = counts.encode("utf-8") if isinstance(counts, str) else counts
    return mask_utils.decode(obj).astype(bool)
