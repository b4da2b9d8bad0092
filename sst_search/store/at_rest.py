"""Vectors at rest: each index's vectors as a float16 matrix in a file beside a published
snapshot, which readers memory-map instead of loading.

Exact scans and the re-rank of FAISS candidates need the stored vectors of a few rows per
search. Held as float32 arrays they cost every reader process 4 bytes per dimension per
vector (3 KiB at dim 768) before the first search, and each app worker or CLI reader pays it
again. Mapped read-only from a file, they cost the pages the searches touch, and the OS keeps
one copy of a page for every process mapping it. float16 halves the file; a unit vector's
components lose at most 2^-12 each, so a re-ranked cosine moves by about 1e-3 at most (see
the README for the measured recall).

Layout, written by :func:`write_snapshot` when a snapshot is published::

    <version>/<db name>.vectors/<embedder>/<trait>.npy       (n, dim) float16, rows by ascending id
    <version>/<db name>.vectors/<embedder>/<trait>.ids.npy   (n,) int64 specimen ids, ascending
    <version>/<db name>.vectors/<embedder>/<trait>.json      manifest: generation, count, dim,
                                                             bytes and sha256 of both files

Each file is written under a temporary name, fsynced and renamed; the manifest comes last,
and the whole folder is part of the staging copy that is verified before the pointer moves,
so a publish that dies while writing leaves nothing a reader is pointed at. A reader trusts
the files only when the manifest's generation is the catalog's and the sizes are the
manifest's (a truncated file is never mapped); the checksums are :mod:`verify`'s job,
since hashing at open would read every vector. A snapshot published before this module
existed has no folder: its readers read float32 vectors from the catalog, as before, and
the next publish writes the folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import duckdb
import numpy as np

from sst_search.store.catalog import VECTOR_BATCH_ROWS, duckdb_memory_limit, vector_batch
from sst_search.store.indexes import atomic_write
from sst_search.store.verify import SAMPLE, Problem, _first_line, index_states
from sst_search.weights import sha256_file

log = logging.getLogger(__name__)

IndexKey = tuple[str, str]
DTYPE = np.dtype(np.float16)
#: Largest difference between a stored float32 component and its float16 copy that
#: :func:`check` accepts (float16 rounds a value in [-1, 1] by at most 2^-12).
TOLERANCE = 1e-3


def vectors_dir(db_path: str | Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".vectors")


def vector_paths(root: Path, key: IndexKey) -> tuple[Path, Path, Path]:
    """``(matrix, ids, manifest)``; names are percent-quoted so any embedder/trait name is safe."""
    stem = root / quote(key[0], safe="") / quote(key[1], safe="")
    return (stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".ids.npy"),
            stem.with_name(stem.name + ".json"))


def write_snapshot(db_path: Path) -> None:
    """Write the vectors at rest of every index of the (staged, not yet published) store at
    ``db_path``, streaming from its catalog: one batch of float32 rows in memory at a time."""
    root = vectors_dir(db_path)
    con = _connect(db_path)
    try:
        for embedder, trait, generation, dim in index_states(con):
            _write_index(con, root, (embedder, trait), generation, dim)
    finally:
        con.close()


def _connect(db_path: Path) -> duckdb.DuckDBPyConnection:
    """Read-only, with the store's memory limit (sorting a large vectors table by id spills to
    disk past it) and no progress bar on the publishing process's terminal."""
    con = duckdb.connect(str(db_path), read_only=True, config={"memory_limit": duckdb_memory_limit()})
    con.execute("SET enable_progress_bar = false").fetchall()
    return con


def _write_index(con: duckdb.DuckDBPyConnection, root: Path, key: IndexKey, generation: int, dim: int) -> None:
    matrix_path, ids_path, manifest_path = vector_paths(root, key)
    ids = _catalog_ids(con, key)
    atomic_write(ids_path, lambda tmp: _save(tmp, ids))
    digest = hashlib.sha256()  # of the bytes as written: the publish's check then reads the file back once
    atomic_write(matrix_path, lambda tmp: _write_matrix(con, key, ids, dim, tmp, digest.update))
    manifest = {"generation": generation, "count": len(ids), "dim": dim, "dtype": DTYPE.name,
                "bytes": matrix_path.stat().st_size, "sha256": digest.hexdigest(),
                "ids_bytes": ids_path.stat().st_size, "ids_sha256": sha256_file(ids_path)}
    atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest)))


def _catalog_ids(con: duckdb.DuckDBPyConnection, key: IndexKey) -> np.ndarray:
    return con.execute(
        "SELECT specimen_id FROM vectors WHERE embedder = ? AND trait_name = ? ORDER BY specimen_id", list(key)
    ).fetchnumpy()["specimen_id"].astype(np.int64)


def _save(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # given a name, np.save would add ".npy" to it
        np.save(fh, array)


def _write_matrix(con: duckdb.DuckDBPyConnection, key: IndexKey, ids: np.ndarray, dim: int, path: str,
                  record: Callable[[bytes], None]) -> None:
    """The float16 matrix, appended batch by batch in the row order of ``ids`` (each block
    written also handed to ``record``): ordinary writes, not a writable mapping, so a full
    disk is an OSError rather than a SIGBUS."""
    header = {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": (len(ids), dim)}
    at = 0
    batches = con.sql(
        "SELECT specimen_id, vector FROM vectors WHERE embedder = ? AND trait_name = ? ORDER BY specimen_id",
        params=list(key),
    ).to_arrow_reader(VECTOR_BATCH_ROWS)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, header)
    with open(path, "wb") as fh:

        def put(data: bytes) -> None:
            fh.write(data)
            record(data)

        put(head.getvalue())
        for batch in batches:
            if not len(batch):
                continue
            batch_ids, values = vector_batch(batch)
            if values.shape[1] != dim or not np.array_equal(batch_ids, ids[at : at + len(batch_ids)]):
                raise RuntimeError(f"{key[0]}/{key[1]}: the vectors table changed while it was written at rest")
            put(np.ascontiguousarray(values, DTYPE).tobytes())
            at += len(batch_ids)
    if at != len(ids):
        raise RuntimeError(f"{key[0]}/{key[1]}: {at} vectors read for {len(ids)} ids")


def read_manifest(root: Path, key: IndexKey) -> dict | None:
    try:
        return json.loads(vector_paths(root, key)[2].read_text())
    except (OSError, ValueError):
        return None


def open_vectors(root: Path, key: IndexKey, generation: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(ids, float16 matrix)`` of ``key`` mapped read-only, or None when the files are not
    there or not the ``generation``'s (the caller then reads the catalog's float32 vectors)."""
    manifest = read_manifest(root, key)
    if manifest is None:
        return None
    why = _unusable(root, key, manifest, generation)
    if why is None:
        matrix_path, ids_path, _ = vector_paths(root, key)
        try:
            ids, matrix = np.load(ids_path, mmap_mode="r"), np.load(matrix_path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            why = f"vectors at rest do not map ({_first_line(exc)})"
        else:
            why = _shape_problem(ids, matrix, manifest)
            if why is None:
                return ids, matrix
    log.warning("%s: %s; reading the catalog's float32 vectors instead", vector_paths(root, key)[0], why)
    return None


def _unusable(root: Path, key: IndexKey, manifest: dict, generation: int | None) -> str | None:
    """Why the files cannot be trusted without reading them (generation, sizes), or None."""
    if manifest.get("generation") != generation:
        return f"vectors at rest are stale (generation {manifest.get('generation')}, catalog {generation})"
    matrix_path, ids_path, _ = vector_paths(root, key)
    for path, field in ((matrix_path, "bytes"), (ids_path, "ids_bytes")):
        size = path.stat().st_size if path.is_file() else None
        if size != manifest.get(field):
            return f"{path.name} is {'missing' if size is None else f'{size} bytes'}, its manifest says {manifest.get(field)}"
    return None


def _shape_problem(ids: np.ndarray, matrix: np.ndarray, manifest: dict) -> str | None:
    n, dim = manifest.get("count"), manifest.get("dim")
    if matrix.dtype != DTYPE or matrix.shape != (n, dim) or ids.dtype != np.int64 or ids.shape != (n,):
        return (f"vectors at rest hold {matrix.dtype} {matrix.shape} and ids {ids.dtype} {ids.shape}, "
                f"the manifest says {n} x {dim}")
    return None


def check(con: duckdb.DuckDBPyConnection, root: Path, key: IndexKey, generation: int, dim: int,
          sample: int = SAMPLE) -> list[Problem]:
    """Problems of one index's vectors at rest: manifest, sizes, checksums, shape, the
    catalog's ids in the catalog's order, and a sample of rows equal to the catalog's
    vectors up to float16 rounding."""
    matrix_path, ids_path, _ = vector_paths(root, key)

    def problem(what: str) -> list[Problem]:
        return [Problem(str(matrix_path), what, "index", key)]

    manifest = read_manifest(root, key)
    if manifest is None:
        return problem("vectors at rest missing (or their manifest is)")
    why = _unusable(root, key, manifest, generation)
    if why is not None:
        return problem(why)
    for path, field in ((matrix_path, "sha256"), (ids_path, "ids_sha256")):
        if sha256_file(path) != manifest.get(field):
            return problem(f"{path.name} does not match its manifest's checksum")
    try:
        ids, matrix = np.load(ids_path, mmap_mode="r"), np.load(matrix_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        return problem(f"vectors at rest do not load ({_first_line(exc)})")
    why = _shape_problem(ids, matrix, manifest) or (None if dim == manifest.get("dim") else
                                                    f"vectors at rest have dimension {manifest.get('dim')}, catalog {dim}")
    if why is not None:
        return problem(why)
    catalog_ids = _catalog_ids(con, key)
    if not np.array_equal(np.asarray(ids), catalog_ids):
        return problem(f"vectors at rest list {len(ids)} ids, not the catalog's {len(catalog_ids)} in order")
    if not len(ids):
        return []
    rows = np.unique(np.linspace(0, len(ids) - 1, min(sample, len(ids))).astype(np.int64))
    found = con.execute(
        "SELECT specimen_id, vector FROM vectors WHERE embedder = ? AND trait_name = ? "
        "AND specimen_id IN (SELECT unnest(?::BIGINT[])) ORDER BY specimen_id",
        [*key, ids[rows].tolist()],
    ).fetchall()
    expected = np.asarray([v for _, v in found], np.float32)
    wrong = int((np.abs(np.asarray(matrix[rows], np.float32) - expected) > TOLERANCE).any(axis=1).sum())
    if wrong:
        return problem(f"{wrong} of {len(rows)} sampled vectors at rest differ from the catalog's")
    return []


def check_all(con: duckdb.DuckDBPyConnection, db_path: Path, sample: int = SAMPLE) -> list[Problem]:
    """Problems of the vectors at rest beside the store at ``db_path``; none when it has no
    folder of them (a live store, or a snapshot published before they existed)."""
    root = vectors_dir(db_path)
    if not root.is_dir():
        return []
    problems = []
    for embedder, trait, generation, dim in index_states(con):
        problems += check(con, root, (embedder, trait), generation, dim, sample)
    return problems


def check_snapshot(db_path: Path, sample: int = SAMPLE) -> list[Problem]:
    """:func:`check_all` of a store no process holds (a staged snapshot)."""
    con = _connect(db_path)
    try:
        return check_all(con, db_path, sample)
    finally:
        con.close()
