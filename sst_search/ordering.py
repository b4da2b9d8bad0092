"""Ordering queries into a pseudo-video for ``chain`` propagation.

In chain mode every predicted mask becomes memory for the next frames, so a frame should
follow the specimen it most resembles: a smooth pseudo-video carries traits further than
an alphabetical one that jumps between poses and colour morphs.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMB = 16


def global_descriptor(image: np.ndarray) -> np.ndarray:
    """A cheap, pose-tolerant summary of a specimen photo (L2-normalised).

    A Lab colour histogram captures the palette; a tiny Lab thumbnail adds the coarse layout.
    """
    small = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
    hist = cv2.calcHist([lab], [0, 1, 2], None, [4, 8, 8], [0, 256, 0, 256, 0, 256]).ravel()
    hist /= max(hist.sum(), 1.0)
    thumb = cv2.resize(lab, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() / 255.0
    thumb -= thumb.mean()
    desc = np.concatenate([np.sqrt(hist), thumb / max(np.linalg.norm(thumb), 1e-6)])
    return (desc / max(np.linalg.norm(desc), 1e-6)).astype(np.float32)


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
