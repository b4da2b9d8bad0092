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
    """Add to ``target``'s empty block lists the entries of ``source``'s lists (mapped or in
    memory, the same quantizer and codes) whose ids ``keep`` admits, codes copied as they
    are; returns how many. FAISS's own subset copy reads block-packed codes as if they lay
    one after another, so each list's blocks are unpacked, the kept codes taken out and
    packed again here."""
    packer = faiss.downcast_index(source).get_CodePacker()
    code_size, block_size, per_block = packer.code_size, packer.block_size, packer.nvec
    added = 0
    for list_no in range(source.nlist):
        size = source.invlists.list_size(list_no)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(source.invlists.get_ids(list_no), size)
        kept = np.flatnonzero(keep(ids))
        if not len(kept):
            continue
        blocks = -(-size // per_block)
        codes = faiss.rev_swig_ptr(source.invlists.get_codes(list_no), blocks * block_size)
        flat = np.empty((blocks * per_block, code_size), np.uint8)
        for block in range(blocks):
            packer.unpack_all(faiss.swig_ptr(codes[block * block_size :]), faiss.swig_ptr(flat[block * per_block :]))
        chosen = np.zeros((-(-len(kept) // per_block) * per_block, code_size), np.uint8)
        chosen[: len(kept)] = flat[kept]
        packed = np.empty(len(chosen) * code_size, np.uint8)
        for block in range(len(chosen) // per_block):
            packer.pack_all(faiss.swig_ptr(chosen[block * per_block :]), faiss.swig_ptr(packed[block * block_size :]))
        kept_ids = np.ascontiguousarray(ids[kept])  # held here: swig_ptr keeps no reference to the array
        target.invlists.add_entries(list_no, len(kept), faiss.swig_ptr(kept_ids), faiss.swig_ptr(packed))
        added += len(kept)
    target.ntotal += added
    return added
