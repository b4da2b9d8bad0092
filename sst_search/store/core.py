"""The live store: one DuckDB file (the truth) plus one FAISS index per (embedder, trait) (a cache).

:class:`Store` is the one object callers hold; each of its jobs lives in a module named for
it, and its methods hand over to them:

- :mod:`~sst_search.store.connection`: opening the file, a cursor per thread, transactions;
- :mod:`~sst_search.store.catalog`: the reads (a published snapshot's are
  :mod:`~sst_search.store.snapshot_catalog`'s, and ``Store.open(..., read_only=True)`` opens one);
- :mod:`~sst_search.store.indexed`: the FAISS indexes at the catalog's generations, and search;
- :mod:`~sst_search.store.writer`: upserts of specimens, masks, measurements and vectors, and runs;
- :mod:`~sst_search.store.relocation`: removing, re-keying and re-pointing specimens;
- :mod:`~sst_search.store.health`: status, verify, consistency and the repair of FAISS files.

Concurrency: DuckDB allows one writer *process*; opening a file read-only while another
process holds it for writing fails with DuckDB's lock error. Readers therefore open between
indexing runs (or on a copy); they always see a consistent snapshot because index files are
only ever replaced whole and are trusted only at a matching generation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pyarrow as pa

from sst_search.config import IndexConfig
from sst_search.store import health, relocation, writer
from sst_search.store import verify as vf
from sst_search.store.catalog import Catalog
from sst_search.store.connection import Connection
from sst_search.store.indexed import IndexedStore
from sst_search.store.records import SpecimenRecord
from sst_search.store.schema import DDL, migrate
from sst_search.store.snapshot_catalog import SnapshotStore
from sst_search.vector_search import indexes
from sst_search.vector_search.cache import IndexKey


class Store(IndexedStore, Catalog):
    """Catalog + vector indexes of one collection, open for writing: the reads of
    :class:`Catalog`, the writes, and the FAISS indexes kept consistent with them. Use :meth:`open`."""

    saves_rebuilt_indexes = True

    @overload
    @classmethod
    def open(cls, db_path: str | Path, read_only: Literal[False] = False,
             index_config: IndexConfig | None = None) -> Store: ...

    @overload
    @classmethod
    def open(cls, db_path: str | Path, read_only: Literal[True], index_config: None = None) -> SnapshotStore: ...

    @classmethod
    def open(
        cls,
        db_path: str | Path,
        read_only: bool = False,
        index_config: IndexConfig | None = None,
    ) -> Store | SnapshotStore:
        """Open (creating it) the store at ``db_path`` for writing; indexes live in ``<db_path>.faiss/``.
        ``read_only``: open it as a :class:`SnapshotStore` instead, which only reads.

        ``index_config`` (writers only) says which FAISS index kinds to build; it is recorded
        in the store, and every later opening (a reader rebuilding a stale file, a writer
        given none) uses the recorded one, so all of them build the kind the writer chose.

        A writer repairs stale or missing FAISS files right away, so a crashed run leaves
        nothing behind for the next one to trip over.
        """
        if read_only:
            return SnapshotStore.open(db_path)
        connection = Connection.open(Path(db_path), read_only=False)
        store = cls(connection)
        with store.opening():
            connection.execute(DDL)
            migrate(store.con)
            if index_config is not None:
                writer.record_index_config(connection, index_config)
            store.index_cache.config = store.recorded_index_config()
            indexes.remove_leftovers(store.faiss_dir)
            store.repair_indexes()
        return store

    def close(self) -> None:
        self.flush_indexes()
        super().close()

    def require_writer(self) -> None:
        """Nothing: a live store writes (a :class:`SnapshotStore`'s raises)."""

    # -- runs (see :mod:`writer`) -----------------------------------------------------------

    def begin_run(self, fingerprint: dict | None = None, config_hash: str | None = None, engine: str = "local") -> str:
        return writer.begin_run(self.connection, fingerprint, config_hash, engine)

    def finish_run(self, run_id: str, counts: dict | None = None, timings: dict | None = None) -> None:
        writer.finish_run(self.connection, run_id, counts, timings)

    # -- writing (see :mod:`writer`) ----------------------------------------------------------

    def write_batch(self, records: Sequence[SpecimenRecord]) -> None:
        """Upsert specimens with their masks, metadata and vectors in one transaction (see :func:`writer.write_batch`)."""
        writer.write_batch(self, records)

    def write_columns(
        self,
        specimens: pa.Table,
        metadata: pa.Table | None = None,
        masks: pa.Table | None = None,
        vectors: Mapping[IndexKey, tuple[np.ndarray, np.ndarray]] | None = None,
        measurements: pa.Table | None = None,
    ) -> None:
        """Bulk upsert, column-wise (see :func:`writer.write_columns`)."""
        writer.write_columns(self, specimens, metadata, masks, vectors, measurements)

    def write_chunks(self, chunks: Iterable[writer.Chunk]) -> int:
        """Bulk upsert of a stream of chunks, one in memory at a time and one transaction
        each (see :func:`writer.write_chunks`); returns the vectors written."""
        return writer.write_chunks(self, chunks)

    def replace_measurements(self, rows_by_specimen: Mapping[int, Sequence[Mapping]]) -> None:
        """Replace the measurements of these specimens, leaving masks and vectors alone; one transaction."""
        writer.replace_measurements(self, rows_by_specimen)

    def flush_indexes(self) -> None:
        """Persist every index changed since the last flush (atomic per file)."""
        self.index_cache.flush()

    # -- relocation (see :mod:`relocation`) ---------------------------------------------------

    def remove_specimens(self, ids: Iterable[int]) -> int:
        """Delete specimens everywhere (catalog, masks, metadata, vectors, indexes); returns how many existed."""
        return relocation.remove_specimens(self, ids)

    def move_specimens(self, moves: Mapping[int, tuple[int, str, str | None]]) -> int:
        """Re-point specimens without re-processing them: ``old_id -> (new_id, path, item_key)``
        (see :func:`relocation.move_specimens`). Returns how many rows moved."""
        return relocation.move_specimens(self, moves)

    def relocate(self, old_prefix: str, new_prefix: str) -> int:
        """Rewrite the prefix of every stored path (see :func:`relocation.relocate`); returns how
        many specimens were re-pointed."""
        return relocation.relocate(self, old_prefix, new_prefix)

    # -- health (see :mod:`health`) ------------------------------------------------------------

    def repair_indexes(self, deep: bool = False) -> list[IndexKey]:
        """Rebuild and save every index whose file is missing, stale or damaged (see
        :func:`health.repair_indexes`). Returns the rebuilt keys."""
        return health.repair_indexes(self, deep)

    def verify(self, sample: int = vf.SAMPLE, indexes: bool = True) -> list[vf.Problem]:
        """Full check of this store's database and FAISS files, after saving the indexes in memory."""
        self.flush_indexes()
        return super().verify(sample, indexes)
