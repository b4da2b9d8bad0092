"""An IVF index's lists trained in two levels: for indexes of thousands of lists, whose
one-level training costs hours on a CPU.

Training the lists is k-means, and every iteration compares each training vector with every
list's centroid: the cost grows with ``nlist`` squared, since the sample grows with it
(``train_per_list`` vectors a list), and this project sets ``nlist = 4 sqrt(n)``: 12,649
lists at 10 million vectors. In two levels, ``sqrt(nlist)`` coarse centroids are trained
first, then each coarse cluster's share of the lists on the training vectors it holds, so an
iteration compares a vector with ``2 sqrt(nlist)`` centroids instead of ``nlist``.

The result is an ordinary IVF quantizer. Filing a vector in the list of its nearest
centroid then costs ``nlist`` dot products a vector, which at 10M x 768 was the build's
largest part (6.6 s per 100,000 vectors against 12,649 lists: about 660 of its 1,875 s).
A bulk build files vectors through a
:class:`ListAssigner` instead: the centroids are grouped once, and a vector is compared
with the centroids of its ``probe`` nearest groups only, in one matrix product a group.
bench/bench_index_kinds.py ``--two-level-lists`` compares build time and recall.
"""

from __future__ import annotations

import math

import faiss
import numpy as np


def train(sample: np.ndarray, nlist: int, niter: int, seed: int) -> np.ndarray:
    """``nlist`` centroids of ``sample`` (unit vectors), trained in two levels with
    ``niter`` k-means iterations each, from ``seed``: same sample, same lists."""
    sample = np.ascontiguousarray(sample, np.float32)
    if nlist > len(sample):
        raise ValueError(f"{nlist} lists cannot be trained on {len(sample)} vectors")
    ncoarse = max(1, min(len(sample), int(round(math.sqrt(nlist)))))
    coarse = _kmeans(sample, ncoarse, niter, seed)
    owner = np.argmax(sample @ coarse.T, axis=1)
    counts = np.bincount(owner, minlength=ncoarse)
    return np.vstack([_kmeans(sample[owner == c], int(k), niter, seed + 1 + c)
                      for c, k in enumerate(_share(counts, nlist)) if k])


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


class ListAssigner:
    """The list of an IVF index's ``centroids`` that each vector falls in, found among the
    centroids of its ``probe`` nearest groups (``sqrt(nlist)`` groups, k-means of the
    centroids) instead of among all of them.

    A vector whose nearest centroid lies in another group is filed in the best list of the
    groups it was compared with, a near neighbour of its own: measured on 50,000 clustered
    unit vectors of dim 768 against 12,649 lists, 16 of 112 groups filed 0.01% of them
    elsewhere (8 groups: 0.1%) and took a third of the time of comparing with every centroid.
    Searches still find such a vector when they probe its list, so recall barely moves;
    bench/bench_query.py states it on the product's index."""

    def __init__(self, centroids: np.ndarray, probe: int, niter: int, seed: int):
        centroids = np.ascontiguousarray(centroids, np.float32)
        ngroups = max(1, int(round(math.sqrt(len(centroids)))))
        self.groups = _kmeans(centroids, ngroups, niter, seed)
        owner = np.argmax(centroids @ self.groups.T, axis=1)
        self.members = [np.flatnonzero(owner == g) for g in range(ngroups)]
        self.centroids = [np.ascontiguousarray(centroids[m]) for m in self.members]
        self.probe = min(probe, ngroups)

    def assign(self, x: np.ndarray, batch: int = 16_384) -> np.ndarray:
        """The list number of each row of ``x`` (unit vectors, float32)."""
        lists = np.empty(len(x), np.int64)
        for start in range(0, len(x), batch):
            lists[start : start + batch] = self._assign(np.ascontiguousarray(x[start : start + batch], np.float32))
        return lists

    def _assign(self, x: np.ndarray) -> np.ndarray:
        near = np.argpartition(-(x @ self.groups.T), self.probe - 1, axis=1)[:, : self.probe]
        rows = np.repeat(np.arange(len(x)), self.probe)
        groups = near.ravel()
        order = np.argsort(groups, kind="stable")
        rows, bounds = rows[order], np.searchsorted(groups[order], np.arange(len(self.groups) + 1))
        best = np.full(len(x), -np.inf, np.float32)
        lists = np.zeros(len(x), np.int64)
        for g, members in enumerate(self.members):
            mine = rows[bounds[g] : bounds[g + 1]]
            if not len(mine) or not len(members):
                continue
            scores = x[mine] @ self.centroids[g].T
            top = np.argmax(scores, axis=1)
            value = scores[np.arange(len(mine)), top]
            better = value > best[mine]
            best[mine[better]] = value[better]
            lists[mine[better]] = members[top[better]]
        return lists
