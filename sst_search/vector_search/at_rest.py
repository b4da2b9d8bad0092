"""Vectors at rest: each index's vectors as a float16 matrix in a file beside a published
snapshot, which readers memory-map instead of loading.

Exact scans and the re-rank of FAISS candidates need the stored vectors of a few rows per
search. Held as float32 arrays they cost every reader process 4 bytes per dimension per
vector (3 KiB at dim 768) before the first search, and each app worker or CLI reader pays it
again. Mapped read-only from a file, they cost the pages the searches touch, and the OS keeps
one copy of a page for every process mapping it. float16 halves the file; a unit vector's
components lose at most 2^-12 each, so a re-ranked cosine moves by about 1e-3 at most (see
the README for the measured recall).

A re-rank's few dozen rows are read with ``pread`` (:class:`RowReader`) rather than touched
through the mapping, which would fault in 64 KB around each; exact scans of many rows use
the mapping.

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

A streamed bulk build (:class:`StreamedVectors`) writes the same three files per index into
the live store's FAISS folder (:func:`live_dir`) as the chunks arrive, with the manifest of
the generation it committed; a publish copies them with that folder and moves them into the
snapshot when the manifest still matches the catalog, instead of writing them again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import mmap
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np

from sst_search.errors import first_line
from sst_search.vector_search.half_precision import to_float16, to_float32
from sst_search.vector_search.indexes import file_mode, read_json, write_json
from sst_search.weights import sha256_file

log = logging.getLogger(__name__)

#: ``(embedder, trait)``: one index.
IndexKey = tuple[str, str]
DTYPE = np.dtype(np.float16)
#: Largest difference between a stored float32 component and its float16 copy that
#: :func:`check` accepts (float16 rounds a value in [-1, 1] by at most 2^-12).
TOLERANCE = 1e-3


#: Rows gathered per block when a streamed matrix is written out in id order.
SORT_BLOCK = 65_536


def vectors_dir(db_path: str | Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".vectors")


def live_dir(faiss_dir: Path) -> Path:
    """Where a live store keeps the vectors at rest of its last streamed build: inside its
    FAISS folder, which a publish copies with the catalog, so the publish moves them into the
    snapshot instead of writing them again from the catalog (see :class:`StreamedVectors`)."""
    return faiss_dir / ".vectors"


def vector_paths(root: Path, key: IndexKey) -> tuple[Path, Path, Path]:
    """``(matrix, ids, manifest)``; names are percent-quoted so any embedder/trait name is safe."""
    stem = root / quote(key[0], safe="") / quote(key[1], safe="")
    return (stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".ids.npy"),
            stem.with_name(stem.name + ".json"))


def read_manifest(root: Path, key: IndexKey) -> dict | None:
    return read_json(vector_paths(root, key)[2])


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


class RowReader:
    """A few rows of a mapped matrix file, read with ``pread`` instead of through the mapping.

    A page touched through a mapping faults in its neighbours as well (the kernel's
    fault-around: 64 KB, whatever ``madvise`` says), so re-ranking a few dozen scattered rows a
    search leaves megabytes of the file resident in every reader after a few searches: 261
    bytes a vector at 200,000 x 768 after 40. Read, the rows pass through the page cache that
    every reader shares, and a process holds only the rows it asked for, for as long as it
    uses them. Long runs of rows (an exact scan) still go through the mapping, where one
    fault-in serves many rows."""

    #: Rows up to which a gather is read; more go through the mapping.
    MAX_ROWS = 256

    def __init__(self, matrix: np.memmap, positions: np.ndarray | None = None) -> None:
        """``positions``: the file's rows that rows ``0, 1, ...`` asked of the reader are (a
        :class:`RowSubset`'s); None: the file's own rows."""
        self.dim, self.dtype = matrix.shape[1], matrix.dtype
        self._offset, self._width = matrix.offset, matrix.shape[1] * matrix.itemsize
        self._file = open(matrix.filename, "rb")  # noqa: SIM115 (closed with the reader)
        self._nowait = hasattr(os, "RWF_NOWAIT")
        self._positions = positions

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The rows, those the page cache holds first; the kernel is then asked for all the
        others at once (``POSIX_FADV_WILLNEED``) before they are read, so a cold re-rank waits
        about one disk read, not one per row: 200 rows of an uncached 2.9 GB file took 14-17 ms
        read one after another, 1.6-2.2 ms so."""
        out = np.empty((len(rows), self.dim), self.dtype)
        if not len(rows):
            return out
        view, width = memoryview(out).cast("B"), self._width
        rows = (rows if self._positions is None else self._positions[rows]).tolist()
        late = [i for i, row in enumerate(rows) if not self._read_cached(view[i * width : (i + 1) * width], row)]
        will_need(self._file.fileno(), [(self._offset + rows[i] * width, width) for i in late])
        for i in late:
            self._read(view[i * width : (i + 1) * width], rows[i])
        return out

    def _read_cached(self, into: memoryview, row: int) -> bool:
        """Read ``row`` if the page cache holds it (``RWF_NOWAIT``); False where it would wait
        for the disk, or where the system cannot tell."""
        if not self._nowait:
            return False
        try:
            # Short where the row's first page is cached and its second is not: read again below.
            return os.preadv(self._file.fileno(), [into], self._offset + row * self._width, os.RWF_NOWAIT) == self._width
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self._nowait = False  # a file system without non-blocking reads
            return False

    def _read(self, into: memoryview, row: int) -> None:
        if os.preadv(self._file.fileno(), [into], self._offset + row * self._width) != self._width:
            raise OSError(f"{self._file.name}: row {row} lies beyond the end of the file")


def will_need(fd: int, spans: list[tuple[int, int]]) -> None:
    """Ask the kernel for every ``(offset, size)`` span of the file at once, before they are
    read one after another: a cold read of many rows then waits about one disk read. One
    span is just read."""
    if len(spans) > 1:
        for offset, size in spans:
            os.posix_fadvise(fd, offset, size, os.POSIX_FADV_WILLNEED)


class RowSubset:
    """Some rows of a mapped matrix, indexed as a matrix of their own: a shard's part of a
    snapshot's vectors at rest (:mod:`sst_search.sharding`), read from the one file that every
    shard on a machine maps, where a copy of each part would hold the whole file again in
    anonymous memory (15 GB at 10M x 768)."""

    def __init__(self, matrix: np.ndarray, positions: np.ndarray) -> None:
        self.matrix, self.positions = matrix, positions
        self.shape, self.dtype, self.ndim = (len(positions), matrix.shape[1]), matrix.dtype, 2

    def __getitem__(self, rows: np.ndarray | slice) -> np.ndarray:
        return self.matrix[self.positions[rows]]


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
            put(to_float16(values).tobytes())
            at += len(batch_ids)
    if at != len(ids):
        raise RuntimeError(f"{key[0]}/{key[1]}: {at} vectors read for {len(ids)} ids")


def write_manifest(root: Path, key: IndexKey, generation: int, dim: int, count: int, matrix_sha256: str) -> None:
    """The manifest, written last: it vouches for the matrix and ids files already in place."""
    matrix_path, ids_path, manifest_path = vector_paths(root, key)
    manifest = {"generation": generation, "count": count, "dim": dim, "dtype": DTYPE.name,
                "bytes": matrix_path.stat().st_size, "sha256": matrix_sha256,
                "ids_bytes": ids_path.stat().st_size, "ids_sha256": sha256_file(ids_path)}
    write_json(manifest_path, manifest)


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


def _temp(root: Path, name: str) -> Path:
    """A new, empty ``*.tmp`` file in ``root`` (a writer that dies leaves it for
    :func:`~sst_search.vector_search.indexes.remove_leftovers`, never under a real name)."""
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=name + ".", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, file_mode())
    return Path(tmp)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


class StreamedVectors:
    """One index's vectors as a streamed bulk write hands them over, chunk by chunk, turned
    into its vectors at rest without ever holding them all in memory.

    Chunks are appended as float16 to a spill file in arrival order (the only copy besides
    the catalog's); after :meth:`close`, :meth:`rows` serves the index its training sample and
    its chunks to add, and :meth:`write_sorted` writes the matrix in id order under temporary
    names by gathering blocks of the mapped spill (both may run at once, in two threads: the
    index's build is CPU-bound, the sorted write mostly waits for the disk). Nothing has a
    real name until :meth:`publish`, which the
    writer calls after the catalog committed, with the committed generation: a write that
    dies or raises leaves only ``*.tmp`` files (:meth:`discard` removes them), never a
    partial matrix a manifest vouches for.
    """

    def __init__(self, root: Path, key: IndexKey, dim: int) -> None:
        self.root, self.key, self.dim = root, key, dim
        self._name = vector_paths(root, key)[0].name
        self._spill_path = _temp(vector_paths(root, key)[0].parent, self._name + ".spill")
        self._spill = open(self._spill_path, "wb")  # noqa: SIM115 (closed by finish or discard)
        self._ids: list[np.ndarray] = []
        self._temps: list[Path] = [self._spill_path]
        self._map: mmap.mmap | None = None
        self._mapped = np.zeros((0, dim), DTYPE)
        #: The ids in arrival order (after :meth:`close`).
        self.ids = np.zeros(0, np.int64)
        self._order = np.zeros(0, np.int64)
        #: Rows appended so far.
        self.count = 0
        self._sha256 = ""

    def append(self, ids: np.ndarray, matrix: np.ndarray) -> None:
        if matrix.shape != (len(ids), self.dim):
            raise ValueError(f"{self.key[0]}/{self.key[1]}: a chunk of vectors of shape {matrix.shape} "
                             f"for {len(ids)} ids of an index of dim {self.dim}")
        self._spill.write(to_float16(matrix).tobytes())
        self._ids.append(np.asarray(ids, np.int64))
        self.count += len(ids)

    def rows(self, positions: np.ndarray | slice) -> np.ndarray:
        """float32 rows of the stream, by position in arrival order (after :meth:`close`)."""
        rows = to_float32(self._mapped[positions])
        self._unmap_pages()
        return rows

    def _unmap_pages(self) -> None:
        """Let go of the spill's pages this process has mapped: they stay in the page cache,
        but do not count as this process's memory, which would otherwise grow by the whole
        spill file (15 GB at 10 million x 768) as the sort and the index read it."""
        if self._map is not None:
            self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """After the last chunk: the spill mapped for :meth:`rows`, and the ids checked. A
        specimen listed twice in the stream is refused (its vector would be in the file twice)."""
        self._spill.close()
        self.ids = np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64)
        self._ids = []
        if self.count:
            with open(self._spill_path, "rb") as fh:
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._mapped = np.frombuffer(self._map, DTYPE).reshape(self.count, self.dim)
        self._order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[self._order]
        repeated = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
        if len(repeated):
            raise ValueError(f"{self.key[0]}/{self.key[1]}: the stream lists specimen {int(repeated[0])} twice")

    def write_sorted(self) -> None:
        """After :meth:`close`: the ids and matrix files in id order, under temporary names."""
        order = self._order
        sorted_ids = self.ids[order]
        ids_tmp, matrix_tmp = _temp(self._spill_path.parent, self._name + ".ids"), _temp(self._spill_path.parent, self._name)
        self._temps += [ids_tmp, matrix_tmp]
        save_array(ids_tmp, sorted_ids)
        digest = hashlib.sha256()
        write_matrix(str(matrix_tmp), self.key, sorted_ids, self.dim, self._in_id_order(order), digest.update)
        for path in (ids_tmp, matrix_tmp):
            _fsync(path)
        self._sha256 = digest.hexdigest()

    def _in_id_order(self, order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Blocks of ``(ids, rows)`` in id order, each gathered from the spill in file order."""
        for start in range(0, len(order), SORT_BLOCK):
            wanted = order[start : start + SORT_BLOCK]
            by_offset = np.argsort(wanted)
            block = np.empty((len(wanted), self.dim), DTYPE)
            block[by_offset] = self._mapped[wanted[by_offset]]
            self._unmap_pages()
            yield self.ids[wanted], block

    def publish(self, generation: int) -> None:
        """Give the finished files their names and write the manifest for ``generation``
        (the catalog's, committed): the old manifest goes first, so between the renames no
        manifest vouches for a file it does not describe."""
        matrix_path, ids_path, manifest_path = vector_paths(self.root, self.key)
        manifest_path.unlink(missing_ok=True)
        os.replace(self._temps[1], ids_path)
        os.replace(self._temps[2], matrix_path)
        write_manifest(self.root, self.key, generation, self.dim, self.count, self._sha256)
        self.discard()

    def discard(self) -> None:
        """Remove every temporary file left (all of them when the write did not commit)."""
        self._mapped = np.zeros((0, self.dim), DTYPE)
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view still held elsewhere: closed when it goes
                self._map.close()
            self._map = None
        if not self._spill.closed:
            self._spill.close()
        for path in self._temps:
            path.unlink(missing_ok=True)


def drop(root: Path, key: IndexKey) -> None:
    """Forget ``key``'s files in ``root`` (a live store's, once the catalog moved past them)."""
    for path in reversed(vector_paths(root, key)):  # the manifest first
        path.unlink(missing_ok=True)
