"""One index's stored vectors as sorted arrays, and where they sit in an IVF index.

The planner (:mod:`sst_search.vector_search.planner`) needs a few stored rows per search (a
query's own vector, an exact scan, a re-rank), and for a filter known as a mask over the
rows, how many admitted vectors each IVF list holds. :class:`VectorTable` answers the first
in microseconds (a bisection over sorted ids, where a DuckDB query over the ``vectors``
table costs a scan); :class:`ListLayout` and :class:`AdmittedLists` the second, read off the
index's inverted lists once per index and kept per filter.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from sst_search.config import PlanConfig
from sst_search.vector_search import split_scan
from sst_search.vector_search.at_rest import RowReader
from sst_search.vector_search.indexes import ivf_of

#: Filters whose admitted vectors a table keeps counted per IVF list (a few KB each).
ADMITTED_KEPT = 64
#: Rows from which a filter's mask is counted per list in parts at once.
COUNT_SPLIT_ROWS = 1_000_000
#: The share of a table's rows up to which a mask's admitted rows are listed by IVF list.
GROUPED_SHARE = 1 / 16


#: Ids from which :func:`sorted_rows` bisects them in ascending order (below, it gains nothing).
SORTED_PROBES = 64


def sorted_rows(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(found, rows)``: which ``ids`` are in the ascending array ``sorted_ids``, and where
    (a row of a miss is meaningless): the join of a few ids against millions, by bisection.
    Many ids are bisected in ascending order, each search starting where the last ended (a
    post-filter's 900 candidates among 10 million ids: 0.45 ms instead of 0.63 in their
    score order)."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(sorted_ids):
        return np.zeros(len(ids), bool), np.zeros(len(ids), np.int64)
    if len(ids) > SORTED_PROBES:
        order = np.argsort(ids)
        rows = np.empty(len(ids), np.int64)
        rows[order] = np.searchsorted(sorted_ids, ids[order])
    else:
        rows = np.searchsorted(sorted_ids, ids)
    rows = np.minimum(rows, len(sorted_ids) - 1)
    return sorted_ids[rows] == ids, rows


def spans(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The positions ``starts[i]..ends[i]`` of every range, concatenated, without a Python loop."""
    lengths = ends - starts
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    if not len(lengths):
        return np.zeros(0, np.int64)
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))


class VectorTable:
    """One index's stored vectors, sorted by id: a query's own vector, exact scans and
    re-ranking look up a few rows per search in microseconds, where a DuckDB query over the
    ``vectors`` table costs a scan. The matrix is float32 in memory, or float16 mapped from a
    snapshot's file (:mod:`~sst_search.vector_search.at_rest`): rows become float32 as they are read.
    ``presorted``: the ids are known to ascend (a mapped file's; checking would read them all).
    ``stored_layout``: the :class:`ListLayout` written with the snapshot for an index, if it
    has one that fits it (else it is read off the index's lists)."""

    def __init__(self, ids: np.ndarray, matrix: np.ndarray, presorted: bool = False,
                 stored_layout: Callable[[faiss.Index], ListLayout | None] | None = None,
                 row_reader: RowReader | None = None) -> None:
        ids = np.asarray(ids, np.int64)
        if not presorted and len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            order = np.argsort(ids, kind="stable")
            ids, matrix = ids[order], matrix[order]
        self.ids, self.matrix = ids, matrix
        self._stored_layout = stored_layout
        self._row_reader = row_reader
        self._lock = threading.Lock()
        self._layout: tuple[faiss.Index, ListLayout] | None = None
        self._admitted: OrderedDict[int, tuple[weakref.ref, faiss.Index, AdmittedLists]] = OrderedDict()

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
        return self.ids[rows], np.asarray(self.gather(rows), np.float32)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The matrix's ``rows`` as stored (float16 at rest); a few from a mapped file are read
        rather than touched through the mapping (:class:`~sst_search.vector_search.at_rest.RowReader`)."""
        if self._row_reader is not None and len(rows) <= self._row_reader.MAX_ROWS:
            return self._row_reader.read(rows)
        return self.matrix[rows]

    def layout(self, index: faiss.Index) -> ListLayout:
        """Where these vectors sit in ``index`` (which holds exactly them): written with the
        snapshot, else read from its inverted lists, once per index."""
        cached = self._layout
        if cached is not None and cached[0] is index:
            return cached[1]
        layout = self._stored_layout(index) if self._stored_layout else None
        if layout is None:
            layout = ListLayout.of(index, self.ids)
        self._layout = (index, layout)
        return layout

    def admitted_lists(self, index: faiss.Index, mask: np.ndarray) -> AdmittedLists:
        """:class:`AdmittedLists` of the rows ``mask`` admits, kept per mask (a snapshot hands
        out one array per filter, and a filter paged through or shared by many users then
        costs nothing); the cache holds only a weak reference to the mask."""
        with self._lock:
            entry = self._admitted.get(id(mask))
            if entry is not None and entry[0]() is mask and entry[1] is index:
                self._admitted.move_to_end(id(mask))
                return entry[2]
        admitted = AdmittedLists(self.layout(index), mask)
        with self._lock:
            self._admitted[id(mask)] = (weakref.ref(mask), index, admitted)
            while len(self._admitted) > ADMITTED_KEPT:
                self._admitted.popitem(last=False)
        return admitted


@dataclass(frozen=True)
class ListLayout:
    """The IVF list of every row of a :class:`VectorTable` (-1 where the index lacks the
    row) and the rows of every list, in list order: a filter's mask over the rows then
    counts its admitted vectors per list, and picks out the admitted ones of a few lists,
    without asking the index."""

    row_lists: np.ndarray
    rows: np.ndarray
    starts: np.ndarray  # list l holds rows[starts[l]:starts[l + 1]]

    @classmethod
    def of(cls, index: faiss.Index, sorted_ids: np.ndarray) -> ListLayout:
        """``sorted_ids``: the table's ids, ascending (a row is a position in them)."""
        ivf = ivf_of(index)
        row_lists, parts = np.full(len(sorted_ids), -1, np.int32), []
        for list_no in range(ivf.nlist):
            size = ivf.invlists.list_size(list_no)
            found, rows = sorted_rows(sorted_ids, faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), size)) if size \
                else (np.zeros(0, bool), np.zeros(0, np.int64))
            rows = rows[found]
            row_lists[rows] = list_no
            parts.append(rows)
        starts = np.zeros(ivf.nlist + 1, np.int64)
        np.cumsum([len(p) for p in parts], out=starts[1:])
        rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return cls(row_lists, rows.astype(np.int32 if len(sorted_ids) < 2**31 else np.int64), starts)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.starts)

    def rows_in(self, lists: np.ndarray) -> np.ndarray:
        lists = np.asarray(lists, np.int64)
        return self.rows[spans(self.starts[lists], self.starts[lists + 1])]


class ListCounts:
    """How many of a filter's admitted vectors each IVF list holds, and the admitted rows of
    any lists. From the counts the plan knows before searching whether the lists nearest the
    query hold the filter's share (a post-filter would otherwise fall through) and which
    lists the selector must probe. Counted from a filter's mask (:class:`AdmittedLists`) or
    read off postings written with the snapshot
    (:class:`~sst_search.vector_search.postings.PostedLists`)."""

    def __init__(self, sizes: np.ndarray, held: np.ndarray) -> None:
        self.sizes, self.held = sizes, held
        self.holding = int(np.count_nonzero(self.held))
        self.count = int(self.held.sum())

    def __len__(self) -> int:
        return self.count

    def rows_in(self, lists: np.ndarray) -> np.ndarray:
        """The admitted table rows of ``lists``."""
        raise NotImplementedError

    def rows(self) -> np.ndarray:
        """Every admitted table row."""
        raise NotImplementedError

    def others_in(self, lists: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
        """The ids of ``lists`` that are not admitted."""
        raise NotImplementedError

    def passes_rows(self, rows: np.ndarray) -> np.ndarray:
        """Which of the table's ``rows`` are admitted."""
        raise NotImplementedError

    def seen_by_postfilter(self, order: np.ndarray, nprobe: int, fetch: int, fraction: float, need: int,
                           config: PlanConfig) -> bool:
        """Whether a post-filter would see the filter's share: the ``nprobe`` lists nearest
        the query (``order``) hold ``need`` admitted vectors, and the nearest lists that
        hold its ``fetch`` candidates pass at least ``min_candidate_pass_ratio`` of the share
        (a filter that avoids the query's neighbourhood does not, however many pass further out)."""
        near = order[:nprobe]
        if int(self.held[near].sum()) < need:
            return False
        candidates = near[: int(np.searchsorted(np.cumsum(self.sizes[near]), fetch)) + 1]
        return int(self.held[candidates].sum()) >= config.min_candidate_pass_ratio * fraction * int(
            self.sizes[candidates].sum())


class AdmittedLists(ListCounts):
    """:class:`ListCounts` of a filter's mask over the table's rows (one pass over them)."""

    def __init__(self, layout: ListLayout, mask: np.ndarray) -> None:
        self.layout, self.mask, self._rows, self._by_list = layout, mask, None, None
        super().__init__(layout.sizes, _held(layout, mask))

    def rows_in(self, lists: np.ndarray) -> np.ndarray:
        """A few admitted rows (at most :data:`GROUPED_SHARE` of the table) are read grouped
        by list, listed once per filter: the selector under a scattered 1% filter probes
        hundreds of lists, and checking each of their rows against the mask took 2.6 ms a
        search at 10M; else the lists' rows checked against the mask."""
        if self.count > GROUPED_SHARE * len(self.mask):
            rows = self.layout.rows_in(lists)
            return rows[self.mask[rows]]
        if self._by_list is None:
            rows = self.rows()
            lists_of = self.layout.row_lists[rows]
            kept = lists_of >= 0  # a row the index lacks is in no list
            order = np.argsort(lists_of[kept], kind="stable")
            self._by_list = rows[kept][order], np.concatenate([[0], np.cumsum(self.held)])
        grouped, starts = self._by_list
        lists = np.asarray(lists, np.int64)
        return grouped[spans(starts[lists], starts[lists + 1])]

    def rows(self) -> np.ndarray:
        """Listed once per filter: an exact scan under it then touches only its rows."""
        if self._rows is None:
            self._rows = np.flatnonzero(self.mask)
        return self._rows

    def others_in(self, lists: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
        rows = self.layout.rows_in(lists)
        return table_ids[rows[~self.mask[rows]]]

    def passes_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.mask[rows]


def _held(layout: ListLayout, mask: np.ndarray) -> np.ndarray:
    """The admitted rows of each list, counted in parts at once (:mod:`split_scan`) with
    ``np.compress``: over 10M rows with a fifth admitted, numpy's boolean indexing and
    ``bincount`` took 43 ms, ``compress`` 15 ms, and two parts of it 8 ms. A row the index
    lacks (list -1) is counted apart and dropped."""
    nlist, n = len(layout.sizes), len(mask)
    parts = split_scan.automatic_parts() if n >= COUNT_SPLIT_ROWS else 1
    bounds = np.linspace(0, n, parts + 1).astype(np.int64)

    def count(part: int) -> np.ndarray:
        rows = slice(bounds[part], bounds[part + 1])
        return np.bincount(np.compress(mask[rows], layout.row_lists[rows]) + 1, minlength=nlist + 1)[1:]

    return np.sum(split_scan.run_in_parts(count, parts), axis=0)
