"""An opened store, live or snapshot: its file, its FAISS indexes at the catalog's
generations, and search over them.

The catalog says which generation of each (embedder, trait) index is current; the
:class:`~sst_search.vector_search.cache.IndexCache` holds the index and vector table of that
generation (loaded from a trusted file, mapped from the vectors at rest, or rebuilt from the
catalog), and the planner (:mod:`sst_search.vector_search.planner`) searches them. This
class joins the three; it is the base of the live :class:`~sst_search.store.core.Store` and
of the read-only :class:`~sst_search.store.snapshot_catalog.SnapshotStore`, which differ in
their catalog and in whether they write.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import faiss
import numpy as np

from sst_search.config import IndexConfig
from sst_search.store import health
from sst_search.store import verify as vf
from sst_search.store.columns import read_off_postings
from sst_search.store.connection import Connection, repair_hint
from sst_search.store.errors import StoreDamagedError, storage_fault
from sst_search.vector_search import coded_centroids, split_scan
from sst_search.vector_search.cache import IndexCache, IndexKey
from sst_search.vector_search.planner import Admission, SearchOutcome, search_table
from sst_search.vector_search.vector_table import VectorTable

#: Largest k a search honours; more results than vectors are never returned anyway.
MAX_K = 10_000


class IndexedStore:
    """The parts every opened store has; the catalog's reads come from the subclass's catalog."""

    #: Whether an index rebuilt because its file was stale is saved (a writer's) or kept in memory only.
    saves_rebuilt_indexes: bool

    def __init__(self, connection: Connection, at_rest_db: Path | None = None) -> None:
        self.connection = connection
        self.db_path = connection.db_path
        self.faiss_dir = self.db_path.with_name(self.db_path.name + ".faiss")
        #: The FAISS indexes and vector arrays kept current with this store's generations
        #: (``at_rest_db``: the snapshot whose vectors at rest are mapped).
        self.index_cache = IndexCache(self.faiss_dir, IndexConfig(), self.get_vectors, at_rest_db=at_rest_db)

    @contextmanager
    def opening(self) -> Iterator[None]:
        """Wrap what a store does on opening: if it fails, the connection is closed, and a
        storage fault (a damaged file, a failing disk) is reported as damage with the repair
        to run."""
        try:
            yield
        except Exception as exc:
            self.connection.close()
            fault = storage_fault(exc)
            if fault is None or isinstance(fault, StoreDamagedError):
                raise
            raise StoreDamagedError([vf.Problem(str(self.db_path), str(fault), "database")],
                                    repair_hint(self.db_path)) from exc

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the database (see :attr:`Connection.con`)."""
        return self.connection.con

    @property
    def index_config(self) -> IndexConfig:
        """The index kinds this store builds (recorded by its writer)."""
        return self.index_cache.config

    def close(self) -> None:
        self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- indexes and search -----------------------------------------------------------------

    def index_keys(self) -> list[IndexKey]:
        return sorted(self.generations())

    def index(self, embedder: str, trait_name: str) -> faiss.Index:
        """The FAISS index of one (embedder, trait), current with the database."""
        key = (embedder, trait_name)
        generation = self.generations().get(key)
        if generation is None:
            known = ", ".join(f"{e}/{t}" for e, t in self.index_keys()) or "none"
            raise KeyError(f"no vectors for embedder {embedder!r}, trait {trait_name!r} (indexes: {known})")
        return self.index_cache.index(key, generation, self.index_dims()[key], writable=self.saves_rebuilt_indexes)

    def warm(self) -> None:
        """Load every index, code its centroids for ranking (:mod:`coded_centroids`) and have
        its file read into the page cache before returning (:meth:`IndexCache.read`): for a
        long-lived reader, the app, whose first searches would otherwise each pay for them;
        and start the threads that split a search's scan (:func:`split_scan.start_pool`)."""
        for key in self.index_keys():
            coded_centroids.for_index(self.index(*key))
            self.index_cache.read(key)
        split_scan.start_pool()

    def search_each_index(self) -> None:
        """One unfiltered search of each index, for its first stored vector: a process's first
        search pays for what every later one finds ready (BLAS's buffers, the scan threads'
        first task, the first rows read from the vectors at rest). At 10M x 768, from a cold
        page cache after warming, the first search took 10-14 ms and the next ones 7-9, most
        of the difference in ranking the lists (2.5-4.8 ms against 1.2-1.4)."""
        for key in self.index_keys():
            first = self.population(*key)[:1]
            if len(first):
                self.filtered_search(*key, self.vectors_of(*key, first)[1][0], 10)

    def search(
        self,
        embedder: str,
        trait_name: str,
        query_vectors: np.ndarray,
        k: int = 10,
        candidate_ids: Iterable[int] | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Top-``k`` ``(specimen_id, cosine)`` per query vector, best first.

        ``candidate_ids`` restricts the search (e.g. to a filter's result); see
        :meth:`filtered_search` for how, and for filters given as questions instead of ids.
        """
        queries = np.atleast_2d(np.asarray(query_vectors, dtype=np.float32))
        k = _checked_query(queries, k, embedder, trait_name)
        if candidate_ids is not None:
            admission = _IdSet(candidate_ids)
            return [self.filtered_search(embedder, trait_name, q, k, admission).hits for q in queries]
        index = self.index(embedder, trait_name)
        if queries.shape[1] != index.d:
            raise ValueError(f"{embedder}/{trait_name}: query of dim {queries.shape[1]}, index of dim {index.d}")
        k = min(k, max(1, index.ntotal))  # FAISS allocates k results per query, found or not
        scores, labels = index.search(queries, k)  # one batched call for many queries (evaluation)
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_ids, row_scores in zip(labels, scores)
        ]

    def filtered_search(
        self,
        embedder: str,
        trait_name: str,
        query: np.ndarray,
        k: int = 10,
        admission: Admission | None = None,
        skip: int | None = None,
    ) -> SearchOutcome:
        """Top-``k`` among what ``admission`` admits (everything when None), without ``skip``.

        Exactly ``k`` hits whenever at least ``k`` vectors are admitted, whatever the
        filter's selectivity: :mod:`sst_search.vector_search.planner` picks post-filtering, a
        FAISS ID selector or an exact scan of the admitted vectors.
        """
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        k = _checked_query(query, k, embedder, trait_name)
        index = self.index(embedder, trait_name)
        if query.shape[0] != index.d:
            raise ValueError(f"{embedder}/{trait_name}: query of dim {query.shape[0]}, index of dim {index.d}")
        table = self.vector_table(embedder, trait_name)
        key = (embedder, trait_name)
        posted = read_off_postings(admission, lambda field: self.index_cache.postings(key, self.generations()[key], field),
                                   table.ids)
        return search_table(index, table, self.index_config, query, k, admission, skip, posted)

    def population(self, embedder: str, trait_name: str) -> np.ndarray:
        """Sorted ids of one index's vectors (what selectivity samples are drawn from)."""
        return self.vector_table(embedder, trait_name).ids

    def vectors_of(self, embedder: str, trait_name: str, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids found, float32 matrix)`` from the index's vector table (in memory, or mapped
        float16 in a published snapshot), in the order asked.

        A query's own vector, exact scans and re-ranking need a few rows per search; looking
        them up in arrays kept per generation costs microseconds where a DuckDB query over
        the ``vectors`` table costs a scan.
        """
        ids = ids if isinstance(ids, np.ndarray) else np.fromiter((int(i) for i in ids), np.int64)
        return self.vector_table(embedder, trait_name).lookup(ids)

    def vector_table(self, embedder: str, trait_name: str) -> VectorTable:
        key = (embedder, trait_name)
        return self.index_cache.vector_table(key, self.generations().get(key))

    # -- health (reads; see :mod:`sst_search.store.health`) ---------------------------------

    def status(self) -> dict:
        """Counts per status and per group, and per index: vectors, generation, file state."""
        return health.status(self)

    def unindexed(self, limit: int = 20) -> list[tuple[str, str, str | None]]:
        """``(location, status, error)`` of items that are not indexed (see :func:`health.unindexed`)."""
        return health.unindexed(self, limit)

    def verify(self, sample: int = vf.SAMPLE, indexes: bool = True) -> list[vf.Problem]:
        """Full check of this store's database and FAISS files (see :mod:`verify`); empty when intact."""
        return health.verify(self, sample, indexes)

    def check_consistency(self) -> list[str]:
        """Problems between the catalog and the FAISS indexes (in memory, else on disk); empty when consistent."""
        return health.check_consistency(self)


def _checked_query(queries: np.ndarray, k: object, embedder: str, trait_name: str) -> int:
    """``k`` capped at :data:`MAX_K`; a non-positive ``k`` or a NaN query is an error, not an
    AssertionError deep in FAISS or NaN-scored hits."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not np.isfinite(queries).all():
        raise ValueError(f"{embedder}/{trait_name}: the query vector holds NaN or infinite values")
    return min(int(k), MAX_K)


class _IdSet:
    """An :class:`Admission` for a filter already evaluated to a set of ids."""

    def __init__(self, ids: Iterable[int]) -> None:
        self.ids = np.unique(np.fromiter((int(i) for i in ids), dtype=np.int64))

    def passes(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, self.ids)

    def admitted(self) -> np.ndarray:
        return self.ids
