"""The IVF lists' centroids coded by the index's own fast-scan PQ, so that ranking the lists
for a query reads an eighth of the bytes.

Every IVF search first ranks the lists by the inner product of the query with their
centroids. At 10M x 768 that is 12,649 float32 centroids, 39 MB read for each query, and a
search's scan of its 169 lists has pushed them out of the caches by the next one: 1.4-2.1 ms
p50 on two cores, bound by memory, beside the scan's 4.4-5.1. The fast-scan tier's codes
(``PQ{dim}x4fs``, not residual) are trained on the vectors the centroids are means of, so the
same product quantizer codes the centroids in 384 bytes each (4.9 MB), and FAISS's fast-scan
kernel scores them all through the query's lookup table in about 0.6 ms.

The codes only choose candidates: the nearest ``index.plan.coded_candidates`` times as many
lists as a plan reads, which are then scored exactly in float32 and ranked on those scores. On the
10M x 768 bench store the exact nearest 169 lists were among three times as many coded
candidates for each of 200 queries (twice as many missed up to 1.8% of a query's lists).

The centroids are coded once per loaded index (:func:`for_index`, which the app's warm-up
calls): into a fast-scan IVF of their own whose :data:`PARTS` lists each hold a share of
them, so the ranking splits over cores like a scan (:mod:`split_scan`).
"""

from __future__ import annotations

import threading
import weakref

import faiss
import numpy as np

from sst_search.config import PlanConfig
from sst_search.vector_search import split_scan
from sst_search.vector_search.fast_scan_lists import AssignedAdds
from sst_search.vector_search.indexes import ivf_of

#: Lists the coded centroids are dealt into: the most parts a ranking splits into.
PARTS = split_scan.MAX_AUTO_PARTS

_coded: weakref.WeakKeyDictionary[faiss.Index, CodedCentroids | None] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_UNKNOWN = object()


class CodedCentroids:
    """An IVF index's centroids as fast-scan codes of its product quantizer, and their
    float32 values (the quantizer's own memory) to score candidates exactly."""

    def __init__(self, ivf: faiss.IndexIVF, centroids: np.ndarray) -> None:
        source = faiss.downcast_index(ivf)
        self.centroids = centroids
        lists = min(PARTS, len(centroids))
        quantizer = faiss.IndexFlatIP(ivf.d)
        quantizer.add(np.zeros((lists, ivf.d), np.float32))
        coded = faiss.IndexIVFPQFastScan(quantizer, ivf.d, lists, source.pq.M, 4, faiss.METRIC_INNER_PRODUCT)
        coded.by_residual = False
        coded.pq = source.pq
        coded.is_trained = True
        self._quantizer, self.ivf = quantizer, coded  # the index does not own its quantizer
        adds = AssignedAdds(coded)
        numbers = np.arange(len(centroids), dtype=np.int64)
        adds.add(centroids, numbers, numbers % lists)
        adds.flush()
        self._lists, self._no_scores = np.arange(lists, dtype=np.int64), np.zeros(lists, np.float32)

    def candidates(self, coarse: np.ndarray, n: int, plan: PlanConfig, admitted: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """About the nearest ``n`` lists by their coded centroids (among ``admitted``, a bool
        per list, when given), unordered (each part's nearest share of ``n``), and their
        scores by the codes."""
        parts = split_scan.parts_for(plan, len(self._lists), self.centroids.size)
        selector = None
        if admitted is not None:  # the bitmap stays referenced here while the selector points at it
            bitmap = np.packbits(admitted, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(admitted), faiss.swig_ptr(bitmap))
        share = max(1, -(-n // parts))
        found = split_scan.run_in_parts(
            lambda p: split_scan.scan_part(self.ivf, coarse, self._lists[p::parts], self._no_scores[p::parts], share,
                                           selector),
            parts)
        return np.concatenate([ids for _, ids in found]), np.concatenate([values for values, _ in found])


def flat_centroids(ivf: faiss.IndexIVF) -> np.ndarray | None:
    """The IVF lists' centroids as a float32 matrix viewing the quantizer's own memory, when the
    quantizer is a flat inner-product index (else None: ranked by the quantizer's search)."""
    quantizer = faiss.downcast_index(ivf.quantizer)
    if not isinstance(quantizer, faiss.IndexFlat) or quantizer.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    return faiss.rev_swig_ptr(quantizer.get_xb(), quantizer.ntotal * quantizer.d).reshape(quantizer.ntotal, quantizer.d)


def for_index(index: faiss.Index) -> CodedCentroids | None:
    """The coded centroids of ``index``, made on its first call (about 0.2 s at 12,649 lists of
    dim 768): None unless it is a fast-scan IVF of non-residual codes scored by inner product
    with a flat quantizer. Asked on every search, so a known index is looked up without the lock."""
    known = _coded.get(index, _UNKNOWN)
    if known is not _UNKNOWN:
        return known
    with _lock:
        if index in _coded:
            return _coded[index]
        ivf = ivf_of(index)
        fast = faiss.downcast_index(ivf) if ivf is not None else None
        centroids = flat_centroids(ivf) if ivf is not None else None
        usable = (centroids is not None and isinstance(fast, faiss.IndexIVFPQFastScan) and not fast.by_residual
                  and fast.metric_type == faiss.METRIC_INNER_PRODUCT)
        coded = CodedCentroids(ivf, centroids) if usable else None
        _coded[index] = coded
        return coded
