"""Fast-scan IVF lists at rest in a file of their own, memory-mapped by every reader.

FAISS keeps fast-scan codes (``PQ..x4fs``) in blocks of 32 vectors that its SIMD kernels
read whole, and reads such lists into each process that loads the index: at 10M x 768
that is 2 GB a reader, which ``IO_FLAG_MMAP_IFC`` (the mapping that serves SQ8 lists)
cannot share. Here the blocks are written, one list after another, in FAISS's on-disk
list layout (codes then ids per list, :class:`faiss.OnDiskInvertedLists`): the index file
holds the lists' sizes and offsets, and each reader maps the lists file read-only, so the
OS keeps one copy of its pages for every process and a reader holds only what its
searches touch.

A list's capacity is its size rounded up to whole blocks, so the kernels' reads of a last
partial block stay inside the list, and every list starts on a block boundary. Writers
that add to or remove from a loaded index get their lists back in memory
(:func:`into_memory`): a mapped file is never changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import faiss
import numpy as np

from sst_search.vector_search import one_dim_codes

#: Read flags for an index whose lists live in a lists file: its lists' header is read and
#: the file is mapped here (:func:`attach`), not by FAISS, which would print to stdout
#: while resolving the file's folder.
READ_FLAGS = faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY


def _block_lists(ivf: faiss.IndexIVF) -> faiss.BlockInvertedLists:
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.BlockInvertedLists):
        raise TypeError(f"expected a fast-scan index's block lists, got {type(lists).__name__}")
    return lists


def _layout(lists: faiss.BlockInvertedLists) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(code_size, sizes, capacities, offsets)`` of the lists in the file: a code's share of
    a block, and every list's capacity in whole blocks."""
    code_size = lists.block_size // lists.n_per_block
    sizes = np.array([lists.list_size(i) for i in range(lists.nlist)], np.int64)
    capacities = -(-sizes // lists.n_per_block) * lists.n_per_block
    ends = np.cumsum(capacities * (code_size + 8))
    return code_size, sizes, capacities, ends - capacities * (code_size + 8)


def write(ivf: faiss.IndexIVF, path: Path | str) -> int:
    """Write the index's block lists to ``path`` in the on-disk layout; returns its size."""
    lists = _block_lists(ivf)
    code_size, sizes, capacities, _ = _layout(lists)
    total = 0
    with open(path, "wb") as fh:
        for i in np.flatnonzero(sizes):
            size, capacity = int(sizes[i]), int(capacities[i])
            codes = np.empty(capacity * code_size, np.uint8)
            faiss.memcpy(faiss.swig_ptr(codes), lists.get_codes(int(i)), codes.nbytes)
            ids = np.full(capacity, -1, np.int64)
            faiss.memcpy(faiss.swig_ptr(ids), lists.get_ids(int(i)), size * 8)
            fh.write(codes.data)
            fh.write(ids.data)
            total += codes.nbytes + ids.nbytes
    return total


def _on_disk(ivf: faiss.IndexIVF, path: Path | str, total: int) -> faiss.OnDiskInvertedLists:
    """The header of the lists file at ``path``: sizes and offsets as :func:`write` laid them out."""
    code_size, sizes, capacities, offsets = _layout(_block_lists(ivf))
    on_disk = faiss.OnDiskInvertedLists(ivf.nlist, code_size, str(path))
    on_disk.lists.clear()
    for size, capacity, offset in zip(sizes.tolist(), capacities.tolist(), offsets.tolist(), strict=True):
        entry = faiss.OnDiskOneList()
        entry.size, entry.capacity = size, capacity
        if size:
            entry.offset = offset
        on_disk.lists.push_back(entry)
    on_disk.totsize = total
    on_disk.read_only = True
    return on_disk


@contextlib.contextmanager
def pointing_at(ivf: faiss.IndexIVF, name: str, total: int) -> Iterator[None]:
    """The index, for the time of the block, holds the header of a lists file called ``name``
    (as :func:`write` wrote it) instead of its own lists: what ``faiss.write_index`` then
    writes. Its own lists are back afterwards, unchanged and still its own. Only a writer
    saves an index, right after the write that changed it, and like that change the save
    must not run while another thread searches the same index object."""
    own = _block_lists(ivf)
    on_disk = _on_disk(ivf, name, total)
    ivf.own_invlists = False
    ivf.replace_invlists(on_disk, False)
    try:
        yield
    finally:
        ivf.replace_invlists(own, True)


def attach(ivf: faiss.IndexIVF, path: Path) -> None:
    """Map the lists file at ``path`` under an index read with :data:`READ_FLAGS`."""
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise RuntimeError(f"the index keeps its lists itself ({type(lists).__name__}), not in {path.name}")
    if path.stat().st_size != lists.totsize:
        raise RuntimeError(f"lists file {path.name} is {path.stat().st_size} bytes, the index says {lists.totsize}")
    lists.filename = str(path)
    lists.read_only = True
    lists.do_mmap()


def empty_lists(ivf: faiss.IndexIVF) -> faiss.BlockInvertedLists:
    """Empty in-memory block lists of the index's code layout (owned by the caller)."""
    packer = faiss.downcast_index(ivf).get_CodePacker()
    packer.this.disown()  # the block lists delete it
    return faiss.BlockInvertedLists(ivf.nlist, packer)


def into_memory(ivf: faiss.IndexIVF) -> None:
    """Replace mapped lists by in-memory block lists, for a writer that adds or removes."""
    mapped = faiss.downcast_InvertedLists(ivf.invlists)
    own = empty_lists(ivf)
    for i in range(ivf.nlist):
        size = mapped.list_size(i)
        if not size:
            continue
        blocks = -(-size // own.n_per_block)
        codes = faiss.rev_swig_ptr(mapped.get_codes(i), blocks * own.block_size)
        ids = faiss.rev_swig_ptr(mapped.get_ids(i), size)
        own.resize(i, size)
        faiss.memcpy(own.get_codes(i), faiss.swig_ptr(codes), blocks * own.block_size)
        faiss.memcpy(own.get_ids(i), faiss.swig_ptr(ids), size * 8)
    ivf.replace_invlists(own, True)
    own.this.disown()


def copy_entries(source: faiss.IndexIVF, target: faiss.IndexIVF, keep: Callable[[np.ndarray], np.ndarray]) -> int:
    """Add to ``target``'s block lists the entries of ``source``'s lists (mapped or in
    memory, the same quantizer and codes) whose ids ``keep`` admits, codes copied as they
    are; returns how many. FAISS's own subset copy reads block-packed codes as if they lay
    one after another, so each list's blocks are unpacked and the kept codes appended."""
    packer, block_lists = faiss.downcast_index(source).get_CodePacker(), _block_lists(target)
    added = 0
    for list_no in range(source.nlist):
        size = source.invlists.list_size(list_no)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(source.invlists.get_ids(list_no), size)
        kept = np.flatnonzero(keep(ids))
        if not len(kept):
            continue
        blocks = -(-size // packer.nvec)
        codes = faiss.rev_swig_ptr(source.invlists.get_codes(list_no), blocks * packer.block_size)
        _append(block_lists, packer, list_no, ids[kept], _unpacked(packer, codes, blocks)[kept])
        added += len(kept)
    target.ntotal += added
    return added


#: Vectors :class:`AssignedAdds` holds as codes between filings (384 MB at 768 dimensions).
FILING = 1_000_000


class AssignedAdds:
    """Vectors added to a fast-scan IVF index in the lists given for them (FAISS's
    ``add_core`` takes the lists, but files fast-scan codes as if they were not packed in
    blocks). The codes are made as the vectors come, and packed into their lists' blocks
    ``every`` (:data:`FILING`) vectors at a time: each filing unpacks and packs again every
    touched list's last, partly filled block, and at 12,649 lists a filing per 200,000
    vectors cost a third as much as encoding them. Call :meth:`flush` after the last
    :meth:`add`."""

    def __init__(self, ivf: faiss.IndexIVF, every: int | None = None) -> None:
        self.ivf, self.every = ivf, every or FILING
        self._fast = faiss.downcast_index(ivf)
        self._encoder = one_dim_codes.encoder_for(ivf)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, x: np.ndarray, ids: np.ndarray, lists: np.ndarray) -> None:
        """Encode float32 rows ``x`` with ``ids``, each for the list ``lists`` names."""
        x = np.ascontiguousarray(x, np.float32)
        lists = np.ascontiguousarray(lists, np.int64)
        if self._encoder is not None:
            codes = self._encoder.encode(x)
        else:
            codes = np.empty((len(x), self._fast.code_size), np.uint8)
            self._fast.encode_vectors(len(x), faiss.swig_ptr(x), faiss.swig_ptr(lists), faiss.swig_ptr(codes))
        self._pending.append((np.asarray(ids, np.int64), lists, codes))
        if sum(len(ids) for ids, _, _ in self._pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        """File the codes added since the last filing in their lists."""
        if not self._pending:
            return
        ids, lists, codes = (np.concatenate(parts) for parts in zip(*self._pending, strict=True))
        self._pending.clear()
        packer = self._fast.get_CodePacker()
        block_lists = _block_lists(self.ivf)
        order = np.argsort(lists, kind="stable")
        starts = np.flatnonzero(np.diff(lists[order], prepend=-1))
        for rows in np.split(order, starts[1:]):
            _append(block_lists, packer, int(lists[rows[0]]), ids[rows], codes[rows])
        self.ivf.ntotal += len(ids)


def _unpacked(packer: faiss.CodePacker, codes: np.ndarray, blocks: int) -> np.ndarray:
    """The codes of ``blocks`` packed blocks, one row a vector."""
    flat = np.empty((blocks * packer.nvec, packer.code_size), np.uint8)
    for block in range(blocks):
        packer.unpack_all(faiss.swig_ptr(codes[block * packer.block_size :]),
                          faiss.swig_ptr(flat[block * packer.nvec :]))
    return flat


def _append(lists: faiss.BlockInvertedLists, packer: faiss.CodePacker, list_no: int, ids: np.ndarray,
            codes: np.ndarray) -> None:
    """Append entries (ids, unpacked codes) to one block list: the list's last, partly
    filled block is unpacked and packed again with the new codes after its own."""
    per_block, block_size = packer.nvec, packer.block_size
    size = lists.list_size(list_no)
    first = size // per_block
    lists.resize(list_no, size + len(ids))
    blocks = -(-(size + len(ids)) // per_block)
    packed = faiss.rev_swig_ptr(lists.get_codes(list_no), blocks * block_size)
    head = size - first * per_block
    flat = np.zeros(((blocks - first) * per_block, packer.code_size), np.uint8)
    if head:
        flat[:per_block] = _unpacked(packer, packed[first * block_size :], 1)
    flat[head : head + len(ids)] = codes
    for block in range(blocks - first):
        packer.pack_all(faiss.swig_ptr(flat[block * per_block :]),
                        faiss.swig_ptr(packed[(first + block) * block_size :]))
    faiss.rev_swig_ptr(lists.get_ids(list_no), size + len(ids))[size:] = ids
