"""One trait index split across Ray actors, for collections whose vectors outgrow one machine's RAM.

Each actor opens the published snapshot read-only (DuckDB allows any number of reading
processes) and holds one shard of one ``(embedder, trait)`` index: the vectors whose
``specimen_id % shards`` is its number, read where they lie in the snapshot's mapped
vectors at rest (float32 from the catalog for a snapshot without them), and a FAISS index of
them: the published IVF index's entries of those vectors, their codes copied from its lists
(else an index trained on them, of the kind the writer recorded). A search sends the query
vector and the filters to every shard; each answers its own top ``k`` through the same
planner as a single store (:func:`~sst_search.vector_search.planner.search_table`: exactly ``k``
whenever ``k`` of its specimens pass, filters evaluated against its snapshot; conditions on
posting fields read off the snapshot's postings, taken over the shard's rows when it starts), and the
driver keeps the best ``k`` of the union. The global top ``k`` lie among the shards' top
``k``, so under exact search the merged answer equals one index's answer; under the
published index's lists, each shard probes the lists the single index would.

Use it when one machine cannot hold an index's codes and the pages its searches touch, or
answer its queries fast enough: the catalog and the vectors at rest stay files on shared
storage, each machine reads the rows of its shards, and adding machines to the Ray cluster
adds memory and cores. On one machine a single :class:`~sst_search.store.Store` is faster
(no fan-out).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from sst_search.store import Store
from sst_search.store.columns import read_off_postings
from sst_search.store.filters import Filter
from sst_search.store.snapshots import resolve_snapshot
from sst_search.vector_search import at_rest, coded_centroids
from sst_search.vector_search.indexes import build_index_from, index_kind, ivf_of
from sst_search.vector_search.planner import search_table
from sst_search.vector_search.postings import Postings
from sst_search.vector_search.vector_table import VectorTable


class IndexShard:
    """One shard of one trait index (a Ray actor's state; plain Python, so it runs without Ray too)."""

    def __init__(self, db_path: str, embedder: str, trait: str, shard: int, shards: int) -> None:
        self.store = Store.open(db_path, read_only=True)
        key = (embedder, trait)
        self.table, positions = self._shard_table(key, shard, shards)
        copied = self.store.index_cache.part(key, self.store.generations()[key], shards, shard) if len(self.table) else None
        self.index = copied if copied is not None else self._trained_index() if len(self.table) else None
        #: Each posting field's postings over the shard's rows (empty where the index was trained here).
        self.postings = self._shard_postings(key, copied, positions) if copied is not None else {}
        self._prepare()

    def _shard_table(self, key: tuple[str, str], shard: int, shards: int) -> tuple[VectorTable, np.ndarray | None]:
        """The shard's ids, ascending, and its rows of the snapshot's mapped vectors at rest,
        read where they lie (:class:`~sst_search.vector_search.at_rest.RowSubset`): shards on
        one machine share the file's pages, and none fills the DuckDB buffers with a scan of
        the catalog's vectors; with the positions of those rows in the file. Float32 from the
        catalog (and no positions) for a store published before vectors at rest."""
        mapped = at_rest.open_vectors(at_rest.vectors_dir(self.store.db_path), key,
                                      self.store.generations().get(key))
        if mapped is None:
            ids, matrix = self.store.get_vectors(*key, shard=(shard, shards))
            return VectorTable(ids, np.ascontiguousarray(matrix, np.float32), presorted=True), None
        all_ids, matrix = mapped
        positions = np.flatnonzero(np.asarray(all_ids) % shards == shard)
        return VectorTable(np.asarray(all_ids[positions]), at_rest.RowSubset(matrix, positions), presorted=True,
                           row_reader=at_rest.RowReader(matrix, positions)), positions

    def _trained_index(self) -> faiss.Index:
        """An index trained on the shard's vectors, of the kind the writer recorded, where the
        snapshot has no IVF index file to copy the shard's entries from
        (:meth:`~sst_search.vector_search.cache.IndexCache.part`, which copies their codes
        from the published lists: no vector is read or encoded, and the shards' candidates
        together are the published index's): a flat or graph index, or a file that is
        missing or stale."""
        matrix = self.table.matrix
        return build_index_from(lambda positions: np.asarray(matrix[positions], np.float32), self.table.ids,
                                matrix.shape[1], self.store.index_config)

    def _shard_postings(self, key: tuple[str, str], copied: faiss.Index, positions: np.ndarray | None
                        ) -> dict[str, Postings]:
        """The snapshot's postings of each posting field over the shard's rows (``positions``
        of the vector table): a shard's first search under a group, a locality or a date then
        reads it off them, as a single store does, instead of building a mask over every
        specimen of the catalog (an own-group search's p95 was 74 ms for one shard of 10M x
        768, 13 ms at p50)."""
        if positions is None:
            return {}
        generation = self.store.generations()[key]
        found = {field: self.store.index_cache.part_postings(key, generation, field, copied, positions)
                 for field in self.store.posting_fields()}
        return {field: postings for field, postings in found.items() if postings is not None}

    def _prepare(self) -> None:
        """Ask when the shard starts what its first searches would otherwise ask: the filters'
        resolution and scope, the shard's rows among the specimens, its IVF list layout (a
        pass over every list, seconds at millions of vectors) and its lists' coded centroids
        (0.2 s at 12,649 lists of dim 768)."""
        columns = self.store.prepare_conditions()
        columns.table_rows(self.table.ids)
        if self.index is not None and ivf_of(self.index) is not None:
            self.table.layout(self.index)
            coded_centroids.for_index(self.index)

    def describe(self) -> dict:
        """How many vectors the shard holds and which index kind it built."""
        return {"vectors": len(self.table), "kind": index_kind(self.index) if self.index is not None else None}

    def search(self, query: np.ndarray, k: int, filters: list[Filter], skip: int | None) -> list[tuple[int, float]]:
        if self.index is None:
            return []
        admission = self.store.admission(filters)
        posted = read_off_postings(admission, self.postings.get, self.table.ids)
        return search_table(self.index, self.table, self.store.index_config, query, k, admission, skip, posted).hits

    def vector(self, specimen_id: int) -> np.ndarray | None:
        found, matrix = self.table.lookup(np.array([specimen_id], np.int64))
        return matrix[0] if len(found) else None


class ShardedIndex:
    """A trait index over ``shards`` Ray actors; :meth:`search` merges their top ``k``.

    Joins the Ray cluster already initialised in this process, else starts a local one
    (and shuts it down on :meth:`close`). ``num_cpus`` is what each actor reserves.
    """

    def __init__(self, db_path: str | Path, embedder: str, trait: str, shards: int, num_cpus: float = 1.0) -> None:
        import ray

        if shards < 1:
            raise ValueError(f"shards must be at least 1, got {shards}")
        self._ray = ray
        self._owns_cluster = not ray.is_initialized()
        if self._owns_cluster:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        snapshot = str(resolve_snapshot(db_path))
        actor = ray.remote(num_cpus=num_cpus)(IndexShard)
        self.actors = [actor.remote(snapshot, embedder, trait, i, shards) for i in range(shards)]
        self.shards = ray.get([a.describe.remote() for a in self.actors])

    def search(self, query: np.ndarray, k: int = 10, filters: Iterable[Filter] = (),
               skip: int | None = None) -> list[tuple[int, float]]:
        """Top ``k`` ``(specimen_id, inner product)`` over all shards, best first (ties by id)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        query = np.asarray(query, np.float32).reshape(-1)
        parts = self._ray.get([a.search.remote(query, int(k), list(filters), skip) for a in self.actors])
        return sorted((hit for part in parts for hit in part), key=lambda h: (-h[1], h[0]))[:k]

    def vector(self, specimen_id: int) -> np.ndarray | None:
        """A specimen's stored vector (to search by specimen), from the shard that holds it."""
        return self._ray.get(self.actors[int(specimen_id) % len(self.actors)].vector.remote(int(specimen_id)))

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        if self._owns_cluster:
            self._ray.shutdown()

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
