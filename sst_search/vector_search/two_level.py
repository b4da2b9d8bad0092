"""An IVF index's lists trained, and its vectors filed, in two levels: for indexes of
thousands of lists, whose one-level training and filling cost hours on a CPU.

Training the lists is k-means, and every iteration compares each training vector with every
list's centroid; filling the index compares each vector with every centroid again to find
its list. Both grow with the number of lists, which this project sets to ``4 sqrt(n)``: at
10 million vectors of dim 768, 12,649 lists make the filling alone 1e14 multiply-adds. In
two levels, ``sqrt(nlist)`` coarse centroids are trained first, then each coarse cluster's
share of the lists on the training vectors it holds; a vector is filed by looking for its
list among the lists of its :data:`COARSE_PROBE` nearest coarse clusters only, about
``2 * COARSE_PROBE * sqrt(nlist)`` comparisons instead of ``nlist``.

The result is an ordinary IVF quantizer: searches, and vectors added later, compare with
every centroid as before. What can differ is where a vector was filed at build time, when
its nearest centroid lies outside its nearest coarse clusters; ``tests/test_two_level.py``
measures how often, and the recall of searches over such an index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

#: Coarse clusters whose lists a vector's own list is looked for among.
COARSE_PROBE = 8


@dataclass(frozen=True)
class TwoLevelLists:
    """The lists' centroids, and under each coarse centroid the numbers of its lists."""

    centroids: np.ndarray
    coarse: np.ndarray
    members: list[np.ndarray]

    def assign(self, x: np.ndarray) -> np.ndarray:
        """The list (largest inner product with its centroid) of each row of ``x``, looked
        for among the lists of its :data:`COARSE_PROBE` nearest coarse centroids."""
        x = np.ascontiguousarray(x, np.float32)
        probe = min(COARSE_PROBE, len(self.coarse))
        near = np.argpartition(-(x @ self.coarse.T), probe - 1, axis=1)[:, :probe]
        # the rows asking each coarse cluster, by one sort instead of a scan per cluster
        order = np.argsort(near.ravel(), kind="stable")
        bounds = np.searchsorted(near.ravel()[order], np.arange(len(self.coarse) + 1))
        best, chosen = np.full(len(x), -np.inf, np.float32), np.zeros(len(x), np.int64)
        for c, lists in enumerate(self.members):
            rows = order[bounds[c] : bounds[c + 1]] // probe
            if not len(rows) or not len(lists):
                continue
            scores = x[rows] @ self.centroids[lists].T
            pick = scores.argmax(axis=1)
            top = scores[np.arange(len(rows)), pick]
            better = top > best[rows]
            best[rows[better]], chosen[rows[better]] = top[better], lists[pick[better]]
        return chosen


def train(sample: np.ndarray, nlist: int, niter: int, seed: int) -> TwoLevelLists:
    """``nlist`` centroids of ``sample`` (unit vectors), trained in two levels with
    ``niter`` k-means iterations each, from ``seed``: same sample, same lists."""
    sample = np.ascontiguousarray(sample, np.float32)
    if nlist > len(sample):
        raise ValueError(f"{nlist} lists cannot be trained on {len(sample)} vectors")
    ncoarse = max(1, min(len(sample), int(round(math.sqrt(nlist)))))
    coarse = _kmeans(sample, ncoarse, niter, seed)
    owner = np.argmax(sample @ coarse.T, axis=1)
    counts = np.bincount(owner, minlength=ncoarse)
    centroids, members, at = [], [], 0
    for c, k in enumerate(_share(counts, nlist)):
        if k:
            centroids.append(_kmeans(sample[owner == c], int(k), niter, seed + 1 + c))
        members.append(np.arange(at, at + k, dtype=np.int64))
        at += k
    return TwoLevelLists(np.vstack(centroids), coarse, members)


def _kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    if k >= len(x):
        return x[:k].copy()
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, min_points_per_centroid=1,
                      max_points_per_centroid=1 << 30)
    km.train(x)
    return km.centroids


def _share(counts: np.ndarray, nlist: int) -> np.ndarray:
    """Lists per coarse cluster, in proportion to the training vectors it holds (at least one
    each that holds any, never more than it holds), summing to ``nlist``."""
    wanted = counts * nlist / counts.sum()
    share = np.where(counts > 0, np.maximum(1, np.floor(wanted)), 0).astype(np.int64)
    while share.sum() < nlist:
        room = np.where(share < counts, wanted - share, -np.inf)
        share[int(np.argmax(room))] += 1
    while share.sum() > nlist:
        spare = np.where(share > 1, share - wanted, -np.inf)
        share[int(np.argmax(spare))] -= 1
    return share
