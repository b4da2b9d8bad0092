"""Small pictures of one trait on one specimen, for maps, galleries and atlases.

A map point, a gallery card and an atlas cell all stand for "this specimen's trait", so
they show the same thing: the trait's box cut from the indexed image, everything outside
the mask faded, scaled to fit a square. Cut from the stored (indexed) copy, never the
full-resolution original: a gallery of hundreds must not fetch hundreds of originals.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .images import ImageLoadError, load_image
from .store import SPECIMEN_TRAIT, Store, decode_mask

#: How much of the surroundings stays visible outside the trait (0: none, 1: all).
CONTEXT = 0.25


def trait_thumbnail(store: Store, specimen_id: int, trait: str, size: int = 128) -> np.ndarray | None:
    """RGB ``size`` x ``size`` picture of the trait on the specimen (white margins; the whole
    image for ``__specimen__``), or None when the specimen lacks the trait or its image cannot
    be read."""
    return trait_thumbnails(store, [specimen_id], trait, size)[int(specimen_id)]


def trait_thumbnails(store: Store, specimen_ids: Sequence[int], trait: str, size: int = 128) -> dict[int, np.ndarray | None]:
    """:func:`trait_thumbnail` of many specimens, their paths and masks read in one query each
    (a gallery page or an atlas, not one catalog round trip per card), and only theirs: a page
    of cards must not load the listing and masks of a million specimens."""
    ids = [int(i) for i in specimen_ids]
    listing, masks = store.hits_rows(trait, ids)
    out: dict[int, np.ndarray | None] = {}
    for sid in ids:
        found = masks.get(sid)
        if sid not in listing or (found is None and trait != SPECIMEN_TRAIT):
            out[sid] = None
            continue
        try:
            image = load_image(listing[sid]["path"])
        except ImageLoadError:
            out[sid] = None
            continue
        out[sid] = _fit_square(_cut(image, decode_mask(found.rle) if found else None), size)
    return out


def _cut(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None or not mask.any() or mask.shape != image.shape[:2]:
        return image
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop, inside = image[y0:y1, x0:x1].astype(np.float32), mask[y0:y1, x0:x1, None]
    faded = crop * CONTEXT + 255 * (1 - CONTEXT)
    return np.where(inside, crop, faded).astype(np.uint8)


def _fit_square(picture: np.ndarray, size: int) -> np.ndarray:
    h, w = picture.shape[:2]
    scale = size / max(h, w)
    resized = cv2.resize(picture, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.full((size, size, 3), 255, np.uint8)
    y, x = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    out[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
    return out
