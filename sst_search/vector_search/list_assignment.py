"""Filing vectors in their nearest IVF list by bfloat16 matrix products, checked exactly.

A bulk build compares every vector with every list's centroid: at 10M x 768 and 12,649
lists that is 10M x 12,649 x 768 multiply-adds, the largest part of the build, and FAISS's
flat quantizer does it in float32 (6.7 s per 100,000 vectors here). CPUs with bfloat16
matrix units (Intel AMX) multiply bfloat16 matrices several times faster, at 8 bits of
precision. :class:`NearestLists` uses them to find each vector's few best lists and knows how
far a bfloat16 score can be from the float32 one (:func:`score_error`): where the best score
leads the next by more than twice that, the best list is the nearest one; otherwise the
close candidates are scored again in float32, and a vector whose every candidate is close
is compared with all lists in float32. The lists chosen are the ones FAISS's flat
inner-product quantizer chooses, but for exact ties in float32.
"""

from __future__ import annotations

import faiss
import numpy as np

#: Vectors per bfloat16 product: their scores (batch x lists) are held at once.
BATCH = 8_192

#: Candidates kept per vector from the bfloat16 scores.
CANDIDATES = 8

#: The widest vectors :func:`score_error` bounds (its float32 accumulation term).
MAX_DIM = 4_096


def score_error(rounding: np.ndarray, norms: np.ndarray, centroid_rounding: float, centroid_norm: float,
                scores: np.ndarray) -> np.ndarray:
    """The most a bfloat16 product's score can differ from the float32 inner product
    ``x . c``. With ``x = x16 + dx`` and ``c = c16 + dc`` (their bfloat16 roundings and what
    rounding left), ``x . c - x16 . c16 = x16 . dc + dx . c16 + dx . dc``, bounded by
    Cauchy-Schwarz with the norms of each part (``rounding``, ``norms``: per vector, of ``dx``
    and ``x``; the centroids' largest); the float32 accumulation of exact bfloat16 products
    adds at most ``n 2^-24`` of their absolute sum (2^-12 here, for up to 4,096 dimensions);
    the score, rounded to bfloat16, is off by at most half its last place."""
    products = rounding * (centroid_norm + centroid_rounding) + norms * centroid_rounding
    _, exponent = np.frexp(scores)
    return products + 2.0**-12 * norms * centroid_norm + np.ldexp(1.0, exponent - 9)


def matrix_units() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX tiles): elsewhere torch
    emulates them, slower than FAISS's float32."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


class NearestLists:
    """The nearest of an inner-product quantizer's centroids for each vector."""

    def __init__(self, centroids: np.ndarray) -> None:
        import torch  # a core dependency (SAM 2, CLIP); imported here so FAISS-only readers never load it

        self._torch = torch
        self.centroids = torch.from_numpy(np.ascontiguousarray(centroids, np.float32))
        self._narrow = self.centroids.bfloat16()
        self.centroid_norm = float(torch.linalg.vector_norm(self.centroids, dim=1).max())
        self.centroid_rounding = float(torch.linalg.vector_norm(self.centroids - self._narrow.float(), dim=1).max())

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Each row's list: the index of its largest inner product with a centroid (int64)."""
        x = np.ascontiguousarray(x, np.float32)
        lists = np.empty(len(x), np.int64)
        for start in range(0, len(x), BATCH):
            lists[start : start + BATCH] = self._batch(x[start : start + BATCH])
        return lists

    def _batch(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        rows = torch.from_numpy(x)
        narrow = rows.bfloat16()
        top = (narrow @ self._narrow.T).topk(min(CANDIDATES, len(self.centroids)), dim=1)
        scores, candidates = top.values.float().numpy(), top.indices.numpy()
        rounding = torch.linalg.vector_norm(rows - narrow.float(), dim=1).numpy()[:, None]
        error = score_error(rounding, np.linalg.norm(x, axis=1)[:, None], self.centroid_rounding,
                            self.centroid_norm, scores)
        floor = scores[:, 0] - error[:, 0]  # the best candidate's exact score is at least this
        close = scores + error >= floor[:, None]  # candidates whose exact score may reach it
        # A list beyond the candidates scored at most the last one in bfloat16, and when the best
        # is positive, its error is at most the best's.
        beyond = (scores[:, -1] + error[:, 0] >= floor) | (floor <= error[:, 0])
        best = candidates[:, 0].copy()
        unsure = np.flatnonzero(close[:, 1:].any(axis=1) & ~beyond)
        if len(unsure):
            exact = torch.einsum("bd,bkd->bk", rows[unsure], self.centroids[candidates[unsure]]).numpy()
            exact[~close[unsure]] = -np.inf
            best[unsure] = candidates[unsure, exact.argmax(axis=1)]
        lost = np.flatnonzero(beyond)
        if len(lost):
            best[lost] = (rows[lost] @ self.centroids.T).argmax(dim=1).numpy()
        return best


def nearest_lists_for(ivf: faiss.IndexIVF) -> NearestLists | None:
    """The :class:`NearestLists` of an IVF index's flat inner-product quantizer, where this
    CPU has bfloat16 matrix units; None where FAISS should file the vectors itself."""
    quantizer = faiss.downcast_index(ivf.quantizer)
    flat_ip = isinstance(quantizer, faiss.IndexFlat) and quantizer.metric_type == faiss.METRIC_INNER_PRODUCT
    if not flat_ip or quantizer.d > MAX_DIM or not matrix_units():
        return None
    return NearestLists(quantizer.reconstruct_n(0, quantizer.ntotal))
