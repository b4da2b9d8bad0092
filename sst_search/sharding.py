"""One trait index split across Ray actors, for collections whose vectors outgrow one machine's RAM.

Each actor opens the published snapshot read-only (DuckDB allows any number of reading
processes) and holds one shard of one ``(embedder, trait)`` index: the vectors whose
``specimen_id % shards`` is its number, copied as float16 from the snapshot's vectors at
rest (float32 from the catalog for a snapshot without them), and a FAISS index built from
them, a chunk at a time, with the :class:`~sst_search.config.IndexConfig` the writer recorded. A search sends the query
vector and the filters to every shard; each answers its own top ``k`` through the same
planner as a single store (:func:`~sst_search.vector_search.planner.search_table`: exactly ``k``
whenever ``k`` of its specimens pass, filters evaluated against its snapshot), and the
driver keeps the best ``k`` of the union. The global top ``k`` lie among the shards' top
``k``, so under exact search the merged answer equals one index's answer.

Use it when one machine cannot hold an index's vectors and codes (about 1 KB per vector of
dim 512 in memory for exact scans and re-ranking, plus the index): the catalog stays one
DuckDB file on shared storage, and adding machines to the Ray cluster adds memory. On one
machine a single :class:`~sst_search.store.Store` is faster (no fan-out).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from sst_search.store import Store
from sst_search.store.filters import Filter
from sst_search.store.snapshots import resolve_snapshot
from sst_search.vector_search import at_rest
from sst_search.vector_search.indexes import build_index_from, index_kind
from sst_search.vector_search.planner import search_table
from sst_search.vector_search.vector_table import VectorTable


class IndexShard:
    """One shard of one trait index (a Ray actor's state; plain Python, so it runs without Ray too)."""

    def __init__(self, db_path: str, embedder: str, trait: str, shard: int, shards: int) -> None:
        self.store = Store.open(db_path, read_only=True)
        ids, matrix = self._shard_vectors((embedder, trait), shard, shards)
        self.table = VectorTable(ids, matrix, presorted=True)
        self.index = build_index_from(lambda rows: np.asarray(matrix[rows], np.float32), ids, matrix.shape[1],
                                      self.store.index_config) if len(ids) else None

    def _shard_vectors(self, key: tuple[str, str], shard: int, shards: int) -> tuple[np.ndarray, np.ndarray]:
        """The shard's ids, ascending, and vectors: float16 rows copied out of the snapshot's
        mapped vectors at rest (2 bytes per dimension held, and no scan of the catalog's
        vectors table, which would fill this process's DuckDB buffers with every shard's
        rows), else float32 from the catalog (a store published before vectors at rest)."""
        mapped = at_rest.open_vectors(at_rest.vectors_dir(self.store.db_path), key,
                                      self.store.generations().get(key))
        if mapped is None:
            ids, matrix = self.store.get_vectors(*key, shard=(shard, shards))
            return ids, np.ascontiguousarray(matrix, np.float32)
        all_ids, all_rows = mapped
        rows = np.flatnonzero(np.asarray(all_ids) % shards == shard)
        return np.asarray(all_ids[rows]), np.asarray(all_rows[rows])

    def describe(self) -> dict:
        """How many vectors the shard holds and which index kind it built."""
        return {"vectors": len(self.table), "kind": index_kind(self.index) if self.index is not None else None}

    def search(self, query: np.ndarray, k: int, filters: list[Filter], skip: int | None) -> list[tuple[int, float]]:
        if self.index is None:
            return []
        return search_table(self.index, self.table, self.store.index_config, query, k,
                            self.store.admission(filters), skip).hits

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
