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
#: Layout cell means: L* to 0..1, a* and b* to -1..1 around neutral grey (OpenCV 8-bit Lab).
_LAB_OFFSET = np.array([0.0, 128.0, 128.0])
_LAB_SCALE = np.array([1 / 255, 1 / 128, 1 / 128])


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
        values = np.arange(256)
        self._bin_lut = np.stack([
            (values * l_bins // 256) * ab_bins * ab_bins, (values * ab_bins // 256) * ab_bins, values * ab_bins // 256,
        ]).astype(np.min_scalar_type(l_bins * ab_bins * ab_bins - 1))  # narrow: look-ups move less memory
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

    def _bin_codes(self, lab: np.ndarray) -> np.ndarray:
        """Each pixel's joint histogram bin: one look-up table per channel maps an 8-bit value
        to its bin's share of the joint index. Computed once per image; each region then only
        selects its pixels' codes."""
        return sum(np.take(self._bin_lut[i], lab[..., i]) for i in range(3))

    def _histogram(self, codes: np.ndarray) -> np.ndarray:
        hist = np.bincount(codes, minlength=self.l_bins * self.ab_bins * self.ab_bins).astype(np.float64)
        return np.sqrt(hist / hist.sum())

    def _layout(self, lab: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """``mask=None``: the whole image."""
        if mask is None:
            y0, y1, x0, x1 = 0, lab.shape[0], 0, lab.shape[1]
        else:
            ys = np.flatnonzero(mask.any(axis=1))
            xs = np.flatnonzero(mask.any(axis=0))
            y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        ry = np.linspace(y0, y1, self.grid + 1).round().astype(int)
        rx = np.linspace(x0, x1, self.grid + 1).round().astype(int)
        if mask is not None and (np.diff(ry).min() < 1 or np.diff(rx).min() < 1):
            return self._layout_thin(lab, mask, ry, rx)
        # Cells tile the box: per-cell sums are four look-ups in an integral image. The sums
        # are integers, exact in float64, so they equal summing the cells' pixels one by one.
        values = lab[y0:y1, x0:x1]
        if mask is None:
            counts = np.outer(np.diff(ry), np.diff(rx)).astype(np.float64)
        else:
            inside = np.ascontiguousarray(mask[y0:y1, x0:x1]).view(np.uint8)
            values = values * inside[..., None]
            counts = _cell_sums(inside, ry - y0, rx - x0)
        sums = _cell_sums(values, ry - y0, rx - x0)
        sizes = np.outer(np.diff(ry), np.diff(rx))
        cells = np.zeros((self.grid, self.grid, 4))
        seen = counts > 0
        cells[seen, :3] = (sums[seen] / counts[seen, None] - _LAB_OFFSET) * _LAB_SCALE
        cells[seen, 3] = counts[seen] / sizes[seen]
        return cells.ravel()

    def _layout_thin(self, lab: np.ndarray, mask: np.ndarray, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
        """A box thinner than the grid: degenerate cells borrow one pixel row or column, so
        neighbouring cells overlap and each is summed on its own."""
        cells = np.zeros((self.grid, self.grid, 4))
        for i in range(self.grid):
            for j in range(self.grid):
                ya, yb = ry[i], max(ry[i + 1], ry[i] + 1)
                xa, xb = rx[j], max(rx[j + 1], rx[j] + 1)
                cell_mask = mask[ya:yb, xa:xb]
                n = cell_mask.sum()
                if n:
                    mean = lab[ya:yb, xa:xb][cell_mask].mean(axis=0)
                    cells[i, j, :3] = (mean - _LAB_OFFSET) * _LAB_SCALE
                    cells[i, j, 3] = n / cell_mask.size
        return cells.ravel()

    def describe(self, region: Region, lab: np.ndarray | None = None, codes: np.ndarray | None = None) -> np.ndarray:
        """The unit descriptor of one region (see the module docstring for its layout);
        ``lab`` is the region's image in OpenCV 8-bit Lab and ``codes`` its pixels' histogram
        bins (:meth:`_bin_codes`) when the caller already has them."""
        if lab is None:
            lab = cv2.cvtColor(region.image, cv2.COLOR_RGB2Lab)
        if codes is None:
            codes = self._bin_codes(lab)
        mask = region.mask
        if mask is not None and not mask.any():
            raise ValueError("cannot describe an empty region")
        hist = l2_normalize(self._histogram(codes.ravel() if mask is None else codes[mask]))
        layout = l2_normalize(self._layout(lab, mask))
        return np.concatenate([np.sqrt(self.hist_weight) * hist, np.sqrt(1.0 - self.hist_weight) * layout])

    def _embed_regions(self, regions: Sequence[Region]) -> np.ndarray:
        # A specimen's regions share its image: convert it to Lab and bin it once, not once per trait.
        prepared: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for r in regions:
            if id(r.image) not in prepared:
                lab = cv2.cvtColor(r.image, cv2.COLOR_RGB2Lab)
                prepared[id(r.image)] = (lab, self._bin_codes(lab))
        return np.stack([self.describe(r, *prepared[id(r.image)]) for r in regions])


def _cell_sums(values: np.ndarray, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
    """Sums of ``values`` (uint8, one or three channels) over the cells cut by row bounds
    ``ry`` and column bounds ``rx``, from its integral image (float64: exact for any image
    size a decoder accepts)."""
    corners = cv2.integral(values, sdepth=cv2.CV_64F)[np.ix_(ry, rx)]
    return corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1]
