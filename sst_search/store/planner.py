"""Filtered top-k over one FAISS index: exactly ``k`` results whenever ``k`` items pass.

A filter (metadata, group, measurement: whatever the catalog's filter compiler turns into
SQL) reaches this module as two questions the catalog can answer, :class:`Admission`:
*which of these ids pass?* (cheap, a handful of ids) and *which ids pass at all?* (one
scan). The plan is chosen from the filter's selectivity, estimated on a fixed-seed sample
of the index's ids:

``postfilter``
    Most items pass. Search unfiltered for ``overfetch * k / fraction`` hits and keep the
    first ``k`` that pass. Falls through to the admitted-set plans when too few survive, so
    an estimate that was too optimistic costs time, never results. It also falls through
    when the candidates pass far less often than the collection does: the filter then
    avoids the query's neighbourhood (e.g. "specimens of *another* species most like this
    one"), and the first ``k`` survivors are the few admitted items that happen to sit in the
    lists an unfiltered search probes, not the admitted set's nearest.
``selector``
    Between the two. FAISS searches only the admitted ids (``IDSelectorBatch``: specimen
    ids are 63-bit hashes, too sparse for a bitmap). An IVF index probes ``nprobe /
    fraction`` lists so that it scans about as many admitted vectors as an unfiltered search
    scans vectors; when that still finds fewer than ``k`` it probes every list, which is an
    exact search of the admitted set.
``exact``
    Few pass. Their stored vectors are scored directly: no approximate index can miss them.

Every plan returns ``min(k, admitted)`` hits. Compressed indexes (SQ/PQ codes) fetch
``refine * k`` candidates and re-rank them by the exact inner product of the stored float
vectors, so a lossy code only has to put the true neighbours among the candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import faiss
import numpy as np

from sst_search.config import IndexConfig, PlanConfig
from sst_search.store.indexes import ivf_of

Plan = Literal["postfilter", "selector", "exact", "unfiltered"]

#: ``ids -> (ids found, (n, dim) float matrix)``: the stored vectors of some ids, any order.
VectorLookup = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class Admission(Protocol):
    """What the catalog says about a filter, asked in two sizes."""

    def passes(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` pass the filter."""

    def admitted(self) -> np.ndarray:
        """Every id that passes the filter."""


class VectorTable:
    """One index's stored float vectors in memory, sorted by id: a query's own vector, exact
    scans and re-ranking look up a few rows per search in microseconds, where a DuckDB query
    over the ``vectors`` table costs a scan. The matrix may be float16 (half the memory)."""

    def __init__(self, ids: np.ndarray, matrix: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            order = np.argsort(ids, kind="stable")
            ids, matrix = ids[order], matrix[order]
        self.ids, self.matrix = ids, matrix

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids found, float32 matrix)`` in the order asked; unknown ids are left out."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return ids[:0], np.zeros((0, self.matrix.shape[1] if self.matrix.ndim == 2 else 0), np.float32)
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        found = self.ids[rows] == ids
        return ids[found], np.asarray(self.matrix[rows[found]], np.float32)


@dataclass
class SearchOutcome:
    """Hits ``(id, inner product)`` best first, and how they were found (for benches and tests)."""

    hits: list[tuple[int, float]]
    plan: Plan
    estimated_fraction: float | None = None
    fallbacks: list[str] = field(default_factory=list)


def estimate_fraction(population: np.ndarray, admission: Admission, config: PlanConfig) -> float:
    """Share of ``population`` passing, from a fixed-seed sample (the whole population when small)."""
    if len(population) == 0:
        return 0.0
    if len(population) <= config.sample_size:
        sample = population
    else:
        rng = np.random.default_rng(config.seed)
        sample = population[rng.choice(len(population), size=config.sample_size, replace=False)]
    return float(np.count_nonzero(admission.passes(sample))) / len(sample)


def choose_plan(fraction: float, n_total: int, k: int, config: PlanConfig) -> Plan:
    """The plan for a filter passing about ``fraction`` of ``n_total`` vectors."""
    if fraction >= config.postfilter_min_fraction and _postfilter_fetch(fraction, k, config) <= config.max_postfilter_fetch:
        return "postfilter"
    if fraction * n_total <= config.exact_max:
        return "exact"
    return "selector"


def filtered_search(
    index: faiss.Index,
    query: np.ndarray,
    k: int,
    *,
    population: np.ndarray,
    vectors: VectorLookup,
    admission: Admission | None = None,
    skip: int | None = None,
    refine: int = 1,
    config: PlanConfig = PlanConfig(),
) -> SearchOutcome:
    """Top ``k`` of ``index`` for one ``query`` among the ids ``admission`` admits, without ``skip``.

    ``population``: the ids the index holds (for the selectivity sample). ``refine > 1``
    re-ranks ``refine * k`` candidates of every FAISS search by exact inner product.
    """
    query = np.ascontiguousarray(np.asarray(query, np.float32).reshape(1, -1))
    extra = 1 if skip is not None else 0
    if admission is None:
        hits = _faiss_search(index, query, k + extra, None, refine, vectors)
        return SearchOutcome(_drop(hits, skip)[:k], "unfiltered")
    fraction = estimate_fraction(population, admission, config)
    plan = choose_plan(fraction, len(population), k, config)
    outcome = SearchOutcome([], plan, fraction)
    if plan == "postfilter":
        fetch = min(int(index.ntotal), _postfilter_fetch(fraction, k + extra, config))
        hits = _faiss_search(index, query, fetch, None, refine, vectors)
        ids = np.fromiter((i for i, _ in hits), np.int64, len(hits))
        passed = admission.passes(ids) if len(ids) else np.zeros(0, bool)
        passing = set(ids[passed].tolist())
        kept = [h for h in _drop(hits, skip) if h[0] in passing][:k]
        candidate_share = float(passed.mean()) if len(ids) else 0.0
        representative = candidate_share >= config.min_candidate_pass_ratio * fraction
        if (len(kept) == k and representative) or len(hits) >= index.ntotal:  # or the whole index was filtered
            outcome.hits = kept
            return outcome
        outcome.fallbacks.append(
            f"postfilter kept {len(kept)} of {k}" if len(kept) < k
            else f"candidates passed at {candidate_share:.3f}, the collection at {fraction:.3f}"
        )
    admitted = np.unique(np.asarray(admission.admitted(), np.int64))
    if skip is not None:
        admitted = admitted[admitted != skip]
    want = min(k, len(admitted))
    if want == 0:
        return outcome
    if len(admitted) <= config.exact_max:
        outcome.plan = "exact" if plan == "exact" else outcome.plan
        outcome.hits = exact_top(query[0], admitted, k, vectors)
        if plan != "exact":
            outcome.fallbacks.append("exact scan of the admitted set")
        return outcome
    outcome.plan = "selector" if plan != "postfilter" else outcome.plan
    selector = faiss.IDSelectorBatch(admitted)
    share = len(admitted) / max(1, int(index.ntotal))
    hits = _faiss_search(index, query, k, search_params(index, selector, share), refine, vectors)
    if len(hits) < want:
        outcome.fallbacks.append(f"selector found {len(hits)} of {want}")
        ivf = ivf_of(index)
        if ivf is not None:
            hits = _faiss_search(index, query, k, search_params(index, selector, share, nprobe=ivf.nlist), refine, vectors)
        if len(hits) < want:
            hits = exact_top(query[0], admitted, k, vectors)
    outcome.hits = hits[:k]
    return outcome


def search_table(
    index: faiss.Index, table: VectorTable, config: IndexConfig, query: np.ndarray, k: int,
    admission: Admission | None = None, skip: int | None = None,
) -> SearchOutcome:
    """:func:`filtered_search` of ``index`` whose stored vectors are ``table``, planned and
    re-ranked as ``config`` says (a whole store's index, or one shard's)."""
    return filtered_search(
        index, query, k, population=table.ids, vectors=table.lookup, admission=admission, skip=skip,
        refine=config.refine if ivf_of(index) is not None else 1, config=config.plan,
    )


def exact_top(query: np.ndarray, ids: np.ndarray, k: int, vectors: VectorLookup) -> list[tuple[int, float]]:
    """Top ``k`` of ``ids`` by the exact inner product of their stored vectors."""
    found, matrix = vectors(np.asarray(ids, np.int64))
    if len(found) == 0:
        return []
    matrix = np.ascontiguousarray(matrix, np.float32)
    query = np.ascontiguousarray(query, np.float32)
    scores = np.empty(len(found), np.float32)
    # FAISS's single-threaded SIMD kernel, not BLAS: one matrix-vector product per search is
    # too small to pay for waking BLAS threads, which costs milliseconds when the CPUs are busy.
    faiss.fvec_inner_products_ny(faiss.swig_ptr(scores), faiss.swig_ptr(query), faiss.swig_ptr(matrix),
                                 matrix.shape[1], len(found))
    top = np.argsort(-scores, kind="stable")[:k] if len(scores) <= 4 * k else _top_unsorted(scores, k)
    return [(int(found[j]), float(scores[j])) for j in top]


def search_params(
    index: faiss.Index, selector: faiss.IDSelector | None, fraction: float = 1.0, nprobe: int | None = None
) -> faiss.SearchParameters | None:
    """Parameters of a search restricted to ``selector``, which admits ``fraction`` of the ids.

    An IVF index probes ``nprobe / fraction`` lists (at most all of them): it then scans
    about as many admitted vectors as an unrestricted search does, instead of finding
    nothing when the admitted ones lie in lists far from the query.
    """
    if selector is None:
        return None
    ivf = ivf_of(index)
    if ivf is None:
        return faiss.SearchParameters(sel=selector)
    if nprobe is None:
        nprobe = int(math.ceil(ivf.nprobe / max(fraction, 1e-9)))
    params = faiss.SearchParametersIVF(sel=selector, nprobe=min(ivf.nlist, nprobe))
    if isinstance(index, faiss.IndexPreTransform):
        # A pre-transform (OPQ) passes the parameters on to the IVF index it wraps.
        return faiss.SearchParametersPreTransform(index_params=params)
    return params


def _postfilter_fetch(fraction: float, k: int, config: PlanConfig) -> int:
    return int(math.ceil(config.overfetch * k / max(fraction, 1e-9)))


def _faiss_search(
    index: faiss.Index, query: np.ndarray, k: int, params: faiss.SearchParameters | None, refine: int,
    vectors: VectorLookup,
) -> list[tuple[int, float]]:
    fetch = min(max(1, int(index.ntotal)), k * max(1, refine))
    scores, labels = index.search(query, fetch, params=params)
    hits = [(int(i), float(s)) for i, s in zip(labels[0], scores[0]) if i >= 0]
    if refine <= 1 or not hits:
        return hits[:k]
    return exact_top(query[0], np.array([i for i, _ in hits], np.int64), k, vectors)


def _drop(hits: list[tuple[int, float]], skip: int | None) -> list[tuple[int, float]]:
    return hits if skip is None else [h for h in hits if h[0] != skip]


def _top_unsorted(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
