"""A weight-free colour-and-pattern descriptor of a trait region.

Useful without any model weights and easy to explain to a curator: two traits are similar
when they have similar colours (histogram block) laid out similarly (layout block).

Layout of the vector (``dim = 256 + 64 = 320`` with the defaults):

* ``[0, 256)`` colour histogram: joint CIELab histogram of the region's pixels with
  4 L* bins x 8 a* bins x 8 b* bins (index ``l * 64 + a * 8 + b``, OpenCV 8-bit Lab, equal-width
  bins over 0..255). Stored as the square root of the pixel fractions, so the dot product of
  two histogram blocks is their Bhattacharyya coefficient.
* ``[256, 320)`` spatial layout: the region's bounding box split into a 4x4 grid (row-major,
  top-left first); per cell ``(mean L*, mean a*, mean b*, coverage)`` with L* scaled to
  0..1, a*/b* to -1..1 (0 = neutral grey) and coverage = fraction of the cell's pixels in
  the region. Cells without region pixels are all zero.

Each block is L2-normalised and scaled by the square root of its weight, so the cosine
similarity of two descriptors is ``w_hist * hist_similarity + w_layout * layout_similarity``
and the vector has unit length. The whole-specimen vector is the same descriptor over the
full image.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from sst_search.embed.base import Region, TraitEmbedder, l2_normalize

DESCRIPTOR_VERSION = 1


class ColorPatternEmbedder(TraitEmbedder):
    """CIELab colour histogram + coarse spatial layout; deterministic, no weights."""

    def __init__(
        self,
        l_bins: int = 4,
        ab_bins: int = 8,
        grid: int = 4,
        hist_weight: float = 0.7,
        batch_size: int = 64,
    ) -> None:
        if not 0.0 <= hist_weight <= 1.0:
            raise ValueError(f"hist_weight must be within [0, 1], got {hist_weight}")
        if min(l_bins, ab_bins, grid) < 1:
            raise ValueError("l_bins, ab_bins and grid must be positive")
        self.l_bins, self.ab_bins, self.grid = l_bins, ab_bins, grid
        self.hist_weight = hist_weight
        self.batch_size = batch_size
        self.name = "color-pattern"
        self.dim = l_bins * ab_bins * ab_bins + grid * grid * 4
        self.fingerprint = {
            "embedder": self.name,
            "model": "cielab-histogram+layout",
            "version": DESCRIPTOR_VERSION,
            "weights": "none",
            "l_bins": l_bins,
            "ab_bins": ab_bins,
            "grid": grid,
            "hist_weight": hist_weight,
        }

    def _histogram(self, lab_pixels: np.ndarray) -> np.ndarray:
        bins = np.array([self.l_bins, self.ab_bins, self.ab_bins])
        idx = (lab_pixels.astype(np.int64) * bins) // 256
        flat = np.ravel_multi_index(idx.T, tuple(bins))
        hist = np.bincount(flat, minlength=int(bins.prod())).astype(np.float64)
        return np.sqrt(hist / hist.sum())

    def _layout(self, lab: np.ndarray, mask: np.ndarray) -> np.ndarray:
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        ry = np.linspace(y0, y1, self.grid + 1).round().astype(int)
        rx = np.linspace(x0, x1, self.grid + 1).round().astype(int)
        scale = np.array([1 / 255, 1 / 128, 1 / 128])
        offset = np.array([0.0, 128.0, 128.0])
        cells = np.zeros((self.grid, self.grid, 4))
        for i in range(self.grid):
            for j in range(self.grid):
                # Degenerate cells (box thinner than the grid) borrow one pixel row/column.
                ya, yb = ry[i], max(ry[i + 1], ry[i] + 1)
                xa, xb = rx[j], max(rx[j + 1], rx[j] + 1)
                cell_mask = mask[ya:yb, xa:xb]
                n = cell_mask.sum()
                if n:
                    mean = lab[ya:yb, xa:xb][cell_mask].mean(axis=0)
                    cells[i, j, :3] = (mean - offset) * scale
                    cells[i, j, 3] = n / cell_mask.size
        return cells.ravel()

    def describe(self, region: Region) -> np.ndarray:
        """The unit descriptor of one region (see the module docstring for its layout)."""
        lab = cv2.cvtColor(region.image, cv2.COLOR_RGB2Lab)
        mask = np.ones(lab.shape[:2], bool) if region.mask is None else region.mask
        if not mask.any():
            raise ValueError("cannot describe an empty region")
        hist = l2_normalize(self._histogram(lab[mask]))
        layout = l2_normalize(self._layout(lab, mask))
        return np.concatenate([np.sqrt(self.hist_weight) * hist, np.sqrt(1.0 - self.hist_weight) * layout])

    def _embed_regions(self, regions: Sequence[Region]) -> np.ndarray:
        return np.stack([self.describe(r) for r in regions])
