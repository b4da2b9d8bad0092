"""Filtered top-k over one FAISS index: exactly ``k`` results whenever ``k`` items pass.

A filter (metadata, group, measurement: whatever the catalog's filter compiler turns into
SQL) reaches this module as two questions the catalog can answer, :class:`Admission`:
*which of these ids pass?* (cheap, a handful of ids) and *which ids pass at all?* (one
scan). The plan is chosen from the filter's selectivity, estimated on a fixed-seed sample
of the index's ids, or read exactly off a snapshot's mask when the index holds every
specimen (:class:`RowMask`):

``postfilter``
    Most items pass. Search unfiltered for ``max(overfetch, refine) * k / fraction`` hits
    and keep the first ``k`` that pass, re-ranking as many survivors as an unfiltered search
    re-ranks candidates (coarse codes need them). Falls through to the admitted-set plans when too few survive, so
    an estimate that was too optimistic costs time, never results. It also falls through
    when the candidates pass far less often than the collection does: the filter then
    avoids the query's neighbourhood (e.g. "specimens of *another* species most like this
    one"), and the first ``k`` survivors are the few admitted items that happen to sit in the
    lists an unfiltered search probes, not the admitted set's nearest. When the admitted
    rows are known on an IVF index, their count per list
    (:class:`~sst_search.vector_search.vector_table.ListCounts`: read off the filter's
    postings written with the snapshot, or counted once from a snapshot's mask and kept per
    filter) tells before searching whether the lists nearest the query hold the filter's
    share, so a post-filter that would fall through is not tried.
``selector``
    Between the two. FAISS searches only the admitted vectors. An IVF index is not probed in
    its usual nearest ``nprobe`` lists alone, which may hold few admitted vectors or none (a
    filter that avoids the query's neighbourhood): it probes the lists nearest the query
    *that hold admitted vectors*: those among the nearest ``nprobe``, then on until they
    hold ``selector_scan`` times what an unfiltered search would score if the admitted
    vectors were a collection of their own (:func:`admitted_scan`). A filter unrelated to
    the vectors is then searched about where an unfiltered search looks, and one that
    avoids the query's neighbourhood costs about what one around it costs. The selector is
    a set of the admitted ids of the probed lists, or of the others when most pass, or none
    when all do (specimen ids are 63-bit hashes, too sparse for a bitmap).
``exact``
    Few pass. Their stored vectors are scored directly: no approximate index can miss them.
    Between ``exact_min`` and ``exact_max`` only where their per-list counts are unknown, or
    when ``scattered_scan`` is 0 and they are scattered over the IVF lists
    (:func:`scans_exactly`); otherwise the selector's codes find them without reading every
    admitted row (deeper for a scattered filter), so a reader does not end up holding the
    whole float16 file.

:func:`search_table` picks the plan; each is one function (:func:`search_unfiltered`,
:func:`search_postfilter`, :func:`search_exact`, :func:`search_selector`). Every plan
returns ``min(k, admitted)`` hits. Compressed indexes (SQ/PQ codes) fetch
``refine * k`` candidates and re-rank them by the exact inner product of the stored float
vectors (float16 in a published snapshot), so a lossy code only has to put the true
neighbours among the candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import faiss
import numpy as np

from sst_search.config import IndexConfig, PlanConfig
from sst_search.vector_search import coded_centroids, split_scan
from sst_search.vector_search.half_precision import to_float32
from sst_search.vector_search.indexes import ivf_of
from sst_search.vector_search.vector_table import (
    AdmittedLists,
    ListCounts,
    VectorTable,
    sorted_rows,
)

Plan = Literal["postfilter", "selector", "exact", "unfiltered"]
#: float16 rows an exact scan widens through torch rather than numpy (a re-rank's few stay with numpy).
TORCH_WIDEN_ROWS = 256
#: Lists holding a filter's vectors ranked first for the selector, in multiples of ``nprobe``.
HOLDING_FIRST = 8


class Admission(Protocol):
    """What the catalog says about a filter, asked in two sizes."""

    def passes(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` pass the filter."""

    def admitted(self) -> np.ndarray:
        """Every id that passes the filter."""


class RowMask(Protocol):
    """An admission that may also know which rows of an index's id array pass, without a
    lookup per id per search (a snapshot's mask, over the rows of an index of its specimens
    or of some of them): the plan then reads the exact share and the admitted rows off it."""

    def table_mask(self, table_ids: np.ndarray) -> np.ndarray | None:
        """Boolean mask over ``table_ids`` (sorted), or None when it would cost a lookup per id."""


class DeferredMask(RowMask, Protocol):
    """A row mask built only when a plan needs every admitted vector: until then
    :meth:`table_mask` is None and :meth:`passes` asks the ids one by one, so a broad filter
    searched by post-filtering never pays a pass over the collection."""

    def needed_mask(self, table_ids: np.ndarray) -> np.ndarray | None:
        """:meth:`table_mask`, built now if it was not."""

    def remembered_share(self, population: np.ndarray, sample: Hashable, estimate: Callable[[], float]) -> float:
        """``estimate()`` of the admitted share of ``population`` (sorted ids) from the sample
        ``sample`` names, made once per population and sample."""


def _list_selector(counted: ListCounts, ids: np.ndarray, lists: np.ndarray) -> faiss.IDSelector | None:
    """A selector admitting the admitted vectors of ``lists``: None when they all pass, else
    a set of the admitted ids or of the others, whichever is smaller (a set lookup per
    scanned vector costs about as much as scoring it when the set is large, so lists mostly
    admitted test against the few that are not)."""
    n, total = int(counted.held[lists].sum()), int(counted.sizes[lists].sum())
    if n == total:
        return None
    if 2 * n <= total:
        return faiss.IDSelectorBatch(ids[counted.rows_in(lists)])
    selector = faiss.IDSelectorNot(batch := faiss.IDSelectorBatch(counted.others_in(lists, ids)))
    selector.inner = batch  # the wrapper does not keep what a selector refers to alive
    return selector


@dataclass
class SearchOutcome:
    """Hits ``(id, inner product)`` best first, and how they were found (for benches and tests)."""

    hits: list[tuple[int, float]]
    plan: Plan
    estimated_fraction: float | None = None
    fallbacks: list[str] = field(default_factory=list)
    #: Whether the filter's precomputed postings answered it (no mask built on the query path).
    posted: bool = False


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


def sampled_share(population: np.ndarray, admission: Admission, config: PlanConfig) -> float:
    """:func:`estimate_fraction`, remembered by an admission that keeps it
    (:meth:`DeferredMask.remembered_share`): the sample is the same search after search, and
    asking its ids costs a bisection of each among millions (3.5 ms a search at 10M)."""
    if hasattr(admission, "remembered_share"):
        return admission.remembered_share(population, (config.sample_size, config.seed),
                                          lambda: estimate_fraction(population, admission, config))
    return estimate_fraction(population, admission, config)


def choose_plan(fraction: float, n_total: int, k: int, config: PlanConfig, refine: int = 1) -> Plan:
    """The plan for a filter passing about ``fraction`` of ``n_total`` vectors, searched with
    ``refine`` times ``k`` candidates re-ranked."""
    if (fraction >= config.postfilter_min_fraction
            and _postfilter_fetch(fraction, k, config, refine) <= config.max_postfilter_fetch):
        return "postfilter"
    if fraction * n_total <= config.exact_max:
        return "exact"
    return "selector"


@dataclass
class _Query:
    """One query against one index, as every plan needs it: ``want`` hits are fetched (one
    more than ``k`` when ``skip`` may be among them), ``refine`` times as many re-ranked."""

    index: faiss.Index
    table: VectorTable
    config: IndexConfig
    vector: np.ndarray  # (1, dim) float32
    k: int
    skip: int | None
    ivf: faiss.IndexIVF | None
    refine: int

    @classmethod
    def of(cls, index: faiss.Index, table: VectorTable, config: IndexConfig, query: np.ndarray, k: int,
           skip: int | None) -> _Query:
        ivf = ivf_of(index)
        return cls(index, table, config, np.ascontiguousarray(np.asarray(query, np.float32).reshape(1, -1)), k, skip,
                   ivf, config.refine_for(int(index.ntotal)) if ivf is not None else 1)

    @property
    def want(self) -> int:
        return self.k + (1 if self.skip is not None else 0)

    def top(self, hits: list[tuple[int, float]]) -> list[tuple[int, float]]:
        """The first ``k`` of ``hits`` without ``skip``."""
        return _drop(hits, self.skip)[: self.k]


@dataclass
class _Share:
    """What a filter admits of one index, as far as the plans need it: the admitted vectors
    counted per IVF list when given (a filter's postings: ``posted``), else the admitted rows'
    mask when known (a snapshot's), else the admission to ask; the admitted share; and, on an
    IVF index with counts, the lists ranked for the query (once, for whichever plan runs)."""

    admission: Admission
    row_mask: np.ndarray | None
    fraction: float
    counted: ListCounts | None
    ranking: _Ranking | None
    posted: bool = False

    @classmethod
    def of(cls, q: _Query, admission: Admission, posted: ListCounts | None = None) -> _Share:
        if posted is not None and q.ivf is not None:
            return cls(admission, None, posted.count / max(1, len(q.table)), posted, _Ranking.of(q), True)
        row_mask = admission.table_mask(q.table.ids) if hasattr(admission, "table_mask") else None
        counted = q.table.admitted_lists(q.index, row_mask) if row_mask is not None and q.ivf is not None else None
        if counted is not None:
            fraction = counted.count / max(1, len(row_mask))
        elif row_mask is not None:
            fraction = np.count_nonzero(row_mask) / max(1, len(row_mask))
        else:
            fraction = sampled_share(q.table.ids, admission, q.config.plan)
        return cls(admission, row_mask, fraction, counted, _Ranking.of(q) if q.ivf is not None else None)

    def passes(self, q: _Query, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` (the index's) pass: read off the postings' codes when posted."""
        if not self.posted:
            return self.admission.passes(ids)
        found, rows = sorted_rows(q.table.ids, ids)
        return found & self.counted.passes_rows(rows)

    def fetch(self, q: _Query) -> int:
        """Candidates a post-filter asks the index for."""
        return min(int(q.index.ntotal), _postfilter_fetch(self.fraction, q.want, q.config.plan, q.refine))


@dataclass
class _Admitted:
    """The admitted rows of the table (listed, or as the share's mask), how many, and how many
    hits they can give (``k``, or fewer when fewer pass)."""

    rows: np.ndarray | None
    row_mask: np.ndarray | None
    count: int
    want: int
    counted: ListCounts | None = None

    @classmethod
    def of(cls, q: _Query, share: _Share) -> _Admitted:
        if share.posted:
            skipped = q.skip is not None and bool(share.passes(q, np.array([q.skip], np.int64))[0])
            return cls(None, None, share.counted.count, min(q.k, share.counted.count - skipped), share.counted)
        row_mask, counted = share.row_mask, share.counted
        if row_mask is None and hasattr(share.admission, "needed_mask"):  # a deferred mask: needed now
            row_mask = share.admission.needed_mask(q.table.ids)
            counted = q.table.admitted_lists(q.index, row_mask) if row_mask is not None and q.ivf is not None else None
        rows = _admitted_rows(share.admission, q.table) if row_mask is None else None
        count = (len(rows) if rows is not None else counted.count if counted is not None
                 else int(np.count_nonzero(row_mask)))
        return cls(rows, row_mask, count, min(q.k, count - _admits(q.table, q.skip, rows, row_mask)), counted)

    def listed(self) -> np.ndarray:
        if self.rows is not None:
            return self.rows
        return self.counted.rows() if self.counted is not None else np.flatnonzero(self.row_mask)

    def mask(self, n: int) -> np.ndarray:
        return self.row_mask if self.row_mask is not None else _mask_of(self.rows, n)


def search_table(
    index: faiss.Index, table: VectorTable, config: IndexConfig, query: np.ndarray, k: int,
    admission: Admission | None = None, skip: int | None = None, posted: ListCounts | None = None,
) -> SearchOutcome:
    """Top ``k`` of ``index``, whose stored vectors are ``table``, for one ``query`` among the
    ids ``admission`` admits, without ``skip``: planned and re-ranked as ``config`` says (a
    whole store's index, or one shard's). ``posted``: the admitted vectors already counted
    per IVF list (a filter's postings, :mod:`~sst_search.vector_search.postings`), so no
    mask of the filter is built. Picks the plan; each plan is one function below, and a plan
    that comes up short hands over to the admitted-set plans (see the module docstring)."""
    q = _Query.of(index, table, config, query, k, skip)
    if admission is None:
        return search_unfiltered(q)
    share = _Share.of(q, admission, posted)
    plan = _plan(q, share)
    outcome = SearchOutcome([], plan, share.fraction, posted=share.posted)
    if plan == "postfilter":
        hits, fallback = search_postfilter(q, share)
        if fallback is None:
            outcome.hits = hits
            return outcome
        outcome.fallbacks.append(fallback)
    admitted = _Admitted.of(q, share)
    if admitted.want <= 0:
        return outcome
    if scans_exactly(config.plan, admitted.count, admitted.counted):
        outcome.hits = search_exact(q, admitted)
        if plan != "exact":
            outcome.fallbacks.append("exact scan of the admitted set")
        return outcome
    if plan != "postfilter":
        outcome.plan = "selector"
    outcome.hits = search_selector(q, share, admitted, outcome.fallbacks)
    return outcome


def _plan(q: _Query, share: _Share) -> Plan:
    """:func:`choose_plan` from the share, then, where the admitted vectors are counted per
    IVF list, no post-filter that the lists nearest the query show would fall through."""
    plan = choose_plan(share.fraction, len(q.table), q.k, q.config.plan, q.refine)
    counted = share.counted
    if plan == "postfilter" and counted is not None and not counted.seen_by_postfilter(
        share.ranking.order, q.ivf.nprobe, share.fetch(q), share.fraction, q.want, q.config.plan
    ):
        plan = "exact" if scans_exactly(q.config.plan, counted.count, counted) else "selector"
    return plan


def scans_exactly(config: PlanConfig, count: int, counted: ListCounts | None) -> bool:
    """Whether ``count`` admitted vectors are scanned exactly rather than found by the selector:
    at most ``exact_min`` of them always; up to ``exact_max`` when their per-list counts are
    unknown, or show them scattered (:func:`scattered`) and ``scattered_scan`` is 0. A filter
    that follows the vectors (a group) fills the lists that hold it, and the index's codes
    find its nearest; a scan would read each admitted row, and at high dimension those rows
    span every page of the float16 file. A scattered one (a 1% date) is a sliver of every
    list: its nearest lie further from the query's lists, so the selector goes deeper
    (``scattered_scan``), which still reads no admitted row but the few it re-ranks."""
    if count > config.exact_max:
        return False
    if count <= config.exact_min or counted is None or not counted.holding:
        return True
    return config.scattered_scan == 0 and scattered(config, counted)


def scattered(config: PlanConfig, counted: ListCounts) -> bool:
    """Whether the admitted vectors make up less than ``concentrated_share`` of the IVF lists
    that hold them: a filter unrelated to the vectors, not one that follows them."""
    return counted.count < config.concentrated_share * int(counted.sizes[counted.held > 0].sum())


def search_unfiltered(q: _Query) -> SearchOutcome:
    """The ``unfiltered`` plan: the index's own top ``k``, re-ranked (on an IVF index, its
    nearest ``nprobe`` lists scanned in parts at once: :mod:`split_scan`)."""
    if q.ivf is None:
        return SearchOutcome(q.top(_faiss_search(q.index, q.table, q.vector, q.want, q.refine)), "unfiltered")
    hits = _Ranking.of(q).search_nearest(q.want * max(1, q.refine), q.ivf.nprobe)
    return SearchOutcome(q.top(_refined(q.vector, q.table, hits, q.want, q.refine)), "unfiltered")


def search_postfilter(q: _Query, share: _Share) -> tuple[list[tuple[int, float]], str | None]:
    """The ``postfilter`` plan: ``(hits, None)``, or ``(_, why it falls through)`` when too few
    candidates pass or they pass far less often than the collection does."""
    plan_config, fetch = q.config.plan, share.fetch(q)
    # The candidates in the index's own order; only the first k * refine that pass are
    # re-ranked by their stored vectors, as an unfiltered search re-ranks its first k * refine.
    if share.ranking is not None:
        hits = share.ranking.search_nearest(fetch, q.ivf.nprobe)
    else:
        hits = _index_search(q.index, q.vector, fetch)
    ids = np.fromiter((i for i, _ in hits), np.int64, len(hits))
    passed = share.passes(q, ids) if len(ids) else np.zeros(0, bool)
    passing = set(ids[passed].tolist())
    kept = _refined(q.vector, q.table, [h for h in _drop(hits, q.skip) if h[0] in passing][: q.k * q.refine], q.k,
                    q.refine)
    candidate_share = float(passed.mean()) if len(ids) else 0.0
    representative = candidate_share >= plan_config.min_candidate_pass_ratio * share.fraction
    if (len(kept) == q.k and representative) or len(hits) >= q.index.ntotal:  # or the whole index was filtered
        return kept, None
    return kept, (f"postfilter kept {len(kept)} of {q.k}" if len(kept) < q.k
                  else f"candidates passed at {candidate_share:.3f}, the collection at {share.fraction:.3f}")


def search_exact(q: _Query, admitted: _Admitted) -> list[tuple[int, float]]:
    """The ``exact`` plan: every admitted vector scored (in parts at once: :mod:`split_scan`)."""
    rows = admitted.listed()
    parts = split_scan.parts_for(q.config.plan, len(rows), len(rows) * q.table.matrix.shape[1])
    return q.top(exact_top(q.vector[0], q.table, rows, q.want, parts))


def search_selector(q: _Query, share: _Share, admitted: _Admitted, fallbacks: list[str]) -> list[tuple[int, float]]:
    """The ``selector`` plan: FAISS searches only the admitted vectors (on an IVF index, in
    the lists nearest the query that hold them); an exact scan when it finds too few (noted
    in ``fallbacks``)."""
    if q.ivf is not None:
        counted = admitted.counted if admitted.counted is not None else AdmittedLists(q.table.layout(q.index),
                                                                                      admitted.mask(len(q.table)))
        hits = _admitted_lists_search(q.ivf, q.table, q.config, q.vector, share.ranking or _Ranking.of(q),
                                      counted, q.want, q.refine)
    else:
        selector = faiss.IDSelectorBatch(q.table.ids[admitted.listed()])
        hits = _faiss_search(q.index, q.table, q.vector, q.want, q.refine, faiss.SearchParameters(sel=selector))
    hits = q.top(hits)
    if len(hits) < admitted.want:
        fallbacks.append(f"selector found {len(hits)} of {admitted.want}")
        hits = search_exact(q, admitted)
    return hits


def _admits(table: VectorTable, skip: int | None, rows: np.ndarray | None, row_mask: np.ndarray | None) -> int:
    """1 when ``skip`` is among the admitted rows (given as ``rows`` or as ``row_mask``), else 0."""
    if skip is None:
        return 0
    if rows is not None:
        return int(np.any(table.ids[rows] == skip))
    found, row = sorted_rows(table.ids, np.array([skip]))
    return int(found[0] and row_mask[row[0]])


def _mask_of(rows: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros(n, bool)
    mask[rows] = True
    return mask


def _admitted_rows(admission: Admission, table: VectorTable) -> np.ndarray:
    """Rows of the table whose ids ``admission`` admits, ascending."""
    admitted = np.asarray(admission.admitted(), np.int64)
    if len(admitted) > 1 and not (admitted[1:] > admitted[:-1]).all():
        admitted = np.unique(admitted)
    return table.rows(admitted)


def exact_top(query: np.ndarray, table: VectorTable, rows: np.ndarray, k: int, parts: int = 1
              ) -> list[tuple[int, float]]:
    """Top ``k`` of the table's ``rows`` by the exact inner product of their stored vectors
    (float16 at rest: scored in float32 from the rounded components); ``parts`` > 1 scores
    that many runs of the rows at once."""
    if len(rows) == 0:
        return []
    query = np.ascontiguousarray(query, np.float32)
    scores = np.empty(len(rows), np.float32)

    split_scan.in_runs(len(rows), parts,
                       lambda run: split_scan.score_into(
                           scores[run], query, to_float32(table.gather(rows[run]), TORCH_WIDEN_ROWS, one_thread=True)))
    top = np.argsort(-scores, kind="stable")[:k] if len(scores) <= 4 * k else _top_unsorted(scores, k)
    return [(int(table.ids[rows[j]]), float(scores[j])) for j in top]


def admitted_scan(admitted: ListCounts, ivf: faiss.IndexIVF, config: PlanConfig) -> int:
    """How many admitted vectors the selector scores at least: ``selector_scan`` times what an
    unfiltered search would score (its ``nprobe`` lists) if the admitted vectors were a
    collection of their own, spread over the lists that hold them. A filter that picks out a
    few clusters fills its lists, and the selector then reaches as far as an unfiltered
    search does; one unrelated to the vectors thins every list, and is scored
    ``scattered_scan`` times instead, since its nearest lie further out (where it has
    between ``exact_min`` and ``exact_max`` vectors and ``scattered_scan`` is set)."""
    per_list = admitted.count / max(1, admitted.holding)
    share = config.selector_scan
    if config.scattered_scan and config.exact_min < admitted.count <= config.exact_max and scattered(config, admitted):
        share = config.scattered_scan
    return int(math.ceil(min(admitted.count, share * ivf.nprobe * per_list)))


class _Ranking:
    """The IVF lists by closeness to one query (through an OPQ rotation, if any), scored once
    for whichever plan a search takes and ranked as far as it reads: the nearest ``depth``
    (a post-filter's and an unfiltered search's probes), or those holding a filter's vectors
    (the selector's, :meth:`holding`). Ranking all 12,649 lists of a 10M store in float32
    reads 39 MB a search; a fast-scan index's lists are found among their coded centroids'
    nearest (:mod:`~sst_search.vector_search.coded_centroids`) and only those scored in
    float32. Either way the lists a plan reads are ranked by their float32 scores."""

    def __init__(self, index: faiss.Index, query: np.ndarray, plan: PlanConfig, depth: int) -> None:
        self.ivf, self.plan = ivf_of(index), plan
        self.coarse = _coarse_input(index, query)
        depth = min(depth, self.ivf.nlist)
        self.coded = coded_centroids.for_index(index) if plan.coded_candidates else None
        self.centroids = self.coded.centroids if self.coded is not None else coded_centroids.flat_centroids(self.ivf)
        self.all_scores: np.ndarray | None = None
        if self.centroids is None:
            scores, order = self.ivf.quantizer.search(self.coarse, depth)
            self.scores, self.order = scores[0], order[0]
            return
        if self.coded is not None:
            near, _ = self.coded.candidates(self.coarse, plan.coded_candidates * depth, plan)
        else:
            # Scored apart from FAISS's flat search, which for one query runs on one core and ranks
            # through a heap as deep as the ranking: at 11,314 lists of dim 768 it took 3.2 ms for all
            # of them (1.7 ms for the nearest 213), this 1.9 ms (1.3) on one core, and it splits.
            self.all_scores = split_scan.inner_products(self.coarse[0], self.centroids, plan)
            near = np.argpartition(-self.all_scores, depth - 1)[:depth] if depth < self.ivf.nlist else np.arange(depth)
        self.order, self.scores = self._ranked(near, depth)

    @classmethod
    def of(cls, q: _Query) -> _Ranking:
        """``q``'s ranking as deep as every plan starts reading: the ``nprobe`` nearest lists."""
        return cls(q.index, q.vector, q.config.plan, q.ivf.nprobe)

    def _ranked(self, lists: np.ndarray, depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The nearest ``depth`` (all) of ``lists`` by their float32 scores, nearest first, ties
        by list number, and their scores."""
        lists = np.asarray(lists, np.int64)
        scores = (self.all_scores[lists] if self.all_scores is not None
                  else split_scan.row_inner_products(self.coarse[0], self.centroids, lists))
        order = np.lexsort((lists, -scores))[:depth]
        return lists[order], scores[order]

    def holding(self, held: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The nearest lists with ``held`` > 0, nearest first, enough to hold ``want`` admitted
        vectors (or all of them), their scores, and how many are among the nearest ``nprobe``
        (the lists an unfiltered search probes; ranked at least that deep). A filter held by
        most lists (a 1% date) reads a few hundred of them: the nearest :data:`HOLDING_FIRST`
        times ``nprobe`` are ranked first (by their coded centroids where the index has them,
        then in float32), and all only when those hold too few."""
        near = int(np.count_nonzero(held[self.order[: self.ivf.nprobe]]))
        if self.centroids is None:  # the quantizer ranks: asked again for all of them
            scores, order = self.ivf.quantizer.search(self.coarse, self.ivf.nlist)
            keep = held[order[0]] > 0
            return order[0][keep], scores[0][keep], near
        lists = np.flatnonzero(held)
        depth = HOLDING_FIRST * self.ivf.nprobe
        if len(lists) > depth:
            if self.all_scores is not None:
                nearest = lists[np.argpartition(-self.all_scores[lists], depth - 1)[:depth]]
            else:
                nearest = self._coded_holding(held, want, depth)
            if int(held[nearest].sum()) >= want:
                lists = nearest
        return *self._ranked(lists), near

    def _coded_holding(self, held: np.ndarray, want: int, depth: int) -> np.ndarray:
        """The nearest lists with ``held`` > 0 by their coded centroids, as many as hold ``want``
        admitted vectors in the codes' order and twice ``nprobe`` more (at most ``depth``):
        the lists a selector reads are the float32 ranking's first among them. Asked of the
        codes: twice as many as the filter's average list count says hold ``want``, and that
        margin (a 1% date held by every list reads a few hundred)."""
        margin = (self.plan.coded_candidates - 1) * self.ivf.nprobe
        estimated = math.ceil(want * np.count_nonzero(held) / max(1, int(held.sum())))
        lists, coded = self.coded.candidates(self.coarse, min(depth, 2 * estimated + margin), self.plan, held > 0)
        lists = lists[np.argsort(-coded, kind="stable")]
        reach = int(np.searchsorted(np.cumsum(held[lists]), want)) + 1
        return lists[: reach + margin]

    def search(self, n: int, lists: np.ndarray, scores: np.ndarray, selector: faiss.IDSelector | None = None
               ) -> list[tuple[int, float]]:
        """The index's own top ``n`` in ``lists`` (with their coarse ``scores``), among what
        ``selector`` admits."""
        ivf = self.ivf
        parts = split_scan.parts_for(self.plan, len(lists), len(lists) * ivf.ntotal / max(1, ivf.nlist) * ivf.d)
        found, labels = split_scan.scan_lists(ivf, self.coarse, lists, scores, max(1, min(n, int(ivf.ntotal))),
                                              selector, parts)
        return list(zip(labels.tolist(), found.tolist()))  # a post-filter's thousands: 4x faster than per item

    def search_nearest(self, n: int, lists: int) -> list[tuple[int, float]]:
        """The index's own top ``n`` in the nearest ``lists`` lists."""
        return self.search(n, self.order[:lists], self.scores[:lists])


def _admitted_lists_search(
    ivf: faiss.IndexIVF, table: VectorTable, config: IndexConfig, query: np.ndarray, ranking: _Ranking,
    counted: ListCounts, k: int, refine: int,
) -> list[tuple[int, float]]:
    """The selector plan on an IVF index: see the module docstring."""
    want = max(admitted_scan(counted, ivf, config.plan), k * refine)
    lists, scores, near = ranking.holding(counted.held, want)  # near: those an unfiltered search probes
    held = counted.held[lists]
    probed = max(near, int(np.searchsorted(np.cumsum(held), want)) + 1)
    selector = _list_selector(counted, table.ids, lists[:probed])
    hits = ranking.search(min(int(held[:probed].sum()), k * refine), lists[:probed], scores[:probed], selector)
    return _refined(query, table, hits, k, refine)


def _coarse_input(index: faiss.Index, query: np.ndarray) -> np.ndarray:
    """``query`` as the IVF index inside ``index`` sees it (through an OPQ rotation, if any)."""
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            query = faiss.downcast_VectorTransform(index.chain.at(i)).apply(query)
    return np.ascontiguousarray(query, np.float32)


def _postfilter_fetch(fraction: float, k: int, config: PlanConfig, refine: int) -> int:
    """Enough candidates that ``k * refine`` of them pass (``k * overfetch`` where that is more):
    the survivors then reach as deep in the index's order as an unfiltered search's re-rank.
    At 2M x 768 with fast-scan codes re-ranking 20 x k, ``overfetch`` alone kept about 3 x k
    survivors and recall@10 under a 5%-share filter at 0.966 whatever the re-rank."""
    return int(math.ceil(max(config.overfetch, refine) * k / max(fraction, 1e-9)))


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
    return [(i, s) for i, s in zip(labels[0].tolist(), scores[0].tolist()) if i >= 0]


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
