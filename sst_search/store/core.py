"""The store: one DuckDB file (the truth) plus one FAISS index per (embedder, trait) (a cache).

Crash safety: :meth:`Store.write_batch` and :meth:`Store.remove_specimens` change catalog
rows, vectors and the affected indexes' generations in one DuckDB transaction, then update
the in-memory FAISS indexes. :meth:`Store.flush_indexes` persists them atomically with
their generation. After a SIGKILL at any point the database holds either the whole batch or
none of it, and any FAISS file whose generation disagrees with the database is rebuilt from
the ``vectors`` table when the store is next opened (writer) or used (reader). The in-memory
side of that (load, rebuild, incremental update, save) is :class:`~sst_search.store.cache.IndexCache`.

Concurrency: DuckDB allows one writer *process*; opening a file read-only while another
process holds it for writing fails with DuckDB's lock error. Readers therefore open between
indexing runs (or on a copy); they always see a consistent snapshot because index files are
only ever replaced whole and are trusted only at a matching generation.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import faiss
import numpy as np
import pyarrow as pa

from sst_search.config import IndexConfig
from sst_search.store import at_rest, indexes
from sst_search.store import verify as vf
from sst_search.store.errors import StoreDamagedError, StoreError, is_lock_conflict, storage_fault
from sst_search.store.cache import IndexCache, IndexKey
from sst_search.store.catalog import Catalog, duckdb_memory_limit
from sst_search.store.planner import Admission, SearchOutcome, VectorTable, search_table
from sst_search.store.records import SpecimenRecord
from sst_search.store.review import REAPPLY_CORRECTIONS
from sst_search.store.schema import DDL, SPECIMEN_COLUMNS, TRAIT_MEASUREMENTS_COLUMNS, migrate

#: Vectors per Arrow chunk handed to DuckDB in a bulk write (bounds the extra memory).
VECTOR_CHUNK = 200_000

#: Largest k a search honours; more results than vectors are never returned anyway.
MAX_K = 10_000


def repair_hint(db_path: Path) -> str:
    return (f"`sst-search verify --db {db_path} --repair` rebuilds damaged FAISS files from the catalog "
            "and restores a damaged database from the last verified snapshot")


def _published_versions(db_path: Path) -> bool:
    versions = db_path.with_name(db_path.name + ".versions")
    return versions.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in versions.iterdir())


def _writable(db_path: Path) -> bool:
    """Whether this process may write the store's file and folder (False on a read-only mount)."""
    target = db_path if db_path.exists() else db_path.parent
    return os.access(target, os.W_OK) and os.access(db_path.parent, os.W_OK)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _measurement_table(rows_by_specimen: Mapping[int, Sequence[Mapping]], now: datetime) -> pa.Table:
    """Arrow table of ``trait_measurements`` rows (columns in :data:`TRAIT_MEASUREMENTS_COLUMNS` order)."""
    rows = [{**row, "specimen_id": sid} for sid, rs in rows_by_specimen.items() for row in rs]
    data = {c: [r.get(c) for r in rows] for c in TRAIT_MEASUREMENTS_COLUMNS}
    types = {"specimen_id": pa.int64(), "trait_id": pa.int32(), "trait_name": pa.string(), "unit": pa.string(),
             "scale_source": pa.string(), "dominant_color": pa.string()}
    table = pa.table({c: pa.array(v, types.get(c, pa.float64())) for c, v in data.items()})
    return table.append_column("measured_at", pa.array([now] * len(rows), pa.timestamp("us")))


_MEASUREMENT_INSERT = (
    f"INSERT INTO trait_measurements ({', '.join(TRAIT_MEASUREMENTS_COLUMNS)}, measured_at) "
    f"SELECT {', '.join(TRAIT_MEASUREMENTS_COLUMNS)}, measured_at FROM _new_measurements"
)


class Store(Catalog):
    """Catalog + vector indexes of one collection: the reads of :class:`Catalog`, the writes
    and the FAISS indexes kept consistent with them. Use :meth:`open`."""

    def __init__(self, db_path: Path, con: duckdb.DuckDBPyConnection, read_only: bool, index_config: IndexConfig) -> None:
        self.db_path = db_path
        self._connection = con
        self._local = threading.local()
        self.read_only = read_only
        self.faiss_dir = db_path.with_name(db_path.name + ".faiss")
        #: The FAISS indexes and vector arrays kept current with this store's generations.
        self.index_cache = IndexCache(self.faiss_dir, index_config, self.get_vectors,
                                      at_rest_db=db_path if read_only else None)

    @property
    def index_config(self) -> IndexConfig:
        """The index kinds this store builds (recorded by its writer)."""
        return self.index_cache.config

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the database.

        A DuckDB connection must not be used by two threads at once; a cursor per thread
        lets the app's sessions query in parallel (one session segmenting an upload never
        holds up another's search) without a lock around the whole store.
        """
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self._connection.cursor()
        return cursor

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        db_path: str | Path,
        read_only: bool = False,
        index_config: IndexConfig | None = None,
    ) -> Store:
        """Open (creating when writable) the store at ``db_path``; indexes live in ``<db_path>.faiss/``.

        ``index_config`` (writers only) says which FAISS index kinds to build; it is recorded
        in the store, and every later opening (a reader rebuilding a stale file, a writer
        given none) uses the recorded one, so all of them build the kind the writer chose.

        A writer repairs stale or missing FAISS files right away, so a crashed run leaves
        nothing behind for the next one to trip over.
        """
        db_path = Path(db_path)
        if read_only and not db_path.is_file():
            raise FileNotFoundError(f"{db_path}: no such store")
        if not read_only and not db_path.exists() and _published_versions(db_path):
            raise StoreDamagedError(
                [vf.Problem(str(db_path), "the live database is missing, but versions of it were published", "database")],
                "nothing was written (a new store would lose every review decision); " + repair_hint(db_path))
        if not read_only:  # a new store in a new folder: DuckDB would blame a lock instead
            db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(db_path), read_only=read_only, config={"memory_limit": duckdb_memory_limit()})
        except duckdb.Error as exc:
            if is_lock_conflict(exc):
                mode = "read-only" if read_only else "for writing"
                raise StoreError(
                    f"{db_path}: cannot open {mode}: {exc}. Only one process may write a store at a time, "
                    "and none may read it meanwhile"
                ) from exc
            if not read_only and not _writable(db_path):
                raise StoreError(f"{db_path}: cannot be written: its folder or file system is read-only "
                                 "(the store itself is not damaged; `sst-search verify` reads it)") from exc
            raise StoreDamagedError([vf.Problem(str(db_path), f"database does not open ({exc})", "database")],
                                    repair_hint(db_path)) from exc
        store = cls(db_path, con, read_only, IndexConfig())
        try:
            if not read_only:
                store._exec(DDL)
                migrate(store.con)
                if index_config is not None:
                    store._record_index_config(index_config)
            store.index_cache.config = store._recorded_index_config()
            if not read_only:
                indexes.remove_leftovers(store.faiss_dir)
                store.repair_indexes()
        except Exception as exc:
            con.close()
            fault = storage_fault(exc)
            if fault is None or isinstance(fault, StoreDamagedError):
                raise
            raise StoreDamagedError([vf.Problem(str(db_path), str(fault), "database")], repair_hint(db_path)) from exc
        return store

    def close(self) -> None:
        if not self.read_only:
            self.flush_indexes()
        self._connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs ----------------------------------------------------------------------------

    def begin_run(self, fingerprint: dict | None = None, config_hash: str | None = None, engine: str = "local") -> str:
        run_id = uuid.uuid4().hex
        self._exec(
            "INSERT INTO runs (run_id, started_at, fingerprint, config_hash, engine) VALUES (?, ?, ?, ?, ?)",
            [run_id, _now(), json.dumps(fingerprint or {}), config_hash, engine],
        )
        return run_id

    def finish_run(self, run_id: str, counts: dict | None = None, timings: dict | None = None) -> None:
        self._exec(
            "UPDATE runs SET finished_at = ?, counts = ?, timings = ? WHERE run_id = ?",
            [_now(), json.dumps(counts or {}), json.dumps(timings or {}), run_id],
        )

    # -- writing -------------------------------------------------------------------------

    def write_batch(self, records: Sequence[SpecimenRecord]) -> None:
        """Upsert specimens with their masks, metadata and vectors in one transaction.

        Earlier masks, metadata and vectors of these specimens are replaced, not merged, so
        a re-processed item never keeps vectors of a trait it no longer has.
        """
        self._require_writer()
        if not records:
            return
        for r in records:
            r.validate()
        grouped: dict[IndexKey, list[tuple[int, np.ndarray]]] = {}
        for r in records:
            for key, vec in r.vectors.items():
                grouped.setdefault(key, []).append((r.specimen_id, np.asarray(vec, np.float32)))
        for key, rows in grouped.items():
            if len({len(v) for _, v in rows}) > 1:
                raise ValueError(f"{key[0]}/{key[1]}: vectors of dims {sorted({len(v) for _, v in rows})} in one batch")
        self.write_columns(
            specimens=pa.Table.from_pylist(
                [
                    {
                        "specimen_id": r.specimen_id, "path": r.path, "group_name": r.group_name,
                        "content_hash": r.content_hash, "status": r.status, "error": r.error,
                        "fingerprint": json.dumps(r.fingerprint) if r.fingerprint is not None else None,
                        "width": r.width, "height": r.height, "metadata": json.dumps(r.metadata),
                        "orientation": r.orientation, "mirrored": r.mirrored,
                        "item_key": r.item_key, "source": r.source, "fetched_at": r.fetched_at,
                        "license": r.license, "rights_holder": r.rights_holder, "full_source": r.full_source,
                        "original_width": r.original_width, "original_height": r.original_height,
                    }
                    for r in records
                ],
                schema=SPECIMEN_COLUMNS,
            ),
            metadata=pa.table(
                {
                    "specimen_id": pa.array([r.specimen_id for r in records for _ in r.metadata], pa.int64()),
                    "key": pa.array([k for r in records for k in r.metadata], pa.string()),
                    "value": pa.array([None if v is None else str(v) for r in records for v in r.metadata.values()], pa.string()),
                }
            ),
            masks=pa.table(
                {
                    "specimen_id": pa.array([r.specimen_id for r in records for _ in r.masks], pa.int64()),
                    "trait_id": pa.array([m.trait_id for r in records for m in r.masks], pa.int32()),
                    "trait_name": pa.array([m.trait_name for r in records for m in r.masks], pa.string()),
                    "area": pa.array([m.area for r in records for m in r.masks], pa.int64()),
                    **{
                        f"bbox_{c}": pa.array([m.bbox[i] for r in records for m in r.masks], pa.int32())
                        for i, c in enumerate(("x0", "y0", "x1", "y1"))
                    },
                    "rle": pa.array([m.rle for r in records for m in r.masks], pa.string()),
                    "quality": pa.array([m.quality for r in records for m in r.masks], pa.float64()),
                    "source": pa.array([m.source for r in records for m in r.masks], pa.string()),
                    "object_score": pa.array([m.object_score for r in records for m in r.masks], pa.float64()),
                    "predicted_iou": pa.array([m.predicted_iou for r in records for m in r.masks], pa.float64()),
                }
            ),
            measurements=_measurement_table({r.specimen_id: r.measurements for r in records}, _now()),
            vectors={
                key: (np.array([s for s, _ in rows], np.int64), np.stack([v for _, v in rows]))
                for key, rows in grouped.items()
            },
        )

    def write_columns(
        self,
        specimens: pa.Table,
        metadata: pa.Table | None = None,
        masks: pa.Table | None = None,
        vectors: Mapping[IndexKey, tuple[np.ndarray, np.ndarray]] | None = None,
        measurements: pa.Table | None = None,
    ) -> None:
        """Bulk upsert, column-wise: what :meth:`write_batch` does, for millions of rows.

        ``specimens``, ``metadata``, ``masks`` and ``measurements`` are Arrow tables with the
        columns of ``specimens``, ``specimen_metadata``, ``trait_masks`` and
        ``trait_measurements`` (``updated_at`` and ``measured_at`` are set here); ``vectors`` maps
        ``(embedder, trait)`` to ``(specimen ids, (n, dim) float32 unit vectors)``. DuckDB
        ingests the Arrow buffers directly; indexes are built once, from the matrices in
        hand, instead of per row.
        """
        self._require_writer()
        vectors = {key: (np.asarray(i, np.int64), np.asarray(m, np.float32)) for key, (i, m) in (vectors or {}).items()}
        unknown = set(specimens.column_names) - set(SPECIMEN_COLUMNS.names)
        missing = {"specimen_id", "path", "status"} - set(specimens.column_names)
        if unknown or missing:
            raise ValueError(f"specimens table: unknown columns {sorted(unknown)}, missing {sorted(missing)}")
        for column in SPECIMEN_COLUMNS:  # optional columns left out are NULL
            if column.name not in specimens.column_names:
                specimens = specimens.append_column(column, pa.nulls(len(specimens), column.type))
        ids = specimens.column("specimen_id").to_numpy().astype(np.int64)
        if len(ids) == 0:
            return
        if len(np.unique(ids)) != len(ids):
            raise ValueError("a batch lists the same specimen_id twice")
        indexed = ids[np.asarray(specimens.column("status").to_pylist()) == "indexed"]
        dims = self._dims()
        for key, (vids, matrix) in vectors.items():
            name = f"{key[0]}/{key[1]}"
            if matrix.ndim != 2 or len(matrix) != len(vids):
                raise ValueError(f"{name}: {len(vids)} ids for a vector matrix of shape {matrix.shape}")
            if key in dims and matrix.shape[1] != dims[key]:
                raise ValueError(f"{name}: vectors of dim {matrix.shape[1]} for an index of dim {dims[key]}")
            if not np.isin(vids, indexed).all():
                raise ValueError(f"{name}: vectors for specimens that are not in this batch as 'indexed'")
            if not np.isfinite(matrix).all() or np.abs(np.linalg.norm(matrix, axis=1) - 1.0).max(initial=0) > 1e-3:
                raise ValueError(f"{name}: vectors must be finite and L2-normalised")
        id_table = pa.table({"specimen_id": pa.array(ids, pa.int64())})
        with self._transaction({"_ids": id_table}):
            old_keys = self._keys_of_batch()
        touched = old_keys | set(vectors)
        for key in touched & set(dims):
            self.index(*key)  # make sure it is in memory for the incremental update below
        tables = {"_ids": id_table, "_new_specimens": specimens.append_column("updated_at", pa.array([_now()] * len(ids)))}
        if metadata is not None:
            tables["_new_metadata"] = metadata
        if masks is not None:
            tables["_new_masks"] = masks
        if measurements is not None:
            tables["_new_measurements"] = measurements
        with self._transaction(tables):
            self._delete_children()
            self._insert("specimens", "_new_specimens", (*specimens.column_names, "updated_at"), replace=True)
            if metadata is not None:
                self._insert("specimen_metadata", "_new_metadata", ("specimen_id", "key", "value"))
            if masks is not None:
                self._insert("trait_masks", "_new_masks", masks.column_names)
            self._exec(REAPPLY_CORRECTIONS)
            if measurements is not None:
                self._exec(_MEASUREMENT_INSERT)
            for key, (vids, matrix) in vectors.items():
                for start in range(0, len(vids), VECTOR_CHUNK):
                    part = slice(start, start + VECTOR_CHUNK)
                    flat = pa.array(matrix[part].ravel())
                    chunk = pa.table({
                        "embedder": pa.array([key[0]] * len(vids[part])), "trait_name": pa.array([key[1]] * len(vids[part])),
                        "specimen_id": vids[part], "faiss_id": vids[part],
                        "vector": pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1]).cast(pa.list_(pa.float32())),
                    })
                    self.con.register("_new_vectors", chunk)
                    try:
                        self._insert("vectors", "_new_vectors", ("embedder", "trait_name", "specimen_id", "faiss_id", "vector"))
                    finally:
                        self.con.unregister("_new_vectors")
            generations = self._bump(touched, {k: m.shape[1] for k, (_, m) in vectors.items()})
        self._apply(touched, ids, vectors, generations)

    def remove_specimens(self, ids: Iterable[int]) -> int:
        """Delete specimens everywhere (catalog, masks, metadata, vectors, indexes); returns how many existed."""
        self._require_writer()
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        with self._transaction({"_ids": pa.table({"specimen_id": pa.array(ids, pa.int64())})}):
            touched = self._keys_of_batch()
        for key in touched:
            self.index(*key)
        with self._transaction({"_ids": pa.table({"specimen_id": pa.array(ids, pa.int64())})}):
            existed = self.con.execute(
                "SELECT count(*) FROM specimens WHERE specimen_id IN (SELECT specimen_id FROM _ids)"
            ).fetchall()[0][0]
            self._delete_children()
            self._exec("DELETE FROM specimens WHERE specimen_id IN (SELECT specimen_id FROM _ids)")
            generations = self._bump(touched, {})
        self._apply(touched, ids, {}, generations)
        return int(existed)

    def move_specimens(self, moves: Mapping[int, tuple[int, str, str | None]]) -> int:
        """Re-point specimens without re-processing them: ``old_id -> (new_id, path, item_key)``.

        For an item whose file moved (same bytes) or a row written before ids came from item
        keys. Every table with a ``specimen_id`` column follows the new id (tables added later
        included), and the FAISS indexes of re-keyed specimens are rebuilt at a new
        generation; all in one transaction. Returns how many rows moved.
        """
        self._require_writer()
        if not moves:
            return 0
        rows = [(int(old), int(new), path, key) for old, (new, path, key) in moves.items()]
        rekeyed = [old for old, new, _, _ in rows if old != new]
        clash = self.con.execute(
            "SELECT specimen_id FROM specimens WHERE specimen_id IN (SELECT unnest(?::BIGINT[]))",
            [[new for old, new, _, _ in rows if old != new]],
        ).fetchall()
        if clash:
            raise ValueError(f"cannot move specimens onto ids that are in use: {[c[0] for c in clash][:5]}")
        touched = {(e, t) for e, t in self.con.execute(
            "SELECT DISTINCT embedder, trait_name FROM vectors WHERE specimen_id IN (SELECT unnest(?::BIGINT[]))", [rekeyed]
        ).fetchall()}
        tables = [t for (t,) in self.con.execute(
            "SELECT DISTINCT c.table_name FROM duckdb_columns() c JOIN duckdb_tables() t "
            "ON t.table_oid = c.table_oid WHERE c.column_name = 'specimen_id' AND NOT t.temporary"
        ).fetchall()]
        table = pa.table({
            "old_id": pa.array([r[0] for r in rows], pa.int64()), "new_id": pa.array([r[1] for r in rows], pa.int64()),
            "path": pa.array([r[2] for r in rows], pa.string()), "item_key": pa.array([r[3] for r in rows], pa.string()),
        })
        with self._transaction({"_moves": table}):
            self._exec("UPDATE specimens SET path = m.path, item_key = m.item_key "
                       "FROM _moves m WHERE specimens.specimen_id = m.old_id")
            if rekeyed:
                for name in tables:
                    extra = ", faiss_id = m.new_id" if name == "vectors" else ""
                    self._exec(f'UPDATE "{name}" SET specimen_id = m.new_id{extra} FROM _moves m '
                               f'WHERE "{name}".specimen_id = m.old_id AND m.old_id <> m.new_id')
            generations = self._bump(touched, {})
        for key in touched:
            self.index_cache.forget(key)  # ids changed: rebuilt from the vectors table below
        self._apply(touched, [], {}, generations)
        return len(rows)

    def relocate(self, old_prefix: str, new_prefix: str) -> int:
        """Rewrite the prefix of every stored image path (and of the references and image
        cache folders the runs recorded, and of the support images ``promote`` decisions
        note) in one transaction: the collection was moved or mounted elsewhere. Matches
        whole path components only. Returns how many specimens were re-pointed."""
        self._require_writer()
        old, new = old_prefix.rstrip("/") or "/", new_prefix.rstrip("/") or "/"
        relative = self.con.execute(
            "SELECT count(*) FROM specimens WHERE path NOT LIKE '/%' AND status = 'indexed'").fetchall()[0][0]
        if relative:
            raise ValueError(f"{self.db_path}: {relative} specimens have paths relative to the folder an older version "
                             "was run from; re-run `sst-search index` with the collection at its current place to "
                             "store absolute paths, then relocate")
        match = "(path = ? OR starts_with(path, ? || '/'))"
        with self._transaction({}):
            count = self.con.execute(f"SELECT count(*) FROM specimens WHERE {match}", [old, old]).fetchall()[0][0]
            self._exec(f"UPDATE specimens SET path = ? || substr(path, ?) WHERE {match}",
                       [new, len(old) + 1, old, old])
            self._exec(f"UPDATE review_decisions SET note = ? || substr(note, ?) "
                       f"WHERE decision = 'promote' AND {match.replace('path', 'note')}", [new, len(old) + 1, old, old])
            for run_id, fingerprint in self.con.execute("SELECT run_id, fingerprint FROM runs").fetchall():
                fp = json.loads(fingerprint) if fingerprint else {}
                moved = {k: new + v[len(old):] for k in ("references_dir", "image_cache")
                         if isinstance(v := fp.get(k), str) and (v == old or v.startswith(old + "/"))}
                if moved:
                    self._exec("UPDATE runs SET fingerprint = ? WHERE run_id = ?", [json.dumps({**fp, **moved}), run_id])
        return int(count)

    def replace_measurements(self, rows_by_specimen: Mapping[int, Sequence[Mapping]]) -> None:
        """Replace the measurements of these specimens (a re-measure with another scale, say),
        leaving masks and vectors alone; one transaction."""
        self._require_writer()
        if not rows_by_specimen:
            return
        with self._transaction(self._measurement_tables(rows_by_specimen)):
            self._write_measurements(rows_by_specimen)

    def _measurement_tables(self, rows_by_specimen: Mapping[int, Sequence[Mapping]],
                            now: datetime | None = None) -> dict[str, pa.Table]:
        """What a transaction writing these measurements registers (``measured_at`` = ``now``)."""
        return {"_new_measurements": _measurement_table(rows_by_specimen, now or _now())}

    def _write_measurements(self, rows_by_specimen: Mapping[int, Sequence[Mapping]]) -> None:
        """Replace the specimens' measurements, inside a transaction that registered :meth:`_measurement_tables`."""
        ids = [int(i) for i in rows_by_specimen]
        self._exec("DELETE FROM trait_measurements WHERE specimen_id IN (SELECT unnest(?::BIGINT[]))", [ids])
        self._exec(_MEASUREMENT_INSERT)

    def flush_indexes(self) -> None:
        """Persist every index changed since the last flush (atomic per file)."""
        self._require_writer()
        self.index_cache.flush()

    def repair_indexes(self, deep: bool = False) -> list[IndexKey]:
        """Rebuild and save every index whose file is missing, stale or of the wrong size;
        ``deep``: also every file that fails :func:`verify.check_index` (load, checksum,
        count, ids, sampled vectors). Returns the rebuilt keys."""
        self._require_writer()
        self.flush_indexes()
        repaired = []
        for embedder, trait, generation, dim in vf.index_states(self.con):
            key = (embedder, trait)
            if deep:
                damaged = bool(vf.check_index(self.con, self.faiss_dir, key, generation, dim))
            else:
                damaged = self.index_cache.file_state(key, generation)[0] != "fresh"
            if damaged:
                self.index_cache.replace(key, self.index_cache.rebuild(key, dim), generation)
                repaired.append(key)
        self.flush_indexes()
        return repaired

    def verify(self, sample: int = vf.SAMPLE, indexes: bool = True) -> list[vf.Problem]:
        """Full check of this store's database and FAISS files (see :mod:`verify`); empty when intact."""
        if not self.read_only:
            self.flush_indexes()
        problems = vf.check_database(self.con, self.db_path)
        if problems or not indexes:
            return problems
        return vf.check_indexes(self.con, self.faiss_dir, sample) or at_rest.check_all(self.con, self.db_path, sample)

    # -- indexes and search -----------------------------------------------------------------

    def index_keys(self) -> list[IndexKey]:
        return sorted(self._generations())

    def index(self, embedder: str, trait_name: str) -> faiss.Index:
        """The FAISS index of one (embedder, trait), current with the database."""
        key = (embedder, trait_name)
        generation = self._generations().get(key)
        if generation is None:
            known = ", ".join(f"{e}/{t}" for e, t in self.index_keys()) or "none"
            raise KeyError(f"no vectors for embedder {embedder!r}, trait {trait_name!r} (indexes: {known})")
        return self.index_cache.index(key, generation, self._dims()[key], writable=not self.read_only)

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
        filter's selectivity: :mod:`sst_search.store.planner` picks post-filtering, a FAISS
        ID selector or an exact scan of the admitted vectors.
        """
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        k = _checked_query(query, k, embedder, trait_name)
        index = self.index(embedder, trait_name)
        if query.shape[0] != index.d:
            raise ValueError(f"{embedder}/{trait_name}: query of dim {query.shape[0]}, index of dim {index.d}")
        return search_table(index, self._vector_table(embedder, trait_name), self.index_config, query, k, admission, skip)

    def population(self, embedder: str, trait_name: str) -> np.ndarray:
        """Sorted ids of one index's vectors (what selectivity samples are drawn from)."""
        return self._vector_table(embedder, trait_name).ids

    def vectors_of(self, embedder: str, trait_name: str, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids found, float32 matrix)`` from the index's vector table (in memory, or mapped
        float16 in a published snapshot), in the order asked.

        A query's own vector, exact scans and re-ranking need a few rows per search; looking
        them up in arrays kept per generation costs microseconds where a DuckDB query over
        the ``vectors`` table costs a scan.
        """
        ids = ids if isinstance(ids, np.ndarray) else np.fromiter((int(i) for i in ids), np.int64)
        return self._vector_table(embedder, trait_name).lookup(ids)

    def _vector_table(self, embedder: str, trait_name: str) -> VectorTable:
        key = (embedder, trait_name)
        return self.index_cache.vector_table(key, self._generations().get(key))

    def status(self) -> dict:
        """Counts per status and per group, and per index: vectors, generation, file state."""
        by_status = dict(self.con.execute("SELECT status, count(*) FROM specimens GROUP BY 1 ORDER BY 1").fetchall())
        groups: dict[str, dict[str, int]] = {}
        for group, st, n in self.con.execute(
            "SELECT coalesce(group_name, ''), status, count(*) FROM specimens GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall():
            groups.setdefault(group, {})[st] = n
        counts = {
            (e, t): n
            for e, t, n in self.con.execute("SELECT embedder, trait_name, count(*) FROM vectors GROUP BY 1, 2").fetchall()
        }
        index_rows = []
        for key, generation in sorted(self._generations().items()):
            state, manifest = self.index_cache.file_state(key, generation)
            index_rows.append(
                {"embedder": key[0], "trait": key[1], "vectors": counts.get(key, 0), "generation": generation,
                 "file": state, "kind": manifest.get("kind") if manifest else None}
            )
        return {"specimens": by_status, "groups": groups, "indexes": index_rows,
                "runs": self.con.execute("SELECT count(*) FROM runs").fetchall()[0][0]}

    def unindexed(self, limit: int = 20) -> list[tuple[str, str, str | None]]:
        """``(location, status, error)`` of items that are not indexed, by location: the URL of an
        image fetched by URL (its cached file means nothing to whoever fixes it), else its path."""
        return self.con.execute(
            "SELECT COALESCE(source, path) AS location, status, error FROM specimens WHERE status <> 'indexed' "
            "ORDER BY location LIMIT ?", [int(limit)]
        ).fetchall()

    def check_consistency(self) -> list[str]:
        """Problems between the catalog and the FAISS indexes (in memory, else on disk); empty when consistent."""
        problems = []
        orphans = self.con.execute(
            "SELECT count(*) FROM vectors v LEFT JOIN specimens s USING (specimen_id) "
            "WHERE s.specimen_id IS NULL OR s.status <> 'indexed'"
        ).fetchall()[0][0]
        if orphans:
            problems.append(f"{orphans} vectors belong to specimens that are missing or not indexed")
        for embedder, trait, generation, dim in vf.index_states(self.con):
            key = (embedder, trait)
            in_memory = self.index_cache.in_memory(key, generation)
            problems += [f"{embedder}/{trait}: {p.what}"
                         for p in vf.check_index(self.con, self.faiss_dir, key, generation, dim, in_memory)]
        return problems

    # -- internals -----------------------------------------------------------------------

    def _require_writer(self) -> None:
        if self.read_only:
            raise RuntimeError(f"{self.db_path}: store is open read-only")

    def _exec(self, sql: str, params: list | None = None) -> None:
        # DuckDB refuses new work while a result is unread; statements here return nothing useful.
        self.con.execute(sql, params or []).fetchall()

    def _record_index_config(self, config: IndexConfig) -> None:
        self._exec(
            "INSERT OR REPLACE INTO store_settings (key, value) VALUES ('index_config', ?)",
            [config.model_dump_json()],
        )

    def _recorded_index_config(self) -> IndexConfig:
        """The index configuration the writer recorded; the defaults for stores from before it was recorded."""
        try:
            # fetchall, not fetchone: a half-read result blocks the cursor's next .sql() call
            rows = self.con.execute("SELECT value FROM store_settings WHERE key = 'index_config'").fetchall()
        except duckdb.CatalogException:  # a read-only store written before the table existed
            return IndexConfig()
        return IndexConfig.model_validate_json(rows[0][0]) if rows else IndexConfig()

    def _generations(self) -> dict[IndexKey, int]:
        # Asked several times per search; a read-only snapshot's answer never changes.
        return self._once("generations", lambda: {
            (e, t): g for e, t, g in self.con.execute("SELECT embedder, trait_name, generation FROM index_state").fetchall()})

    def _dims(self) -> dict[IndexKey, int]:
        return self._once("dims", lambda: {
            (e, t): d for e, t, d in self.con.execute("SELECT embedder, trait_name, dim FROM index_state").fetchall()})

    def _keys_of_batch(self) -> set[IndexKey]:
        """Indexes holding vectors of the specimens in the registered ``_ids`` table."""
        rows = self.con.execute(
            "SELECT DISTINCT embedder, trait_name FROM vectors WHERE specimen_id IN (SELECT specimen_id FROM _ids)"
        ).fetchall()
        return {(e, t) for e, t in rows}

    def _insert(self, table: str, source: str, columns: Sequence[str], replace: bool = False) -> None:
        cols = ", ".join(columns)
        self._exec(f"INSERT {'OR REPLACE ' if replace else ''}INTO {table} ({cols}) SELECT {cols} FROM {source}")

    def _transaction(self, tables: Mapping[str, pa.Table]):
        store = self

        class _Txn:
            def __enter__(self):
                for name, table in tables.items():
                    store.con.register(name, table)
                store._exec("BEGIN TRANSACTION")

            def __exit__(self, exc_type, exc, tb):
                try:
                    store._exec("ROLLBACK" if exc_type else "COMMIT")
                finally:
                    for name in tables:
                        store.con.unregister(name)

        return _Txn()

    def _delete_children(self) -> None:
        """Delete what hangs off the specimens in the registered ``_ids`` table."""
        for table in ("specimen_metadata", "trait_masks", "trait_measurements", "vectors"):
            self._exec(f"DELETE FROM {table} WHERE specimen_id IN (SELECT specimen_id FROM _ids)")

    def _bump(self, keys: Iterable[IndexKey], dims: Mapping[IndexKey, int]) -> dict[IndexKey, int]:
        for key in keys:
            self._exec(
                "INSERT INTO index_state VALUES (?, ?, 1, ?) "
                "ON CONFLICT (embedder, trait_name) DO UPDATE SET generation = index_state.generation + 1",
                [*key, dims.get(key, 0)],
            )
        return self._generations()

    def _apply(
        self,
        touched: Iterable[IndexKey],
        removed_ids: np.ndarray | list[int],
        added: Mapping[IndexKey, tuple[np.ndarray, np.ndarray]],
        generations: Mapping[IndexKey, int],
    ) -> None:
        """Bring the cached indexes to the just-committed generations (see :meth:`IndexCache.apply`)."""
        removed = np.asarray(removed_ids, dtype=np.int64)
        dims = self._dims()
        for key in touched:
            count = self.con.execute(
                "SELECT count(*) FROM vectors WHERE embedder = ? AND trait_name = ?", list(key)
            ).fetchall()[0][0]
            self.index_cache.apply(key, generations[key], count, dims[key], removed,
                                   added.get(key, (np.zeros(0, np.int64), None)))


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
