"""FAISS indexes: which kind for which size, and crash-safe files.

Every index holds L2-normalised vectors under inner product (= cosine similarity) with
FAISS ids equal to specimen ids. Small indexes are exact (``IndexFlatIP``); above
``IndexConfig.exact_threshold`` vectors they become approximate (IVF or HNSW) and are rebuilt whenever they
cross the threshold or an IVF index outgrows its training (``nlist`` too small for ``n``).

Files are a cache of the DuckDB ``vectors`` table: ``<name>.index`` is written to a
temporary file and renamed into place, then ``<name>.json`` (the manifest: generation,
count, kind, dim, size and sha256 of the index file) the same way. A reader trusts a file only when its manifest's generation
equals the one in DuckDB, so a crash between the two renames costs a rebuild, never a
wrong answer.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote

import faiss
import numpy as np

from sst_search.config import IndexConfig
from sst_search.vector_search import (
    fast_scan_lists,
    list_assignment,
    one_dim_codes,
    two_level,
)
from sst_search.weights import sha256_file

#: Bytes read at a time when a mapped index's file is read into the page cache: 16 MiB read
#: as fast (a 4 GB file at 1.5-1.7 GB/s from a cold cache), but a freed buffer that size
#: stays in the heap (glibc raises its mmap threshold to it): 16 MiB more in every reader.
READ_AHEAD_BLOCK = 1 << 20
#: Linux's ``madvise`` advice that maps a range's pages in (5.14 on; Python 3.11 lacks the name).
MADV_POPULATE_READ = 22
#: Smallest mapping :func:`map_in_files` fills: at most 128 faults of 64 KB otherwise.
MAP_IN_SMALLEST = 8 << 20


def index_kind(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    return "ivf" if ivf_of(index) is not None else "flat"


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF index inside ``index`` (also behind an OPQ pre-transform), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def bytes_per_vector(index: faiss.Index) -> float:
    """Memory of the index per vector it holds: codes, ids, centroids and transforms."""
    return faiss.serialize_index(index).nbytes / max(1, index.ntotal)


def build_index(vectors: np.ndarray, ids: np.ndarray, dim: int, config: IndexConfig) -> faiss.Index:
    """A fresh index of the right kind for ``len(ids)`` vectors."""
    vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, dim)
    return build_index_from(lambda rows: vectors[rows], ids, dim, config)


def build_index_from(rows: Callable[[np.ndarray | slice], np.ndarray], ids: np.ndarray, dim: int,
                     config: IndexConfig, chunk: int = 200_000) -> faiss.Index:
    """:func:`build_index` of vectors read ``chunk`` rows at a time, ``rows(positions)``
    giving float32 rows (widened from a float16 file, say): trained on the sample
    :func:`training_rows` picks and filled chunk by chunk, so no float32 matrix of them all
    is ever made."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n = len(ids)
    index = new_index(n, dim, config, lambda size: rows(training_rows(n, size, config.train_seed)))
    filling = Filling(index, config)
    for start in range(0, n, chunk):
        filling.add(np.ascontiguousarray(rows(slice(start, start + chunk)), np.float32), ids[start : start + chunk])
    filling.finish()
    return index


class Filling:
    """How a build adds its vectors to a new index. An IVF index of
    ``config.fast_assignment_lists`` lists or more (no transform before them) gets each in the
    list :class:`~list_assignment.NearestLists` finds where the CPU multiplies bfloat16
    matrices (the lists FAISS would choose, in about half its time), and a fast-scan one of
    that size has its codes packed in its lists' blocks a filing at a time
    (:class:`~fast_scan_lists.AssignedAdds`, with FAISS's lists where there are no matrix
    units); otherwise FAISS files each vector itself. Call :meth:`finish` after the last
    :meth:`add`."""

    def __init__(self, index: faiss.Index, config: IndexConfig) -> None:
        self.index = index
        large = isinstance(index, faiss.IndexIVF) and index.nlist >= config.fast_assignment_lists
        self.nearest = list_assignment.nearest_lists_for(index) if large else None
        self._blocks = fast_scan_lists.AssignedAdds(index) if large and is_fast_scan(index) else None

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Add float32 rows ``x`` with int64 ``ids``."""
        if self.nearest is None and self._blocks is None:
            self.index.add_with_ids(x, ids)
            return
        x, ids = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(ids, np.int64)
        lists = self.nearest.assign(x) if self.nearest is not None else self.index.quantizer.assign(x, 1)[:, 0]
        if self._blocks is not None:
            self._blocks.add(x, ids, lists)
        else:
            self.index.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))

    def finish(self) -> None:
        if self._blocks is not None:
            self._blocks.flush()


def new_index(n: int, dim: int, config: IndexConfig, training: Callable[[int], np.ndarray]) -> faiss.Index:
    """An empty index of the right kind for ``n`` vectors, trained (IVF) on ``training(size)``,
    the float32 rows of a sample of ``size``: a streamed build draws them from vectors it
    does not hold in memory (see :func:`training_rows`). An IVF index of at least
    ``config.two_level_lists`` lists (and no transform before them) has its lists trained in
    two levels (:mod:`two_level`)."""
    kind = config.kind_for(n)
    if kind == "ivf":
        nlist = config.nlist_for(n)
        index = ivf_from_factory(config.tier_for(n).factory, dim, nlist)
        ivf = ivf_of(index)
        _bound_training(index, ivf, config)
        sample = np.ascontiguousarray(training(nlist * config.train_per_list), dtype=np.float32)
        if nlist >= config.two_level_lists and isinstance(index, faiss.IndexIVF):
            # with the quantizer filled, FAISS's training skips the lists and trains the codes alone
            ivf.quantizer.add(two_level.train(sample, nlist, config.train_niter, config.train_seed))
        index.train(sample)
        one_dim_codes.sort_codebooks(ivf)
        ivf.nprobe = config.nprobe_for(nlist, n)
    elif kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = config.hnsw_ef_construction
        hnsw.hnsw.efSearch = config.hnsw_ef_search
        index = faiss.IndexIDMap2(hnsw)
    else:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    return index


def filled_factory(factory: str, dim: int, nlist: int) -> str:
    """An ``index.tiers`` factory string for one index: ``{nlist}`` from its size, and
    ``{half_dim}`` or ``{dim}`` (a 4-bit PQ sub-quantizer per two dimensions or per dimension,
    ``PQ{half_dim}x4fs``) from its width, so one tier serves every embedder's width."""
    return factory.format(nlist=nlist, half_dim=dim // 2, dim=dim)


def ivf_from_factory(factory: str, dim: int, nlist: int) -> faiss.Index:
    """An untrained index of an ``index.tiers`` factory string, or a ValueError that names it."""
    try:
        index = faiss.index_factory(dim, filled_factory(factory, dim, nlist), faiss.METRIC_INNER_PRODUCT)
    except (RuntimeError, KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"index tier factory {factory!r}: not a FAISS factory string for dim {dim} ({exc})") from exc
    if ivf_of(index) is None:
        raise ValueError(f"index tier factory {factory!r} builds no IVF index; use approximate: hnsw for graphs")
    return index


def code_kind(index: faiss.Index) -> str:
    """What an index stores per vector, as its FAISS classes and an IVF's code bytes
    (``OPQMatrix+IndexIVFPQ/16``): two indexes of one factory string share it, whatever their
    size or training; one-bit and two-bit RaBitQ do not."""
    parts = []
    if isinstance(index, faiss.IndexPreTransform):
        parts = [type(faiss.downcast_VectorTransform(index.chain.at(i))).__name__ for i in range(index.chain.size())]
    ivf = ivf_of(index)
    inner = faiss.downcast_index(ivf) if ivf is not None else faiss.downcast_index(index)
    return "+".join([*parts, type(inner).__name__]) + (f"/{ivf.code_size}" if ivf is not None else "")


def tier_code_kind(config: IndexConfig, n: int, dim: int) -> str:
    """:func:`code_kind` of the index ``config`` builds for ``n`` vectors (an untrained one-list probe)."""
    return code_kind(ivf_from_factory(config.tier_for(n).factory, dim, 1))


def _bound_training(index: faiss.Index, ivf: faiss.IndexIVF, config: IndexConfig) -> None:
    """Every clustering the index trains (IVF lists, OPQ rotation, PQ codebooks) runs
    ``train_niter`` iterations from ``train_seed``: FAISS's own defaults (50 OPQ rounds of PQ
    training, polysemous training) cost minutes for a few thousand vectors."""
    ivf.cp.seed, ivf.cp.niter = config.train_seed, config.train_niter
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = transform.niter_pq_0 = config.train_niter
    ivf = faiss.downcast_index(ivf)
    if isinstance(ivf, faiss.IndexIVFPQ):
        ivf.pq.cp.seed, ivf.pq.cp.niter = config.train_seed, config.train_niter
        # The factory turns on polysemous training (an annealing of the code order) unless the
        # string says ``np``; it only pays off with polysemous Hamming filtering, which searches
        # here never use, and it dominates training time.
        ivf.do_polysemous_training = False


def training_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Which of ``n`` rows, ascending, an index is trained on: a fixed-seed sample of ``size``
    (all rows when fewer), so k-means costs ``size / n`` of training on everything and the
    same vectors give the same clustering."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def needs_rebuild(index: faiss.Index, n: int, config: IndexConfig) -> bool:
    """True when ``n`` vectors call for another kind or size tier (``index.tiers``), or an
    IVF's clustering is outgrown."""
    kind = index_kind(index)
    if kind != config.kind_for(n):
        return True
    return kind == "ivf" and (ivf_of(index).nlist * 2 < config.nlist_for(n)
                              or code_kind(index) != tier_code_kind(config, n, index.d))


def supports_removal(index: faiss.Index) -> bool:
    return index_kind(index) != "hnsw"


def index_ids(index: faiss.Index) -> np.ndarray:
    """The FAISS ids an index holds (sorted), for consistency checks."""
    ivf = ivf_of(index)
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        ids = faiss.vector_to_array(index.id_map)
    elif ivf is not None:
        invlists = ivf.invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(ivf.nlist)
            if invlists.list_size(i)
        ]
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    else:
        raise TypeError(f"cannot list the ids of a {type(index).__name__}")
    return np.sort(ids.astype(np.int64))


def index_paths(root: Path, embedder: str, trait_name: str) -> tuple[Path, Path]:
    """``(index file, manifest file)``; names are percent-quoted so any embedder/trait name is safe."""
    stem = root / quote(embedder, safe="") / quote(trait_name, safe="")
    return stem.with_name(stem.name + ".index"), stem.with_name(stem.name + ".json")


def file_mode(directory: bool = False) -> int:
    """The mode a plain ``open()`` / ``mkdir()`` would give under the current umask.

    ``mkstemp`` and ``mkdtemp`` create 0600 files and 0700 folders; published files get the
    ordinary mode instead, so a search app running as another user can read them.
    """
    mask = os.umask(0o022)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def remove_leftovers(root: Path) -> list[Path]:
    """Delete temporary files of writes a killed writer never finished (call as the only writer)."""
    removed = []
    if root.is_dir():
        for tmp in root.rglob("*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, file_mode())
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, manifest: dict) -> None:
    """``manifest`` as JSON at ``path``, atomically: the last file written of a set, which
    vouches for the others."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest)))


def read_json(path: Path) -> dict | None:
    """The manifest at ``path``, or None when it is missing or does not parse: its files are
    then not used (readers fall back, verify says why)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def factory_of(index: faiss.Index, config: IndexConfig) -> str:
    """The factory string ``index`` was built from under ``config`` (its tier's,
    :func:`filled_factory`), or its :func:`code_kind` when no tier of ``config`` builds that kind."""
    kind = index_kind(index)
    if kind != "ivf":
        return "Flat" if kind == "flat" else f"HNSW{config.hnsw_m},Flat"
    n, codes = int(index.ntotal), code_kind(index)
    if codes != tier_code_kind(config, n, index.d):
        return codes
    return filled_factory(config.tier_for(n).factory, index.d, ivf_of(index).nlist)


def save_index(root: Path, embedder: str, trait_name: str, index: faiss.Index, generation: int,
               factory: str | None = None) -> None:
    """Index first, manifest second: see the module docstring for why this order is safe. The
    manifest records the ``factory`` string and the bytes per vector measured from the files
    (``faiss.serialize_index``'s bytes, without a second copy in memory).

    A fast-scan index's lists go first, to a lists file of their own named by its checksum
    (:mod:`fast_scan_lists`), which the index file then names: a file of that name never
    changes, so a reader of the old index keeps reading the old lists, and one that finds
    the new manifest finds both new files in place."""
    index_path, manifest_path = index_paths(root, embedder, trait_name)
    lists = _save_lists(index_path, index) if is_fast_scan(index) else None
    if lists is None:
        atomic_write(index_path, lambda tmp: faiss.write_index(index, tmp))
    else:
        with fast_scan_lists.pointing_at(ivf_of(index), lists["file"], lists["bytes"]):
            atomic_write(index_path, lambda tmp: faiss.write_index(index, tmp))
    size = index_path.stat().st_size
    stored = size + (lists["bytes"] if lists else 0)
    manifest = {"generation": generation, "count": int(index.ntotal), "kind": index_kind(index), "dim": index.d,
                "factory": factory, "codes": code_kind(index), "bytes_per_vector": round(stored / max(1, index.ntotal), 1),
                "bytes": size, "sha256": sha256_file(index_path), "lists": lists}
    write_json(manifest_path, manifest)
    _remove_other_lists(index_path, lists["file"] if lists else None)


def _save_lists(index_path: Path, index: faiss.Index) -> dict:
    """Write the fast-scan lists beside ``index_path``; their manifest entry."""
    index_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = index_path.with_name(f"{index_path.name}.lists.tmp")
    try:
        size = fast_scan_lists.write(ivf_of(index), tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        name = f"{index_path.name.removesuffix('.index')}.{digest[:16]}.lists"
        os.chmod(tmp, file_mode())
        os.replace(tmp, index_path.with_name(name))
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": name, "bytes": size, "sha256": digest}


def _remove_other_lists(index_path: Path, keep: str | None) -> None:
    """Lists files of earlier saves of this index: readers that mapped one keep its pages
    (a published version links its own)."""
    stem = index_path.name.removesuffix(".index")
    for path in index_path.parent.glob(glob.escape(stem) + ".*.lists"):
        # "t.<digest>.lists", not "t.x.<digest>.lists" of a trait called "t.x"
        if path.name != keep and re.fullmatch(r"[0-9a-f]{16}", path.name[len(stem) + 1 : -len(".lists")]):
            path.unlink(missing_ok=True)


def lists_path(root: Path, embedder: str, trait_name: str, manifest: dict | None) -> Path | None:
    """The lists file a manifest names (fast-scan indexes), or None."""
    lists = (manifest or {}).get("lists")
    return index_paths(root, embedder, trait_name)[0].with_name(lists["file"]) if lists else None


def lists_problem(root: Path, embedder: str, trait_name: str, manifest: dict, checksum: bool) -> str | None:
    """What is wrong with the lists file a manifest names (missing, another size, and with
    ``checksum`` other content), or None when it matches or there is none."""
    path = lists_path(root, embedder, trait_name, manifest)
    if path is None:
        return None
    if not path.is_file():
        return f"FAISS lists file {path.name} is missing"
    if path.stat().st_size != manifest["lists"]["bytes"]:
        return f"FAISS lists file {path.name} is {path.stat().st_size} bytes, its manifest says {manifest['lists']['bytes']}"
    if checksum and sha256_file(path) != manifest["lists"]["sha256"]:
        return f"FAISS lists file {path.name} does not match its manifest's checksum"
    return None


def read_manifest(root: Path, embedder: str, trait_name: str) -> dict | None:
    index_path, manifest_path = index_paths(root, embedder, trait_name)
    if not (index_path.is_file() and manifest_path.is_file()):
        return None
    return read_json(manifest_path)


def load_index(root: Path, embedder: str, trait_name: str, mapped: bool = False,
               manifest: dict | None = None) -> faiss.Index:
    """The index in its files; ``mapped``: memory-mapped, read-only, its pages shared by every
    process that maps the file (see :mod:`sst_search.vector_search.cache`). A fast-scan
    index's lists file is mapped either way, and copied into memory for a writer.
    ``manifest``: the one the caller has read already."""
    path = index_paths(root, embedder, trait_name)[0]
    lists = lists_path(root, embedder, trait_name, manifest or read_manifest(root, embedder, trait_name))
    if lists is None:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mapped else 0)
    index = faiss.read_index(str(path), fast_scan_lists.READ_FLAGS)
    try:
        fast_scan_lists.attach(ivf_of(index), lists)
    except OSError as exc:
        raise RuntimeError(f"lists file {lists.name}: {exc}") from exc
    if not mapped:
        fast_scan_lists.into_memory(ivf_of(index))
    return index


def emptied(index: faiss.Index) -> faiss.Index:
    """``index`` (an IVF index, its lists mapped or not) with empty lists of its own, and
    its trained coarse quantizer and codes kept: vectors added to it fall in the same lists
    and get the same codes as in ``index``, and entries can be copied over from it
    (:func:`copy_part`)."""
    ivf = ivf_of(index)
    if ivf is None:
        raise TypeError(f"only an IVF index can be emptied, not a {index_kind(index)} one")
    if is_fast_scan(index):
        lists = fast_scan_lists.empty_lists(ivf)
    else:
        lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    ivf.ntotal = index.ntotal = 0
    return index


def copy_part(source: faiss.Index, target: faiss.Index, parts: int, part: int) -> faiss.Index:
    """``target`` (:func:`emptied` from ``source``'s file) holding the entries of ``source``
    whose id modulo ``parts`` is ``part``: their codes copied from ``source``'s lists, no
    vector read or encoded (four shards of 2.5M x 768 started in 78 s on two cores)."""
    source_ivf, target_ivf = ivf_of(source), ivf_of(target)
    if is_fast_scan(source):
        fast_scan_lists.copy_entries(source_ivf, target_ivf, lambda ids: ids % parts == part)
    else:
        source_ivf.copy_subset_to(target_ivf, faiss.InvertedLists.SUBSET_TYPE_ID_MOD, parts, part)
    target.ntotal = target_ivf.ntotal
    return target


def is_fast_scan(index: faiss.Index) -> bool:
    """Whether the index keeps fast-scan codes (``PQ..x4fs``), packed in blocks for FAISS's
    SIMD kernels: they are saved to a lists file of their own (:mod:`fast_scan_lists`), and
    FAISS 1.15 crashes reconstructing their vectors."""
    ivf = ivf_of(index)
    return ivf is not None and isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan)


def read_ahead(path: Path, index: faiss.Index | None = None) -> threading.Thread:
    """Read the whole file once, in a background thread, so that the page cache holds it:
    searches of a mapped index touch lists all over it, and each page they find missing is a
    read from disk (from a cold cache, unfiltered searches of an 8M x 768 index took 1 to 1.8 s
    each; reading its 5.8 GB file in order took 10 s). The kernel's own read-ahead advice
    (``POSIX_FADV_WILLNEED``) had read 2.5 GB of it after 38 s. Then the lists of ``index``,
    the file mapped, are mapped in (:func:`map_in`). Only for an index that will be
    searched: verify and the postings map one to read a sample or the lists' ids. Returns the
    thread, which a reader that wants the file read before it searches joins
    (:meth:`~sst_search.vector_search.cache.IndexCache.read`)."""

    def read() -> None:
        read_through(path)
        if index is not None:
            map_in(index)

    thread = threading.Thread(target=read, name=f"read-ahead {path.name}", daemon=True)
    thread.start()
    return thread


def map_in(index: faiss.Index) -> None:
    """Touch every page of a mapped IVF index's lists, so that this process's page tables
    hold them: a page in the page cache but not yet mapped costs a fault on its first touch,
    and a search reads 50 MB of lists at 10M x 768. Measured at 1M x 768 from a cold cache,
    after reading the file: the first pass of 40 unfiltered searches took p50 / p95 6.0 / 7.2 ms,
    4.9 / 5.6 ms with the lists mapped in (a second pass: 3.7 / 4.0). A shared file's
    pages, so other readers do not pay for them again."""
    ivf = ivf_of(index)
    if ivf is None:
        return
    lists, page = ivf.invlists, 4096
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size:
            codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * ivf.code_size)
            ids = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
            codes[::page].max(), ids[:: page // 8].max()  # a read of a byte of each page maps it in


def map_in_files(paths: Iterable[Path]) -> None:
    """Fill this process's page tables for its mappings of ``paths`` (Linux's
    ``MADV_POPULATE_READ``), read into the page cache already: a page there but not mapped
    costs a fault on its first touch, and a filter's first search touches pages all over its
    postings. At 10M x 768 the first search under a date range faulted in 78 MB of them,
    1-4 ms more than the next one. Mappings under :data:`MAP_IN_SMALLEST` are left to fault in
    as they are touched, since each fault maps in 64 KB or more around it and filling them
    would make all of them resident (at 200,000 vectors, 32 bytes a vector more in a
    reader). Elsewhere (no ``/proc/self/maps``, a kernel before 5.14) this does nothing and
    the first touches fault as before."""
    wanted = {os.path.realpath(p) for p in paths}  # the maps name files by their real paths
    try:
        with open("/proc/self/maps") as fh:
            spans = [line.split(maxsplit=5) for line in fh]
    except OSError:
        return
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for span in spans:
        if len(span) == 6 and span[5].rstrip("\n") in wanted:
            start, end = (int(address, 16) for address in span[0].split("-"))
            if end - start >= MAP_IN_SMALLEST and madvise(start, end - start, MADV_POPULATE_READ) != 0:
                return  # not offered by this kernel


def read_through(path: Path) -> None:
    """Read the whole file once, in order, into the page cache (a file that cannot be read is
    left to the search that needs it to report)."""
    buffer = bytearray(READ_AHEAD_BLOCK)
    with contextlib.suppress(OSError), open(path, "rb", buffering=0) as fh:
        while fh.readinto(buffer):
            pass
