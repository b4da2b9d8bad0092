"""Specimen pixels at full resolution, for crops and exports.

An image given by IIIF URL is indexed from a copy at the model's size (``!1024,1024``):
fetching every original would cost ~6x the bytes for nothing the index uses. A crop or an
export, though, is for a person, and must have the original pixels. :class:`Originals`
gives them: the stored file when it is the original, else the full image fetched once
from the specimen's ``full_source`` into the run's image cache (so a second export makes
no request), with the masks, stored at the indexed size, scaled to it (:func:`fit_mask`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .config import FetchConfig, recorded
from .images import ImageLoadError, load_image
from .sources.fetch import Fetcher, FetchError, ImageCache
from .store import Store


class Originals:
    """Loads each specimen's full-resolution image; one per export (it may hold an HTTP client).

    ``cache`` and ``config`` default to what the store's last indexing run used."""

    def __init__(self, store: Store, cache: ImageCache | None = None, config: FetchConfig | None = None):
        run = store.last_run_fingerprint()
        self._full = store.full_sources()
        self._cache = cache or (ImageCache(run["image_cache"]) if run.get("image_cache") else None)
        self._config = config or recorded(FetchConfig, (run.get("config") or {}).get("fetch") or {}, "the indexing run")
        self._fetcher: Fetcher | None = None

    def load(self, specimen_id: int, path: str) -> np.ndarray:
        """The specimen's original pixels (RGB uint8); raises :class:`ImageLoadError` naming the file or URL."""
        url = self._full.get(int(specimen_id))
        if url is None:
            return load_image(path)
        if self._cache is None:
            raise ImageLoadError(url, "no image cache is recorded for this index; re-run `sst-search index`")
        if self._fetcher is None:
            self._fetcher = Fetcher(self._cache, self._config)
        try:
            record = self._fetcher.get(url)
        except FetchError as exc:
            raise ImageLoadError(url, f"full-resolution image not fetched: {exc}") from exc
        return load_image(self._cache.blob_path(record))

    def close(self) -> None:
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None

    def __enter__(self) -> Originals:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fit_mask(mask: np.ndarray, shape: tuple[int, int], where: str | Path = "image") -> np.ndarray:
    """``mask`` (boolean, at the indexed image's size) at ``shape`` (the original's ``(H, W)``).

    Linear interpolation then a threshold at one half keeps edges smooth instead of the
    staircase nearest-neighbour makes at 4-6x. Raises :class:`ImageLoadError` when the two
    aspect ratios differ by more than a pixel's rounding: the image changed since indexing.
    """
    h, w = mask.shape
    H, W = shape
    if (h, w) == (H, W):
        return mask
    if abs(W / w - H / h) * min(h, w) > 1.0:
        raise ImageLoadError(where, f"full image is {W}x{H} but its masks are {w}x{h} (another aspect ratio); "
                                    "it changed since indexing")
    return cv2.resize(mask.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) >= 0.5
