"""Ordering queries into a pseudo-video for ``chain`` propagation.

In chain mode every predicted mask becomes memory for the next frames, so a frame should
follow the specimen it most resembles: a smooth pseudo-video carries traits further than
an alphabetical one that jumps between poses and colour morphs.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMB = 16
#: Lab distance from the border colour above which a pixel belongs to the specimen.
BACKGROUND_DELTA = 20.0
#: Layout matters less than palette when telling specimens apart.
THUMB_WEIGHT = 0.25


def global_descriptor(image: np.ndarray) -> np.ndarray:
    """A cheap, pose-tolerant summary of a specimen photo (L2-normalised).

    Specimen photos are mostly plain background whose tint drifts between imaging
    sessions, so the background (the colour of the image border) is left out: a Lab colour
    histogram of the specimen's own pixels captures its palette and a tiny thumbnail of the
    specimen adds the coarse layout.
    """
    small = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    distance = np.linalg.norm(lab - np.median(border, axis=0), axis=2)
    foreground = distance > BACKGROUND_DELTA
    if foreground.mean() < 0.01:  # no clear specimen: describe the whole frame
        foreground[:] = True
    hist = cv2.calcHist([lab.astype(np.uint8)], [0, 1, 2], foreground.astype(np.uint8), [8, 16, 16], [0, 256, 0, 256, 0, 256])
    hist = _smooth(hist, sigma=1.5).ravel()
    hist = np.sqrt(hist / max(hist.sum(), 1e-9))
    thumb = cv2.resize(np.where(foreground[..., None], lab, 0), (THUMB, THUMB), interpolation=cv2.INTER_AREA).ravel() / 255.0
    thumb -= thumb.mean()
    desc = np.concatenate([hist, THUMB_WEIGHT * thumb / max(np.linalg.norm(thumb), 1e-6)])
    return (desc / max(np.linalg.norm(desc), 1e-6)).astype(np.float32)


def _smooth(hist: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blur a 3-D histogram so colours near a bin edge still match their twins."""
    x = np.arange(-3, 4)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    for axis in range(hist.ndim):
        hist = np.apply_along_axis(np.convolve, axis, hist, kernel, mode="same")
    return hist


def greedy_chain(start: np.ndarray, descriptors: np.ndarray) -> list[int]:
    """Greedy nearest-neighbour tour: begin at the item closest to ``start`` (the supports'
    mean descriptor), then always step to the most similar unvisited item."""
    n = len(descriptors)
    if n == 0:
        return []
    sims = descriptors @ descriptors.T
    visited = np.zeros(n, dtype=bool)
    current = int(np.argmax(descriptors @ start))
    order = [current]
    visited[current] = True
    for _ in range(n - 1):
        row = np.where(visited, -np.inf, sims[current])
        current = int(np.argmax(row))
        order.append(current)
        visited[current] = True
    return order
