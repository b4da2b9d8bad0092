"""Vectors at rest: each index's vectors as a float16 matrix in a file beside a published
snapshot, which readers memory-map instead of loading.

Exact scans and the re-rank of FAISS candidates need the stored vectors of a few rows per
search. Held as float32 arrays they cost every reader process 4 bytes per dimension per
vector (3 KiB at dim 768) before the first search, and each app worker or CLI reader pays it
again. Mapped read-only from a file, they cost the pages the searches touch, and the OS keeps
one copy of a page for every process mapping it. float16 halves the file; a unit vector's
components lose at most 2^-12 each, so a re-ranked cosine moves by about 1e-3 at most (see
the README for the measured recall).

This module is the file format and the mapping, with no SQL: the publish streams the
catalog's rows into :func:`write_matrix` (:mod:`sst_search.store.vectors_at_rest`), and a
reader's :class:`~sst_search.vector_search.cache.IndexCache` maps them with :func:`open_vectors`.

Layout, written when a snapshot is published::

    <version>/<db name>.vectors/<embedder>/<trait>.npy       (n, dim) float16, rows by ascending id
    <version>/<db name>.vectors/<embedder>/<trait>.ids.npy   (n,) int64 specimen ids, ascending
    <version>/<db name>.vectors/<embedder>/<trait>.json      manifest: generation, count, dim,
                                                             bytes and sha256 of both files

Each file is written under a temporary name, fsynced and renamed; the manifest comes last,
and the whole folder is part of the staging copy that is verified before the pointer moves,
so a publish that dies while writing leaves nothing a reader is pointed at. A reader trusts
the files only when the manifest's generation is the catalog's and the sizes are the
manifest's (a truncated file is never mapped); checksums are checked only by a verify
(:func:`check_files`, then compared with the catalog by
:mod:`sst_search.store.vectors_at_rest`), since hashing at open would read every vector. A
snapshot published before vectors at rest existed has no folder: its readers read float32
vectors from the catalog, and the next publish writes the folder.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote

import numpy as np

from sst_search.errors import first_line
from sst_search.vector_search.indexes import atomic_write
from sst_search.weights import sha256_file

log = logging.getLogger(__name__)

#: ``(embedder, trait)``: one index.
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
    why = unusable(root, key, manifest, generation)
    if why is None:
        matrix_path, ids_path, _ = vector_paths(root, key)
        try:
            ids, matrix = np.load(ids_path, mmap_mode="r"), np.load(matrix_path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            why = f"vectors at rest do not map ({first_line(exc)})"
        else:
            why = shape_problem(ids, matrix, manifest)
            if why is None:
                return ids, matrix
    log.warning("%s: %s; reading the catalog's float32 vectors instead", vector_paths(root, key)[0], why)
    return None


def unusable(root: Path, key: IndexKey, manifest: dict, generation: int | None) -> str | None:
    """Why the files cannot be trusted without reading them (generation, sizes), or None."""
    if manifest.get("generation") != generation:
        return f"vectors at rest are stale (generation {manifest.get('generation')}, catalog {generation})"
    matrix_path, ids_path, _ = vector_paths(root, key)
    for path, field in ((matrix_path, "bytes"), (ids_path, "ids_bytes")):
        size = path.stat().st_size if path.is_file() else None
        if size != manifest.get(field):
            return f"{path.name} is {'missing' if size is None else f'{size} bytes'}, its manifest says {manifest.get(field)}"
    return None


def shape_problem(ids: np.ndarray, matrix: np.ndarray, manifest: dict) -> str | None:
    n, dim = manifest.get("count"), manifest.get("dim")
    if matrix.dtype != DTYPE or matrix.shape != (n, dim) or ids.dtype != np.int64 or ids.shape != (n,):
        return (f"vectors at rest hold {matrix.dtype} {matrix.shape} and ids {ids.dtype} {ids.shape}, "
                f"the manifest says {n} x {dim}")
    return None




def save_array(path: str | Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # given a name, np.save would add ".npy" to it
        np.save(fh, array)


def write_matrix(path: str, key: IndexKey, ids: np.ndarray, dim: int,
                 batches: Iterable[tuple[np.ndarray, np.ndarray]], record: Callable[[bytes], None]) -> None:
    """The float16 matrix of ``batches`` of ``(ids, float32 rows)``, which must come in the
    order of ``ids``, appended batch by batch (each block written also handed to ``record``):
    ordinary writes, not a writable mapping, so a full disk is an OSError rather than a SIGBUS."""
    header = {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": (len(ids), dim)}
    at = 0
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, header)
    with open(path, "wb") as fh:

        def put(data: bytes) -> None:
            fh.write(data)
            record(data)

        put(head.getvalue())
        for batch_ids, values in batches:
            if values.shape[1] != dim or not np.array_equal(batch_ids, ids[at : at + len(batch_ids)]):
                raise RuntimeError(f"{key[0]}/{key[1]}: the vectors table changed while it was written at rest")
            put(np.ascontiguousarray(values, DTYPE).tobytes())
            at += len(batch_ids)
    if at != len(ids):
        raise RuntimeError(f"{key[0]}/{key[1]}: {at} vectors read for {len(ids)} ids")


def write_manifest(root: Path, key: IndexKey, generation: int, dim: int, count: int, matrix_sha256: str) -> None:
    """The manifest, written last: it vouches for the matrix and ids files already in place."""
    matrix_path, ids_path, manifest_path = vector_paths(root, key)
    manifest = {"generation": generation, "count": count, "dim": dim, "dtype": DTYPE.name,
                "bytes": matrix_path.stat().st_size, "sha256": matrix_sha256,
                "ids_bytes": ids_path.stat().st_size, "ids_sha256": sha256_file(ids_path)}
    atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest)))


def check_files(root: Path, key: IndexKey, generation: int, dim: int
                ) -> tuple[str | None, np.ndarray | None, np.ndarray | None]:
    """``(why not, ids, matrix)`` of one index's files on their own: manifest, sizes,
    checksums, shape and dimension (what the catalog holds is the caller's to compare)."""
    matrix_path, ids_path, _ = vector_paths(root, key)
    manifest = read_manifest(root, key)
    if manifest is None:
        return "vectors at rest missing (or their manifest is)", None, None
    why = unusable(root, key, manifest, generation)
    if why is not None:
        return why, None, None
    for path, field in ((matrix_path, "sha256"), (ids_path, "ids_sha256")):
        if sha256_file(path) != manifest.get(field):
            return f"{path.name} does not match its manifest's checksum", None, None
    try:
        ids, matrix = np.load(ids_path, mmap_mode="r"), np.load(matrix_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        return f"vectors at rest do not load ({first_line(exc)})", None, None
    why = shape_problem(ids, matrix, manifest) or (None if dim == manifest.get("dim") else
                                                   f"vectors at rest have dimension {manifest.get('dim')}, catalog {dim}")
    return why, ids, matrix
