"""The writer: specimens with their metadata, masks, measurements and vectors upserted in one
transaction per batch, and the runs that wrote them.

Crash safety: :func:`write_columns` changes catalog rows, vectors and the affected indexes'
generations in one DuckDB transaction, then updates the in-memory FAISS indexes
(:mod:`sst_search.store.generations`); ``Store.flush_indexes`` persists them atomically with
their generation. After a SIGKILL at any point the database holds either the whole batch or
none of it, and any FAISS file whose generation disagrees with the database is rebuilt from
the ``vectors`` table when the store is next opened (writer) or used (reader).
:func:`write_chunks`, the bulk path for a stream too large to hold, commits chunk by chunk
with the same guarantee per chunk; its files at rest are temporary until the last commit.

Earlier masks, metadata, measurements and vectors of a re-written specimen are replaced,
not merged, so a re-processed item never keeps vectors of a trait it no longer has; a
curator's corrections are re-applied in the same transaction
(:data:`~sst_search.store.review_tables.REAPPLY_CORRECTIONS`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from sst_search.config import IndexConfig
from sst_search.store import vector_column
from sst_search.store.connection import Connection
from sst_search.store.generations import apply_committed, bump, keys_of_registered_ids
from sst_search.store.records import SpecimenRecord
from sst_search.store.review_tables import REAPPLY_CORRECTIONS
from sst_search.store.schema import SPECIMEN_COLUMNS, TRAIT_MEASUREMENTS_COLUMNS
from sst_search.vector_search import at_rest, indexes
from sst_search.vector_search.cache import IndexKey

if TYPE_CHECKING:
    from sst_search.store.core import Store

#: Vectors per Arrow chunk handed to DuckDB in a bulk write (bounds the extra memory).
VECTOR_CHUNK = 200_000

#: Moves the registered ``_new_measurements`` into ``trait_measurements``.
MEASUREMENT_INSERT = (
    f"INSERT INTO trait_measurements ({', '.join(TRAIT_MEASUREMENTS_COLUMNS)}, measured_at) "
    f"SELECT {', '.join(TRAIT_MEASUREMENTS_COLUMNS)}, measured_at FROM _new_measurements"
)


def now() -> datetime:
    """The time a row is stamped with: UTC, naive (DuckDB's TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


# -- runs ------------------------------------------------------------------------------------


def begin_run(connection: Connection, fingerprint: dict | None = None, config_hash: str | None = None,
              engine: str = "local") -> str:
    """Record that a run started; returns its id."""
    run_id = uuid.uuid4().hex
    connection.execute(
        "INSERT INTO runs (run_id, started_at, fingerprint, config_hash, engine) VALUES (?, ?, ?, ?, ?)",
        [run_id, now(), json.dumps(fingerprint or {}), config_hash, engine],
    )
    return run_id


def finish_run(connection: Connection, run_id: str, counts: dict | None = None, timings: dict | None = None) -> None:
    connection.execute(
        "UPDATE runs SET finished_at = ?, counts = ?, timings = ? WHERE run_id = ?",
        [now(), json.dumps(counts or {}), json.dumps(timings or {}), run_id],
    )


def record_index_config(connection: Connection, config: IndexConfig) -> None:
    """Record which index kinds the store builds (every later opening uses them)."""
    connection.execute(
        "INSERT OR REPLACE INTO store_settings (key, value) VALUES ('index_config', ?)",
        [config.model_dump_json()],
    )


# -- measurements ------------------------------------------------------------------------------


def measurement_table(rows_by_specimen: Mapping[int, Sequence[Mapping]], measured_at: datetime) -> pa.Table:
    """Arrow table of ``trait_measurements`` rows (columns in :data:`TRAIT_MEASUREMENTS_COLUMNS` order)."""
    rows = [{**row, "specimen_id": sid} for sid, rs in rows_by_specimen.items() for row in rs]
    data = {c: [r.get(c) for r in rows] for c in TRAIT_MEASUREMENTS_COLUMNS}
    types = {"specimen_id": pa.int64(), "trait_id": pa.int32(), "trait_name": pa.string(), "unit": pa.string(),
             "scale_source": pa.string(), "dominant_color": pa.string()}
    table = pa.table({c: pa.array(v, types.get(c, pa.float64())) for c, v in data.items()})
    return table.append_column("measured_at", pa.array([measured_at] * len(rows), pa.timestamp("us")))


def measurement_tables(rows_by_specimen: Mapping[int, Sequence[Mapping]],
                       measured_at: datetime | None = None) -> dict[str, pa.Table]:
    """What a transaction writing these measurements registers (see :func:`write_measurements`)."""
    return {"_new_measurements": measurement_table(rows_by_specimen, measured_at or now())}


def write_measurements(connection: Connection, rows_by_specimen: Mapping[int, Sequence[Mapping]]) -> None:
    """Replace the specimens' measurements, inside a transaction that registered :func:`measurement_tables`."""
    ids = [int(i) for i in rows_by_specimen]
    connection.execute("DELETE FROM trait_measurements WHERE specimen_id IN (SELECT unnest(?::BIGINT[]))", [ids])
    connection.execute(MEASUREMENT_INSERT)


def replace_measurements(store: Store, rows_by_specimen: Mapping[int, Sequence[Mapping]]) -> None:
    """Replace the measurements of these specimens (a re-measure with another scale, say),
    leaving masks and vectors alone; one transaction."""
    if not rows_by_specimen:
        return
    with store.connection.transaction(measurement_tables(rows_by_specimen)):
        write_measurements(store.connection, rows_by_specimen)


def delete_children(connection: Connection) -> None:
    """Delete what hangs off the specimens in the registered ``_ids`` table."""
    for table in ("specimen_metadata", "trait_masks", "trait_measurements", "vectors"):
        connection.execute(f"DELETE FROM {table} WHERE specimen_id IN (SELECT specimen_id FROM _ids)")


# -- specimens -----------------------------------------------------------------------------------


def write_batch(store: Store, records: Sequence[SpecimenRecord]) -> None:
    """Upsert specimens with their masks, metadata and vectors in one transaction.

    Earlier masks, metadata and vectors of these specimens are replaced, not merged, so
    a re-processed item never keeps vectors of a trait it no longer has.
    """
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
    write_columns(
        store,
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
        measurements=measurement_table({r.specimen_id: r.measurements for r in records}, now()),
        vectors={
            key: (np.array([s for s, _ in rows], np.int64), np.stack([v for _, v in rows]))
            for key, rows in grouped.items()
        },
    )


@dataclass(frozen=True)
class Chunk:
    """Some specimens of a bulk write, with what hangs off them: the arguments of
    :func:`write_columns`, one piece of the stream :func:`write_chunks` takes."""

    specimens: pa.Table
    metadata: pa.Table | None = None
    masks: pa.Table | None = None
    vectors: Mapping[IndexKey, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    measurements: pa.Table | None = None


def write_columns(
    store: Store,
    specimens: pa.Table,
    metadata: pa.Table | None = None,
    masks: pa.Table | None = None,
    vectors: Mapping[IndexKey, tuple[np.ndarray, np.ndarray]] | None = None,
    measurements: pa.Table | None = None,
) -> None:
    """Bulk upsert, column-wise: what :func:`write_batch` does, for millions of rows.

    ``specimens``, ``metadata``, ``masks`` and ``measurements`` are Arrow tables with the
    columns of ``specimens``, ``specimen_metadata``, ``trait_masks`` and
    ``trait_measurements`` (``updated_at`` and ``measured_at`` are set here); ``vectors`` maps
    ``(embedder, trait)`` to ``(specimen ids, (n, dim) float32 unit vectors)``. DuckDB
    ingests the Arrow buffers directly; indexes are updated once, from the matrices in
    hand, instead of per row. For more vectors than fit in memory twice, see :func:`write_chunks`.
    """
    dims = store.index_dims()
    chunk = _checked(Chunk(specimens, metadata, masks, vectors or {}, measurements), dims)
    if chunk is None:
        return
    ids = _ids_of(chunk)
    with store.connection.transaction({"_ids": _id_table(ids)}):
        old_keys = keys_of_registered_ids(store.con)
    touched = old_keys | set(chunk.vectors)
    # Each index in memory for the incremental update below; what index() does, with the
    # generations read once for the batch instead of twice per index.
    current = store.generations() if touched & set(dims) else {}
    for key in touched & set(dims):
        store.index_cache.index(key, current[key], dims[key], writable=True)
    with store.connection.transaction():
        _insert(store, chunk)
        generations = bump(store, touched, {k: m.shape[1] for k, (_, m) in chunk.vectors.items()})
    for key in touched:  # the last streamed build's vectors at rest no longer match the catalog
        at_rest.drop(at_rest.live_dir(store.faiss_dir), key)
    apply_committed(store, touched, ids, chunk.vectors, generations)


def write_chunks(store: Store, chunks: Iterable[Chunk]) -> int:
    """The bulk upsert of :func:`write_columns` for a stream of chunks, holding one chunk at a
    time: for collections whose vectors do not fit in memory twice (10 million of dim 768 are
    31 GB as float32). Returns the vectors written.

    ``chunks`` is consumed lazily. Each chunk is one transaction (rows, vectors and the
    generations of the indexes it touches, as :func:`write_columns` commits them): DuckDB
    keeps the Arrow tables a transaction reads until it commits, so one transaction for the
    stream would hold every chunk; DuckDB checkpoints once, after the last
    (:meth:`~sst_search.store.connection.Connection.few_checkpoints`). Each chunk's vectors
    also go, as float16, into a spill file per index
    (:class:`~sst_search.vector_search.at_rest.StreamedVectors`). After the last chunk, each
    index the stream wrote in full gets its vectors at rest in id order and, at the same
    time, a FAISS index trained on a fixed-seed sample and filled chunk by chunk from the
    spill (:class:`~sst_search.vector_search.indexes.Filling`); the files get their names
    and the manifest of the committed generation, so
    :func:`~sst_search.store.snapshots.publish_snapshot` moves them into the snapshot
    instead of writing them again, and the index is held for the next flush.

    If the stream raises or the process dies, the chunks already committed stay (a re-run
    upserts them again), nothing is published, only temporary files are left (removed here,
    or when the store is next opened), and the indexes the stream touched are stale, so they
    are rebuilt from the catalog when next used, as is an index that also holds vectors
    written before the stream.
    """
    dims = store.index_dims()
    streams: dict[IndexKey, at_rest.StreamedVectors] = {}
    touched: set[IndexKey] = set()
    root = at_rest.live_dir(store.faiss_dir)
    try:
        with store.connection.few_checkpoints(), ThreadPoolExecutor(1, thread_name_prefix="spill") as spiller:
            for raw in chunks:
                chunk = _checked(raw, dims)
                if chunk is None:
                    continue
                # The chunk's float16 spill (numpy and the disk) beside its catalog insert (DuckDB):
                # 12% of the chunk phase at 300,000 x 768 that no longer waits on the insert.
                spilled = spiller.submit(_spill, chunk, streams, root, dims)
                try:
                    with store.connection.transaction():
                        keys = _insert(store, chunk) | set(chunk.vectors)
                        bump(store, keys, {k: m.shape[1] for k, (_, m) in chunk.vectors.items()})
                except BaseException:
                    spilled.exception()  # waited for, its own error left: the catalog's is the one to tell
                    raise
                spilled.result()
                for key in keys - touched:
                    store.index_cache.forget(key)  # stale now: its memory goes before the next chunk comes
                    at_rest.drop(root, key)
                touched |= keys
                del raw, chunk, spilled  # before the next chunk is made: one in memory at a time
        generations = store.generations()
        for key, stream in streams.items():
            if _vector_count(store, key) != stream.count:  # older vectors too, or a specimen in two chunks
                continue
            stream.close()
            with ThreadPoolExecutor(1, thread_name_prefix="sorted vectors") as sorter:
                written = sorter.submit(stream.write_sorted)  # the disk's work, beside the cores' below
                index = indexes.build_index_from(stream.rows, stream.ids, stream.dim, store.index_cache.config,
                                                 VECTOR_CHUNK)
                written.result()
            stream.publish(generations[key])
            store.index_cache.replace(key, index, generations[key])
    finally:
        for stream in streams.values():
            stream.discard()
    return sum(s.count for s in streams.values())


def _spill(chunk: Chunk, streams: dict[IndexKey, at_rest.StreamedVectors], root: Path,
           dims: dict[IndexKey, int]) -> None:
    for key, (vids, matrix) in chunk.vectors.items():
        if key not in streams:
            dims.setdefault(key, matrix.shape[1])
            streams[key] = at_rest.StreamedVectors(root, key, matrix.shape[1])
        streams[key].append(vids, matrix)


def _vector_count(store: Store, key: IndexKey) -> int:
    return store.con.execute("SELECT count(*) FROM vectors WHERE embedder = ? AND trait_name = ?", list(key)).fetchone()[0]


def _id_table(ids: np.ndarray) -> pa.Table:
    return pa.table({"specimen_id": pa.array(ids, pa.int64())})


def _ids_of(chunk: Chunk) -> np.ndarray:
    return chunk.specimens.column("specimen_id").to_numpy().astype(np.int64)


def _checked(chunk: Chunk, dims: Mapping[IndexKey, int]) -> Chunk | None:
    """``chunk`` with its optional specimen columns filled in (NULL) and its vectors as
    int64 ids and float32 matrices of the values the catalog keeps (float16), or None when it holds no specimens; refuses what the
    store would hold wrong."""
    specimens = chunk.specimens
    vectors = {key: (np.asarray(i, np.int64), np.asarray(m, np.float32)) for key, (i, m) in (chunk.vectors or {}).items()}
    unknown = set(specimens.column_names) - set(SPECIMEN_COLUMNS.names)
    missing = {"specimen_id", "path", "status"} - set(specimens.column_names)
    if unknown or missing:
        raise ValueError(f"specimens table: unknown columns {sorted(unknown)}, missing {sorted(missing)}")
    for column in SPECIMEN_COLUMNS:  # optional columns left out are NULL
        if column.name not in specimens.column_names:
            specimens = specimens.append_column(column, pa.nulls(len(specimens), column.type))
    ids = specimens.column("specimen_id").to_numpy().astype(np.int64)
    if len(ids) == 0:
        return None
    if len(np.unique(ids)) != len(ids):
        raise ValueError("a batch lists the same specimen_id twice")
    indexed = ids[np.asarray(specimens.column("status").to_pylist()) == "indexed"]
    for key, (vids, matrix) in vectors.items():
        name = f"{key[0]}/{key[1]}"
        if matrix.ndim != 2 or len(matrix) != len(vids):
            raise ValueError(f"{name}: {len(vids)} ids for a vector matrix of shape {matrix.shape}")
        if key in dims and matrix.shape[1] != dims[key]:
            raise ValueError(f"{name}: vectors of dim {matrix.shape[1]} for an index of dim {dims[key]}")
        if not np.isin(vids, indexed).all():
            raise ValueError(f"{name}: vectors for specimens that are not in this batch as 'indexed'")
        # one pass: a NaN or an infinity makes its row's norm fail the comparison
        if not np.all(np.abs(np.sqrt(np.einsum("ij,ij->i", matrix, matrix)) - 1.0) <= 1e-3):
            raise ValueError(f"{name}: vectors must be finite and L2-normalised")
    # what the catalog will hold, so the indexes updated from these matrices equal ones rebuilt from it
    vectors = {key: (vids, vector_column.rounded(matrix)) for key, (vids, matrix) in vectors.items()}
    return replace(chunk, specimens=specimens, vectors=vectors)


def _insert(store: Store, chunk: Chunk) -> set[IndexKey]:
    """Inside a transaction: replace the chunk's specimens and everything hanging off them;
    returns the indexes that held vectors of them."""
    tables = {"_ids": _id_table(_ids_of(chunk)),
              "_new_specimens": chunk.specimens.append_column("updated_at", pa.array([now()] * len(chunk.specimens)))}
    for name, table in (("_new_metadata", chunk.metadata), ("_new_masks", chunk.masks),
                        ("_new_measurements", chunk.measurements)):
        if table is not None:
            tables[name] = table
    with store.connection.registered(tables):
        old_keys = keys_of_registered_ids(store.con)
        delete_children(store.connection)
        store.connection.insert_select("specimens", "_new_specimens", (*chunk.specimens.column_names, "updated_at"),
                                       replace=True)
        if chunk.metadata is not None:
            store.connection.insert_select("specimen_metadata", "_new_metadata", ("specimen_id", "key", "value"))
        if chunk.masks is not None:
            store.connection.insert_select("trait_masks", "_new_masks", chunk.masks.column_names)
        store.connection.execute(REAPPLY_CORRECTIONS)
        if chunk.measurements is not None:
            store.connection.execute(MEASUREMENT_INSERT)
        # Every index's rows go in together, flushed once VECTOR_CHUNK rows are held: a batch of a few
        # specimens pays one insert, not one per trait.
        parts, rows = [], 0
        for key, (vids, matrix) in chunk.vectors.items():
            for start in range(0, len(vids), VECTOR_CHUNK):
                part = slice(start, start + VECTOR_CHUNK)
                parts.append(pa.table({
                    "embedder": pa.array([key[0]] * len(vids[part])), "trait_name": pa.array([key[1]] * len(vids[part])),
                    "specimen_id": vids[part], "faiss_id": vids[part],
                    "vector": vector_column.encode(matrix[part]),
                }))
                rows += len(parts[-1])
                if rows >= VECTOR_CHUNK:
                    _insert_vectors(store, parts)
                    parts, rows = [], 0
        if parts:
            _insert_vectors(store, parts)
    return old_keys


def _insert_vectors(store: Store, chunks: list[pa.Table]) -> None:
    with store.connection.registered({"_new_vectors": pa.concat_tables(chunks)}):
        store.connection.insert_select("vectors", "_new_vectors", ("embedder", "trait_name", "specimen_id", "faiss_id", "vector"))

