"""The FAISS side of a store: in-memory indexes and vector arrays (or, in a published
snapshot, the mapped vectors at rest), each tied to a generation.

DuckDB is the truth; everything here is a cache of its ``vectors`` table. An entry is used
only while its generation equals the one the database holds (the caller passes it in), so
a writer's commit or a newer snapshot makes stale entries invisible without any
invalidation message. Files on disk are trusted only when their manifest vouches for the
same generation and size, and, for a writer, which loads an index to change it, the same
checksum; anything else is rebuilt from the catalog. A reader maps the file instead of
reading it (FAISS's ``IO_FLAG_MMAP_IFC``): opening costs nothing whatever the index's size
(7.8 GB at 10 million vectors of dim 768), resident memory is the lists searches touch, and
the OS holds one copy of them for every reader process. It does not hash the file, which
would read all of it; a published file's checksum was checked before readers could see it,
and ``verify`` checks it again, as for the vectors at rest.

The cache does no SQL: the store hands it a function that reads one index's vectors, so
all queries stay in the store (:mod:`sst_search.store.catalog` reads the vectors).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from sst_search.config import IndexConfig
from sst_search.vector_search import at_rest, indexes
from sst_search.vector_search.at_rest import IndexKey
from sst_search.vector_search.postings import Postings, open_layout
from sst_search.vector_search.vector_table import ListLayout, VectorTable
from sst_search.weights import sha256_file

#: Reads ``(ids, (n, dim) matrix)`` of one index's vectors from the catalog.
VectorReader = Callable[[str, str], tuple[np.ndarray, np.ndarray]]
FileState = Literal["missing", "stale", "fresh", "damaged"]


class IndexCache:
    """One store's FAISS indexes and vector arrays, loaded, rebuilt and saved by generation."""

    def __init__(self, faiss_dir: Path, config: IndexConfig, read_vectors: VectorReader,
                 at_rest_db: Path | None = None) -> None:
        self.faiss_dir = faiss_dir
        #: The snapshot whose vectors at rest a reader maps (None: always read the catalog's).
        self.at_rest_db = at_rest_db
        #: The index kinds to build (the store replaces it with the one its writer recorded).
        self.config = config
        self._read_vectors = read_vectors
        self._indexes: dict[IndexKey, tuple[faiss.Index, int]] = {}
        self._dirty: set[IndexKey] = set()
        self._tables: dict[IndexKey, tuple[VectorTable, int | None]] = {}
        #: sha256 of the file each index in memory was loaded from (absent: rebuilt or changed since).
        self._loaded_from: dict[IndexKey, str] = {}
        self._postings: dict[tuple[IndexKey, str], tuple[Postings | None, faiss.Index]] = {}
        #: The background read of each mapped index's file (:func:`~sst_search.vector_search.indexes.read_ahead`).
        self._reading: dict[IndexKey, threading.Thread] = {}

    def index(self, key: IndexKey, generation: int, dim: int, writable: bool) -> faiss.Index:
        """The index of ``key`` at ``generation``: from memory, else a trusted file, else rebuilt
        (and saved by the next :meth:`flush` when ``writable``)."""
        cached = self._indexes.get(key)
        if cached is not None and cached[1] == generation:
            return cached[0]
        self._drop_postings(key)
        index = self._load_trusted(key, generation, mapped=not writable)
        if index is None:
            index = self.rebuild(key, dim)
            if writable:
                self._dirty.add(key)
        self._indexes[key] = (index, generation)
        return index

    def postings(self, key: IndexKey, generation: int, field: str) -> Postings | None:
        """``field``'s postings of the index of ``key`` mapped from the snapshot, or None when
        it has none that fit the index in memory (see :mod:`~sst_search.vector_search.postings`)."""
        cached = self._indexes.get(key)
        if self.at_rest_db is None or cached is None or cached[1] != generation:
            return None
        index = cached[0]
        known = self._postings.get((key, field))
        if known is None or known[1] is not index:
            found = Postings.open(at_rest.vectors_dir(self.at_rest_db), key, field, generation,
                                  self._loaded_from.get(key), index) if indexes.ivf_of(index) is not None else None
            known = self._postings[(key, field)] = (found, index)
        return known[0]

    def _stored_layout(self, key: IndexKey, generation: int | None, index: faiss.Index, rows: int) -> ListLayout | None:
        """The list layout written with the snapshot for ``index``, when ``index`` is the one
        loaded from the file it was read from (an index rebuilt in memory has other lists)."""
        cached = self._indexes.get(key)
        if cached is None or cached[0] is not index or cached[1] != generation or indexes.ivf_of(index) is None:
            return None
        return open_layout(at_rest.vectors_dir(self.at_rest_db), key, generation, self._loaded_from.get(key), index, rows)

    def in_memory(self, key: IndexKey, generation: int) -> faiss.Index | None:
        """The index held in memory for ``key`` if it is at ``generation`` (consistency checks)."""
        cached = self._indexes.get(key)
        return cached[0] if cached is not None and cached[1] == generation else None

    def vector_table(self, key: IndexKey, generation: int | None) -> VectorTable:
        """One index's vectors once per generation: mapped from the snapshot's vectors at rest
        when it has them, else read from the catalog as float32."""
        cached = self._tables.get(key)
        if cached is None or cached[1] != generation:
            mapped = None if self.at_rest_db is None else at_rest.open_vectors(
                at_rest.vectors_dir(self.at_rest_db), key, generation)
            if mapped is not None:
                table = VectorTable(*mapped, presorted=True, row_reader=at_rest.RowReader(mapped[1]),
                                    stored_layout=lambda index: self._stored_layout(key, generation, index, len(mapped[0])))
            else:
                ids, matrix = self._read_vectors(*key)
                table = VectorTable(ids, np.ascontiguousarray(matrix, np.float32))
            cached = self._tables[key] = (table, generation)
        return cached[0]

    def rebuild(self, key: IndexKey, dim: int) -> faiss.Index:
        """A fresh index from the catalog's vectors (not cached; see :meth:`replace`)."""
        ids, matrix = self._read_vectors(*key)
        return indexes.build_index(matrix, ids, dim, self.config)

    def replace(self, key: IndexKey, index: faiss.Index, generation: int) -> None:
        """Hold ``index`` as ``key`` at ``generation`` and save it at the next :meth:`flush`."""
        self._drop_postings(key)
        self._indexes[key] = (index, generation)
        self._dirty.add(key)

    def forget(self, key: IndexKey) -> None:
        """Drop the in-memory index (its ids changed); the next use rebuilds it."""
        self._drop_postings(key)
        self._indexes.pop(key, None)

    def _drop_postings(self, key: IndexKey) -> None:
        """The index of ``key`` changes in memory: postings read from its file no longer fit it."""
        self._loaded_from.pop(key, None)
        for known in [k for k in self._postings if k[0] == key]:
            del self._postings[known]

    def apply(
        self,
        key: IndexKey,
        generation: int,
        count: int,
        dim: int,
        removed_ids: np.ndarray,
        added: tuple[np.ndarray, np.ndarray | None],
    ) -> None:
        """Bring ``key``'s in-memory index to a just-committed ``generation`` holding ``count``
        vectors, incrementally when possible.

        An index is retrained only when it changes kind or its clustering is outgrown
        (:func:`indexes.needs_rebuild`); a fresh one is built from the added matrix itself.
        """
        vids, matrix = added
        cached = self._indexes.get(key)
        index = cached[0] if cached is not None else None
        if index is None and count == len(vids) and matrix is not None:
            index = indexes.build_index(matrix, vids, matrix.shape[1], self.config)
        elif index is None or indexes.needs_rebuild(index, count, self.config) or not indexes.supports_removal(index):
            index = self.rebuild(key, dim)
        else:
            index.remove_ids(faiss.IDSelectorBatch(removed_ids))
            if len(vids):
                index.add_with_ids(matrix, vids)
        self.replace(key, index, generation)

    def flush(self) -> None:
        """Persist every index changed since the last flush (atomic per file)."""
        for key in sorted(self._dirty):
            index, generation = self._indexes[key]
            indexes.save_index(self.faiss_dir, *key, index, generation, indexes.factory_of(index, self.config))
        self._dirty.clear()

    def file_state(self, key: IndexKey, generation: int) -> tuple[FileState, dict | None]:
        """What the file of ``key`` is worth at ``generation`` (cheap: manifest and size), and its manifest."""
        manifest = indexes.read_manifest(self.faiss_dir, *key)
        if manifest is None:
            return "missing", None
        if manifest.get("generation") != generation:
            return "stale", manifest
        return ("fresh" if self._size_matches(key, manifest) else "damaged"), manifest

    def _load_trusted(self, key: IndexKey, generation: int, mapped: bool) -> faiss.Index | None:
        """The file's index when its manifest, size, count and (read into memory, not
        ``mapped``) checksum vouch for it, else None."""
        state, manifest = self.file_state(key, generation)
        if state != "fresh":
            return None
        path = indexes.index_paths(self.faiss_dir, *key)[0]
        lists = indexes.lists_path(self.faiss_dir, *key, manifest)
        if not mapped and manifest.get("sha256") and sha256_file(path) != manifest["sha256"]:
            return None
        if not mapped and indexes.lists_problem(self.faiss_dir, *key, manifest, checksum=True) is not None:
            return None
        try:
            index = indexes.load_index(self.faiss_dir, *key, mapped=mapped, manifest=manifest)
        except RuntimeError:
            return None
        if mapped:  # the file searches read from: the lists file of a fast-scan index
            self._reading[key] = indexes.read_ahead(lists or path, index)
        if index.ntotal != manifest.get("count", index.ntotal):
            return None
        if manifest.get("sha256"):
            self._loaded_from[key] = manifest["sha256"]
        return index

    def read(self, key: IndexKey) -> None:
        """Wait until the mapped file of the loaded index of ``key`` has been read into the
        page cache (at once when it was not mapped or was read already): an IVF search reads
        a few hundred lists spread over the whole file (50-70 MB of fast-scan codes a query
        at 10M x 768), so a search of a cold file waits on the disk for up to a second, where
        the same search of a warm one takes milliseconds."""
        reading = self._reading.pop(key, None)
        if reading is not None:
            reading.join()

    def part(self, key: IndexKey, generation: int, parts: int, part: int) -> faiss.Index | None:
        """A new index holding the stored IVF index's entries of ``key`` at ``generation``
        whose ids modulo ``parts`` are ``part`` (:func:`~sst_search.vector_search.indexes.copy_part`),
        or None when there is no such file. Neither index is kept in the cache: the stored
        one is read from its mapped file once, and the part is the caller's."""
        state, manifest = self.file_state(key, generation)
        if state != "fresh":
            return None
        try:
            source = indexes.load_index(self.faiss_dir, *key, mapped=True, manifest=manifest)
            target = indexes.load_index(self.faiss_dir, *key, mapped=True, manifest=manifest)
        except RuntimeError:
            return None
        if indexes.ivf_of(source) is None:
            return None
        return indexes.copy_part(source, indexes.emptied(target), parts, part)

    def part_postings(self, key: IndexKey, generation: int, field: str, part: faiss.Index, positions: np.ndarray
                      ) -> Postings | None:
        """``field``'s postings of the stored index of ``key`` at ``generation`` over the rows
        ``positions`` of its vector table, whose entries ``part`` holds (:meth:`part`), or
        None when the snapshot has none that fit that file."""
        state, manifest = self.file_state(key, generation)
        if state != "fresh" or self.at_rest_db is None or indexes.ivf_of(part) is None:
            return None
        return Postings.open(at_rest.vectors_dir(self.at_rest_db), key, field, generation, manifest.get("sha256"),
                             part, positions)

    def _size_matches(self, key: IndexKey, manifest: Mapping) -> bool:
        """Cheap check that catches truncated files (manifests older than the size field pass)."""
        size = manifest.get("bytes")
        if size is not None and indexes.index_paths(self.faiss_dir, *key)[0].stat().st_size != size:
            return False
        return indexes.lists_problem(self.faiss_dir, *key, manifest, checksum=False) is None

