"""Fast-scan PQ codes of one dimension per sub-quantizer (``PQ{dim}x4fs``, the tier above 2M
vectors) made by comparisons, where FAISS searches each sub-quantizer's centroids.

FAISS encodes a vector one sub-quantizer at a time: at dim 768 that is 768 searches of 16
one-dimensional centroids, a call each, about 50 microseconds a vector on two cores, 8
minutes of a 10M build. With a sub-quantizer's 16 centroids in ascending order, the
nearest to a value is given by how many of the 15 midpoints between neighbours lie below
it, so a batch is coded by 15 vectorised comparisons per dimension (about 10 microseconds
a vector).

The codes are FAISS's own, bit for bit. FAISS compares float32 distances ``(x - c)^2`` and
keeps the first of equal ones. Between two neighbouring centroids ``a < b`` the distance to
``a`` only grows with x and the one to ``b`` only shrinks (float32 rounding is monotone), so
FAISS picks ``b`` exactly above one float32 value, the largest x whose rounded distances
still favour or tie ``a``: a float32 step or two from the exact midpoint, where rounding
makes ties. :func:`_bounds` finds that value for each pair, and a value's code is how many
bounds lie below it. :func:`sort_codebooks` puts the centroids in order after training:
that permutes each sub-quantizer's codes and the lookup tables a search builds from its
centroids alike, so searches find the same vectors with the same scores. An index whose
centroids are not strictly ascending (trained before this ordering, or with two equal
centroids) is encoded by FAISS.
"""

from __future__ import annotations

import faiss
import numpy as np

#: Vectors compared at a time: their float32 rows and comparison masks stay in the caches.
BATCH = 1_024


def _one_dim_pq(ivf: faiss.IndexIVF) -> faiss.ProductQuantizer | None:
    """The index's product quantizer when it codes each dimension in 4 bits, the vectors
    themselves (not their residuals, as FAISS does under inner product)."""
    fast = faiss.downcast_index(ivf)
    if not isinstance(fast, faiss.IndexIVFPQFastScan) or fast.by_residual:
        return None
    pq = fast.pq
    return pq if pq.dsub == 1 and pq.nbits == 4 else None


def _centroids(pq: faiss.ProductQuantizer) -> np.ndarray:
    return faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub)


def sort_codebooks(ivf: faiss.IndexIVF) -> None:
    """Put each sub-quantizer's centroids in ascending order (a trained index with no vectors
    yet: codes already made would name other centroids); other kinds are left as they are."""
    pq = _one_dim_pq(ivf)
    if pq is None:
        return
    if ivf.ntotal:
        raise ValueError("sort the codebooks before adding vectors: their codes name centroids by position")
    faiss.copy_array_to_vector(np.sort(_centroids(pq), axis=1).ravel(), pq.centroids)
    if pq.transposed_centroids.size():
        pq.sync_transposed_centroids()


class OneDimEncoder:
    """FAISS's codes of one product quantizer with ascending centroids (see the module
    docstring), ``(n, code_size)`` bytes, two 4-bit codes a byte, the first in the low bits."""

    def __init__(self, centroids: np.ndarray) -> None:
        import torch  # a core dependency (SAM 2, CLIP); imported here so FAISS-only readers never load it

        self._torch = torch
        self._bounds = torch.from_numpy(np.ascontiguousarray(_bounds(centroids).T))  # a row per pair of neighbours
        self.dim = centroids.shape[0]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """The codes of float32 rows ``x``, as FAISS's ``encode_vectors`` writes them."""
        torch = self._torch
        x = np.ascontiguousarray(x, np.float32)
        codes = np.empty((len(x), (self.dim + 1) // 2), np.uint8)
        for start in range(0, len(x), BATCH):
            rows = torch.from_numpy(x[start : start + BATCH])
            above = torch.empty(rows.shape, dtype=torch.bool)
            nearest = torch.zeros((len(rows), 2 * codes.shape[1]), dtype=torch.uint8)
            for bound in self._bounds:
                torch.gt(rows, bound, out=above)
                nearest[:, : self.dim].add_(above)
            codes[start : start + BATCH] = (nearest[:, 0::2] | (nearest[:, 1::2] << 4)).numpy()
        return codes


def _bounds(centroids: np.ndarray) -> np.ndarray:
    """For each pair of neighbouring centroids ``a < b`` (ascending rows), the largest float32
    x whose float32 distance to ``a`` is at most its distance to ``b``."""
    low, high = centroids[:, :-1], centroids[:, 1:]

    def nearer_high(x: np.ndarray) -> np.ndarray:
        return np.square(x - high) < np.square(x - low)  # float32 throughout, as FAISS computes them

    bound = ((low.astype(np.float64) + high) / 2).astype(np.float32)
    while (step := nearer_high(bound)).any():
        bound = np.where(step, np.nextafter(bound, np.float32(-np.inf)), bound)
    while not (step := nearer_high(above := np.nextafter(bound, np.float32(np.inf)))).all():
        bound = np.where(step, bound, above)
    return bound


def encoder_for(ivf: faiss.IndexIVF) -> OneDimEncoder | None:
    """The comparison encoder of an index whose codes it makes exactly as FAISS does; None
    where FAISS should encode."""
    pq = _one_dim_pq(ivf)
    if pq is None:
        return None
    centroids = _centroids(pq)
    return OneDimEncoder(centroids) if (np.diff(centroids, axis=1) > 0).all() else None
