"""The catalog's side of the vectors at rest (:mod:`sst_search.vector_search.at_rest`): written
from the ``vectors`` table when a snapshot is published, and checked against it.

The file format, and mapping the files into a reader, need no SQL and live with vector
search; streaming the rows out of DuckDB and comparing the files with them do, so they live
here, with the rest of the store's SQL.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np

from sst_search.store.catalog import VECTOR_BATCH_ROWS, vector_batch
from sst_search.store.verify import SAMPLE, Problem, catalog_vectors, index_states
from sst_search.vector_search import at_rest
from sst_search.vector_search.at_rest import IndexKey
from sst_search.vector_search.indexes import atomic_write


def write_snapshot(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    """Write the vectors at rest of every index of the (staged, not yet published) store at
    ``db_path``, whose catalog ``con`` reads: moved from its FAISS folder where a streamed
    build left them at the catalog's generation (:func:`~sst_search.store.writer.write_chunks`),
    else streamed from its catalog, one batch of float32 rows in memory at a time. The
    publish checks both kinds against the catalog (:func:`check_all`) before readers see them."""
    root = at_rest.vectors_dir(db_path)
    built = at_rest.live_dir(db_path.with_name(db_path.name + ".faiss"))
    for embedder, trait, generation, dim in index_states(con):
        if not _move_built(built, root, (embedder, trait), generation, dim):
            _write_index(con, root, (embedder, trait), generation, dim)
    shutil.rmtree(built, ignore_errors=True)  # what is left is stale: the snapshot's FAISS folder holds indexes only


def _move_built(built: Path, root: Path, key: IndexKey, generation: int, dim: int) -> bool:
    """Move the files a streamed build left for ``key`` into ``root`` when their manifest
    vouches for ``generation`` and their sizes (the manifest last); False when it does not."""
    manifest = at_rest.read_manifest(built, key)
    if manifest is None or manifest.get("dim") != dim or at_rest.unusable(built, key, manifest, generation):
        return False
    for source, target in zip(at_rest.vector_paths(built, key), at_rest.vector_paths(root, key)):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    return True


def _write_index(con: duckdb.DuckDBPyConnection, root: Path, key: IndexKey, generation: int, dim: int) -> None:
    matrix_path, ids_path, _ = at_rest.vector_paths(root, key)
    ids = _catalog_ids(con, key)
    atomic_write(ids_path, lambda tmp: at_rest.save_array(tmp, ids))
    digest = hashlib.sha256()  # of the bytes as written: the publish's check then reads the file back once
    atomic_write(matrix_path, lambda tmp: _write_matrix(con, key, ids, dim, tmp, digest.update))
    at_rest.write_manifest(root, key, generation, dim, len(ids), digest.hexdigest())


def _catalog_ids(con: duckdb.DuckDBPyConnection, key: IndexKey) -> np.ndarray:
    return con.execute(
        "SELECT specimen_id FROM vectors WHERE embedder = ? AND trait_name = ? ORDER BY specimen_id", list(key)
    ).fetchnumpy()["specimen_id"].astype(np.int64)


def _write_matrix(con: duckdb.DuckDBPyConnection, key: IndexKey, ids: np.ndarray, dim: int, path: str,
                  record: Callable[[bytes], None]) -> None:
    """The float16 matrix of ``key``'s catalog rows, read in batches in id order."""
    batches = con.sql(
        "SELECT specimen_id, vector FROM vectors WHERE embedder = ? AND trait_name = ? ORDER BY specimen_id",
        params=list(key),
    ).to_arrow_reader(VECTOR_BATCH_ROWS)
    at_rest.write_matrix(path, key, ids, dim, (vector_batch(b) for b in batches if len(b)), record)


def check(con: duckdb.DuckDBPyConnection, root: Path, key: IndexKey, generation: int, dim: int,
          sample: int = SAMPLE) -> list[Problem]:
    """Problems of one index's vectors at rest: the files on their own
    (:func:`~sst_search.vector_search.at_rest.check_files`), the catalog's ids in the
    catalog's order, and a sample of rows equal to the catalog's vectors up to float16 rounding."""
    matrix_path = at_rest.vector_paths(root, key)[0]

    def problem(what: str) -> list[Problem]:
        return [Problem(str(matrix_path), what, "index", key)]

    why, ids, matrix = at_rest.check_files(root, key, generation, dim)
    if why is not None:
        return problem(why)
    catalog_ids = _catalog_ids(con, key)
    if not np.array_equal(np.asarray(ids), catalog_ids):
        return problem(f"vectors at rest list {len(ids)} ids, not the catalog's {len(catalog_ids)} in order")
    if not len(ids):
        return []
    rows = np.unique(np.linspace(0, len(ids) - 1, min(sample, len(ids))).astype(np.int64))
    _, expected = catalog_vectors(con, key, np.asarray(ids[rows]))
    wrong = int((np.abs(np.asarray(matrix[rows], np.float32) - expected) > at_rest.TOLERANCE).any(axis=1).sum())
    if wrong:
        return problem(f"{wrong} of {len(rows)} sampled vectors at rest differ from the catalog's")
    return []


def check_all(con: duckdb.DuckDBPyConnection, db_path: Path, sample: int = SAMPLE) -> list[Problem]:
    """Problems of the vectors at rest beside the store at ``db_path``; none when it has no
    folder of them (a live store, or a snapshot published before they existed)."""
    root = at_rest.vectors_dir(db_path)
    if not root.is_dir():
        return []
    problems = []
    for embedder, trait, generation, dim in index_states(con):
        problems += check(con, root, (embedder, trait), generation, dim, sample)
    return problems
