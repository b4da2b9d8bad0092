"""Filtered top-k over one FAISS index: exactly ``k`` results whenever ``k`` items pass.

A filter (metadata, group, measurement: whatever the catalog's filter compiler turns into
SQL) reaches this module as two questions the catalog can answer, :class:`Admission`:
*which of these ids pass?* (cheap, a handful of ids) and *which ids pass at all?* (one
scan). The plan is chosen from the filter's selectivity, estimated on a fixed-seed sample
of the index's ids, or read exactly off a snapshot's mask when the index holds every
specimen (:class:`RowMask`):

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
    ids are 63-bit hashes, too sparse for a bitmap). An IVF index is not probed in its
    usual nearest ``nprobe`` lists, which may hold few admitted vectors or none (a filter
    that avoids the query's neighbourhood): it probes the lists nearest the query *that
    hold admitted vectors*, counted per list, until they hold ``selector_scan`` times as many
    admitted vectors as an unfiltered search scores vectors. A filter that avoids the query's
    neighbourhood then costs about what one around it costs.
``exact``
    Few pass. Their stored vectors are scored directly: no approximate index can miss them.

Every plan returns ``min(k, admitted)`` hits. Compressed indexes (SQ/PQ codes) fetch
``refine * k`` candidates and re-rank them by the exact inner product of the stored float
vectors, so a lossy code only has to put the true neighbours among the candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

import faiss
import numpy as np

from sst_search.config import IndexConfig, PlanConfig
from sst_search.store.indexes import ivf_of

Plan = Literal["postfilter", "selector", "exact", "unfiltered"]


class Admission(Protocol):
    """What the catalog says about a filter, asked in two sizes."""

    def passes(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` pass the filter."""

    def admitted(self) -> np.ndarray:
        """Every id that passes the filter."""


class RowMask(Protocol):
    """An admission that may also know which rows of an index's id array pass, without a
    lookup per id (a snapshot's mask when the index holds every specimen): the plan then
    reads the exact share and the admitted rows off it."""

    def table_mask(self, table_ids: np.ndarray) -> np.ndarray | None:
        """Boolean mask over ``table_ids`` (sorted), or None when it would cost a lookup per id."""


def sorted_rows(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(found, rows)``: which ``ids`` are in the ascending array ``sorted_ids``, and where
    (a row of a miss is meaningless): the join of a few ids against millions, by bisection."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(sorted_ids):
        return np.zeros(len(ids), bool), np.zeros(len(ids), np.int64)
    rows = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[rows] == ids, rows


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
        self._lists: tuple[faiss.Index, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of those ``ids`` the table holds, in the order asked (unknown ids left out)."""
        found, rows = sorted_rows(self.ids, ids)
        return rows[found]

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ids found, float32 matrix)`` in the order asked; unknown ids are left out."""
        if not len(self.ids):
            return self.ids, np.zeros((0, self.matrix.shape[1] if self.matrix.ndim == 2 else 0), np.float32)
        rows = self.rows(ids)
        return self.ids[rows], np.asarray(self.matrix[rows], np.float32)

    def ivf_lists(self, index: faiss.Index) -> np.ndarray:
        """The IVF list of every row in ``index`` (which holds exactly these vectors), read from
        its inverted lists once: a filter's admitted vectors are then counted per list."""
        cached = self._lists
        if cached is not None and cached[0] is index:
            return cached[1]
        ivf, out = ivf_of(index), np.full(len(self.ids), -1, np.int32)
        for list_no in range(ivf.nlist):
            size = ivf.invlists.list_size(list_no)
            if size:
                out[self.rows(faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), size))] = list_no
        self._lists = (index, out)
        return out


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


def search_table(
    index: faiss.Index, table: VectorTable, config: IndexConfig, query: np.ndarray, k: int,
    admission: Admission | None = None, skip: int | None = None,
) -> SearchOutcome:
    """Top ``k`` of ``index``, whose stored vectors are ``table``, for one ``query`` among the
    ids ``admission`` admits, without ``skip``: planned and re-ranked as ``config`` says (a
    whole store's index, or one shard's)."""
    query = np.ascontiguousarray(np.asarray(query, np.float32).reshape(1, -1))
    plan_config, ivf = config.plan, ivf_of(index)
    refine = config.refine if ivf is not None else 1
    extra = 1 if skip is not None else 0
    if admission is None:
        hits = _faiss_search(index, table, query, k + extra, refine)
        return SearchOutcome(_drop(hits, skip)[:k], "unfiltered")
    row_mask = admission.table_mask(table.ids) if hasattr(admission, "table_mask") else None
    if row_mask is not None:
        fraction = np.count_nonzero(row_mask) / max(1, len(row_mask))
    else:
        fraction = estimate_fraction(table.ids, admission, plan_config)
    plan = choose_plan(fraction, len(table), k, plan_config)
    outcome = SearchOutcome([], plan, fraction)
    if plan == "postfilter":
        fetch = min(int(index.ntotal), _postfilter_fetch(fraction, k + extra, plan_config))
        # The candidates in the index's own order; only the first k * refine that pass are
        # re-ranked by their stored vectors, as an unfiltered search re-ranks its first k * refine.
        hits = _index_search(index, query, fetch)
        ids = np.fromiter((i for i, _ in hits), np.int64, len(hits))
        passed = admission.passes(ids) if len(ids) else np.zeros(0, bool)
        passing = set(ids[passed].tolist())
        kept = _refined(query, table, [h for h in _drop(hits, skip) if h[0] in passing][: k * refine], k, refine)
        candidate_share = float(passed.mean()) if len(ids) else 0.0
        representative = candidate_share >= plan_config.min_candidate_pass_ratio * fraction
        if (len(kept) == k and representative) or len(hits) >= index.ntotal:  # or the whole index was filtered
            outcome.hits = kept
            return outcome
        outcome.fallbacks.append(
            f"postfilter kept {len(kept)} of {k}" if len(kept) < k
            else f"candidates passed at {candidate_share:.3f}, the collection at {fraction:.3f}"
        )
    rows = np.flatnonzero(row_mask) if row_mask is not None else _admitted_rows(admission, table)
    if skip is not None:
        rows = rows[table.ids[rows] != skip]
    want = min(k, len(rows))
    if want == 0:
        return outcome
    if len(rows) <= plan_config.exact_max:
        outcome.plan = "exact" if plan == "exact" else outcome.plan
        outcome.hits = exact_top(query[0], table, rows, k)
        if plan != "exact":
            outcome.fallbacks.append("exact scan of the admitted set")
        return outcome
    outcome.plan = "selector" if plan != "postfilter" else outcome.plan
    if ivf is not None:
        hits = _admitted_lists_search(index, table, config, query, rows, k, refine)
    else:
        selector = faiss.IDSelectorBatch(table.ids[rows])
        hits = _faiss_search(index, table, query, k, refine, faiss.SearchParameters(sel=selector))
    if len(hits) < want:
        outcome.fallbacks.append(f"selector found {len(hits)} of {want}")
        hits = exact_top(query[0], table, rows, k)
    outcome.hits = hits[:k]
    return outcome


def _admitted_rows(admission: Admission, table: VectorTable) -> np.ndarray:
    """Rows of the table whose ids ``admission`` admits, ascending."""
    admitted = np.asarray(admission.admitted(), np.int64)
    if len(admitted) > 1 and not (admitted[1:] > admitted[:-1]).all():
        admitted = np.unique(admitted)
    return table.rows(admitted)


def exact_top(query: np.ndarray, table: VectorTable, rows: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Top ``k`` of the table's ``rows`` by the exact inner product of their stored vectors."""
    if len(rows) == 0:
        return []
    matrix = np.ascontiguousarray(table.matrix[rows], np.float32)
    query = np.ascontiguousarray(query, np.float32)
    scores = np.empty(len(rows), np.float32)
    # FAISS's single-threaded SIMD kernel, not BLAS: one matrix-vector product per search is
    # too small to pay for waking BLAS threads, which costs milliseconds when the CPUs are busy.
    faiss.fvec_inner_products_ny(faiss.swig_ptr(scores), faiss.swig_ptr(query), faiss.swig_ptr(matrix),
                                 matrix.shape[1], len(rows))
    top = np.argsort(-scores, kind="stable")[:k] if len(scores) <= 4 * k else _top_unsorted(scores, k)
    return [(int(table.ids[rows[j]]), float(scores[j])) for j in top]


def admitted_scan(m: int, ivf: faiss.IndexIVF, config: PlanConfig) -> int:
    """How many of ``m`` admitted vectors a filtered IVF search scores: ``selector_scan`` times
    what an unfiltered search scores (its ``nprobe`` lists of average length), at most ``m``."""
    unfiltered = ivf.nprobe * ivf.ntotal / max(1, ivf.nlist)
    return int(math.ceil(min(m, config.selector_scan * unfiltered)))


def _admitted_lists_search(
    index: faiss.Index, table: VectorTable, config: IndexConfig, query: np.ndarray, rows: np.ndarray, k: int,
    refine: int,
) -> list[tuple[int, float]]:
    """The selector plan on an IVF index: see the module docstring."""
    ivf = ivf_of(index)
    row_lists = table.ivf_lists(index)[rows]
    rows, row_lists = rows[row_lists >= 0], row_lists[row_lists >= 0]  # a row the index lacks cannot be probed
    if not len(rows):
        return []
    held = np.bincount(row_lists, minlength=ivf.nlist)
    coarse = _coarse_input(index, query)
    scores, order = ivf.quantizer.search(coarse, ivf.nlist)
    keep = held[order[0]] > 0
    order, scores = order[0][keep], scores[0][keep]
    want = max(admitted_scan(len(rows), ivf, config.plan), k * refine)
    probed = min(len(order), int(np.searchsorted(np.cumsum(held[order]), want)) + 1)
    lists = order[:probed]
    in_probed = np.zeros(ivf.nlist, bool)
    in_probed[lists] = True
    candidates = table.ids[rows[in_probed[row_lists]]]
    params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBatch(candidates), nprobe=probed)
    fetch = min(len(candidates), k * refine)
    lists = np.ascontiguousarray(lists, np.int64)
    centroid_scores = np.ascontiguousarray(scores[:probed], np.float32)
    found_scores, labels = np.empty(fetch, np.float32), np.empty(fetch, np.int64)
    # FAISS's Python wrapper of search_preassigned refuses search parameters (the selector); the C++ method takes them.
    ivf.search_preassigned_c(1, faiss.swig_ptr(coarse), fetch, faiss.swig_ptr(lists), faiss.swig_ptr(centroid_scores),
                             faiss.swig_ptr(found_scores), faiss.swig_ptr(labels), False, params)
    hits = [(int(i), float(s)) for i, s in zip(labels, found_scores) if i >= 0]
    return _refined(query, table, hits, k, refine)


def _coarse_input(index: faiss.Index, query: np.ndarray) -> np.ndarray:
    """``query`` as the IVF index inside ``index`` sees it (through an OPQ rotation, if any)."""
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            query = faiss.downcast_VectorTransform(index.chain.at(i)).apply(query)
    return np.ascontiguousarray(query, np.float32)


def _postfilter_fetch(fraction: float, k: int, config: PlanConfig) -> int:
    return int(math.ceil(config.overfetch * k / max(fraction, 1e-9)))


def _faiss_search(
    index: faiss.Index, table: VectorTable, query: np.ndarray, k: int, refine: int,
    params: faiss.SearchParameters | None = None,
) -> list[tuple[int, float]]:
    return _refined(query, table, _index_search(index, query, k * max(1, refine), params), k, refine)


def _index_search(
    index: faiss.Index, query: np.ndarray, n: int, params: faiss.SearchParameters | None = None
) -> list[tuple[int, float]]:
    """The index's own top ``n`` (approximate scores for compressed codes)."""
    scores, labels = index.search(query, min(max(1, int(index.ntotal)), n), params=params)
    return [(int(i), float(s)) for i, s in zip(labels[0], scores[0]) if i >= 0]


def _refined(query: np.ndarray, table: VectorTable, hits: list[tuple[int, float]], k: int, refine: int) -> list[tuple[int, float]]:
    """The best ``k`` of ``hits`` re-scored by their stored float vectors (when ``refine > 1``)."""
    if refine <= 1 or not hits:
        return hits[:k]
    return exact_top(query[0], table, table.rows(np.array([i for i, _ in hits], np.int64)), k)


def _drop(hits: list[tuple[int, float]], skip: int | None) -> list[tuple[int, float]]:
    return hits if skip is None else [h for h in hits if h[0] != skip]


def _top_unsorted(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]
