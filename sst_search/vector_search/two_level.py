"""An IVF index's lists trained in two levels: for indexes of thousands of lists, whose
one-level training costs hours on a CPU.

Training the lists is k-means, and every iteration compares each training vector with every
list's centroid: the cost grows with ``nlist`` squared, since the sample grows with it
(``train_per_list`` vectors a list), and this project sets ``nlist = 4 sqrt(n)``: 12,649
lists at 10 million vectors. In two levels, ``sqrt(nlist)`` coarse centroids are trained
first, then each coarse cluster's share of the lists on the training vectors it holds, so an
iteration compares a vector with ``2 sqrt(nlist)`` centroids instead of ``nlist``.

The result is an ordinary IVF quantizer, and vectors are filed in it as before, each in the
list of its nearest centroid, though at 10M x 768 that is the build's largest part (6.6 s per
100,000 vectors against 12,649 lists in FAISS; :mod:`list_assignment` finds the same lists in
about half that where the CPU has bfloat16 matrix units). Filing each vector only among the
lists of its nearest groups of lists is not done: at 1M x 768, 8 nearest coarse clusters saved less and cost
recall under a filter; at 10M x 768, 16 of 112 groups of the 12,649 lists built in 1,539 s
instead of 1,796-1,875, but put 1.35% of the bench's vectors in far lists (a mean loss of
0.41 in inner product each), and recall@10 under another group's filter fell from 0.970 to
0.732.
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
