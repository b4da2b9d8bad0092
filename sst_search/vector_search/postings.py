"""Filter postings: for each value of a filter field (``group`` by default, see
``index.posting_fields``), which rows of an IVF index's vector table hold it, list by list,
written when a snapshot is published.

A filter passing a share of the collection needs, per search, the share itself, how many
admitted vectors each IVF list holds (the plan and the selector read them), the admitted
rows of the lists probed, and whether a few candidate ids pass. Built from a filter's mask
on the first search under it, these cost a pass over every vector (the mask, then a
histogram of the admitted rows' lists): about 4 ms at a million vectors, 66 ms at ten
million, paid by the first search under every new filter. Postings precompute them per
value, so a search under ``group == X`` reads ``nlist`` counts and the rows of the lists it
probes from mapped files, whatever the collection's size.

Layout, beside the vectors at rest (:mod:`.at_rest`), per index and field::

    <trait>.<field>.codes.npy     (n,) int32: each table row's value (-1: none, or not indexed)
    <trait>.<field>.rows.npy      table rows ordered by value, then IVF list, then row
    <trait>.<field>.offsets.npy   (values, nlist + 1) int64: value v's rows of list l are
                                  rows[offsets[v, l]:offsets[v, l + 1]]
    <trait>.<field>.json          manifest: generation, field, values, nlist, the FAISS file's
                                  sha256 the lists were read from, bytes and sha256 of each file

Written like the vectors at rest (temporary name, fsync, rename, manifest last, inside the
staging copy verified before the pointer moves). A reader uses them only when the manifest's
generation is the catalog's and its FAISS sha256 is that of the index file the reader
loaded: an index rebuilt in memory has other lists, and its searches build masks as before.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import faiss
import numpy as np

from sst_search.vector_search.at_rest import IndexKey, save_array
from sst_search.vector_search.indexes import atomic_write, ivf_of, read_json, write_json
from sst_search.vector_search.vector_table import ListCounts, ListLayout
from sst_search.weights import sha256_file

ARRAYS = ("codes", "rows", "offsets")
LAYOUT_ARRAYS = ("row_lists", "rows", "starts")


def posting_paths(root: Path, key: IndexKey, field: str) -> dict[str, Path]:
    """The files of one field's postings (``codes``, ``rows``, ``offsets``, ``manifest``)."""
    stem = root / quote(key[0], safe="") / f"{quote(key[1], safe='')}.{quote(field, safe='')}"
    return {**{name: stem.with_name(f"{stem.name}.{name}.npy") for name in ARRAYS},
            "manifest": stem.with_name(stem.name + ".json")}


def build(layout: ListLayout, codes: np.ndarray, n_values: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, offsets)`` of the postings of ``codes`` (one per table row, -1: none) over
    the index's lists as ``layout`` has them."""
    nlist = len(layout.starts) - 1
    rows, lists = layout.rows.astype(np.int64), np.repeat(np.arange(nlist, dtype=np.int32), layout.sizes)
    row_codes = codes[rows]
    keep = row_codes >= 0
    rows, lists, row_codes = rows[keep], lists[keep], row_codes[keep]
    order = np.lexsort((rows, lists, row_codes))
    rows = rows[order].astype(np.int32 if len(codes) < 2**31 else np.int64)
    slot = row_codes[order].astype(np.int64) * nlist + lists[order]
    bounds = np.searchsorted(slot, np.arange(n_values * nlist + 1, dtype=np.int64))
    offsets = np.empty((n_values, nlist + 1), np.int64)
    offsets[:, :nlist] = bounds[:-1].reshape(n_values, nlist)
    offsets[:, nlist] = bounds[nlist::nlist]
    return rows, offsets


def write(root: Path, key: IndexKey, field: str, generation: int, index_sha256: str, values: list[str],
          codes: np.ndarray, rows: np.ndarray, offsets: np.ndarray) -> None:
    paths = posting_paths(root, key, field)
    arrays = {"codes": codes.astype(np.int32), "rows": rows, "offsets": offsets}
    for name, array in arrays.items():
        atomic_write(paths[name], lambda tmp, array=array: save_array(tmp, array))
    manifest = {"generation": generation, "field": field, "values": values, "nlist": int(offsets.shape[1] - 1),
                "index_sha256": index_sha256,
                **{f"{name}_bytes": paths[name].stat().st_size for name in ARRAYS},
                **{f"{name}_sha256": sha256_file(paths[name]) for name in ARRAYS}}
    write_json(paths["manifest"], manifest)


def read_manifest(root: Path, key: IndexKey, field: str) -> dict | None:
    return read_json(posting_paths(root, key, field)["manifest"])


def unusable(root: Path, key: IndexKey, field: str, manifest: dict, generation: int, index_sha256: str | None
             ) -> str | None:
    """Why the files cannot be trusted without reading them, or None."""
    if manifest.get("generation") != generation:
        return f"postings are stale (generation {manifest.get('generation')}, catalog {generation})"
    if index_sha256 is None or manifest.get("index_sha256") != index_sha256:
        return "postings were read from another FAISS file"
    for name, path in posting_paths(root, key, field).items():
        if name != "manifest" and (not path.is_file() or path.stat().st_size != manifest.get(f"{name}_bytes")):
            return f"{path.name} is missing or not the size its manifest says"
    return None


def layout_paths(root: Path, key: IndexKey) -> dict[str, Path]:
    """The files of an index's :class:`ListLayout` (``row_lists``, ``rows``, ``starts``, ``manifest``)."""
    stem = root / quote(key[0], safe="") / "layouts" / quote(key[1], safe="")  # apart from the postings' names
    return {**{name: stem.with_name(f"{stem.name}.{name}.npy") for name in LAYOUT_ARRAYS},
            "manifest": stem.with_name(stem.name + ".json")}


def write_layout(root: Path, key: IndexKey, generation: int, index_sha256: str, layout: ListLayout) -> None:
    """Where each table row sits in the index's lists, written with the snapshot: a filter
    answered by a mask (a locality, a date range) counts its vectors per list from it, which
    read off the index takes a pass over every list on the first such search (0.3 s at a
    million vectors, seconds at ten million)."""
    paths = layout_paths(root, key)
    for name in LAYOUT_ARRAYS:
        atomic_write(paths[name], lambda tmp, name=name: save_array(tmp, getattr(layout, name)))
    manifest = {"generation": generation, "index_sha256": index_sha256,
                **{f"{name}_bytes": paths[name].stat().st_size for name in LAYOUT_ARRAYS},
                **{f"{name}_sha256": sha256_file(paths[name]) for name in LAYOUT_ARRAYS}}
    write_json(paths["manifest"], manifest)


def layout_unusable(root: Path, key: IndexKey, manifest: dict, generation: int, index_sha256: str | None) -> str | None:
    """Why the layout's files cannot be trusted without reading them, or None."""
    if manifest.get("generation") != generation:
        return f"list layout is stale (generation {manifest.get('generation')}, catalog {generation})"
    if index_sha256 is None or manifest.get("index_sha256") != index_sha256:
        return "list layout was read from another FAISS file"
    for name in LAYOUT_ARRAYS:
        path = layout_paths(root, key)[name]
        if not path.is_file() or path.stat().st_size != manifest.get(f"{name}_bytes"):
            return f"{path.name} is missing or not the size its manifest says"
    return None


def open_layout(root: Path, key: IndexKey, generation: int, index_sha256: str | None, index: faiss.Index,
                rows: int) -> ListLayout | None:
    """The layout written with the snapshot, mapped read-only, if it fits ``index`` (loaded
    from the file of ``index_sha256``) over a table of ``rows`` rows; else None."""
    paths = layout_paths(root, key)
    manifest = read_json(paths["manifest"])
    if manifest is None or layout_unusable(root, key, manifest, generation, index_sha256) is not None:
        return None
    try:
        arrays = {name: np.load(paths[name], mmap_mode="r") for name in LAYOUT_ARRAYS}
    except (OSError, ValueError):
        return None
    if (arrays["row_lists"].shape != (rows,) or arrays["starts"].shape != (ivf_of(index).nlist + 1,)
            or arrays["rows"].shape[0] != int(arrays["starts"][-1])):
        return None
    return ListLayout(**arrays)


class Postings:
    """One field's postings of one index, mapped read-only."""

    def __init__(self, manifest: dict, codes: np.ndarray, rows: np.ndarray, offsets: np.ndarray,
                 index: faiss.Index) -> None:
        self.values = {v: i for i, v in enumerate(manifest["values"])}
        self.codes, self.rows, self.offsets = codes, rows, offsets
        ivf = ivf_of(index)
        self.sizes = np.fromiter((ivf.invlists.list_size(i) for i in range(ivf.nlist)), np.int64, ivf.nlist)
        self._invlists = ivf.invlists

    @classmethod
    def open(cls, root: Path, key: IndexKey, field: str, generation: int, index_sha256: str | None,
             index: faiss.Index) -> Postings | None:
        manifest = read_manifest(root, key, field)
        if manifest is None or unusable(root, key, field, manifest, generation, index_sha256) is not None:
            return None
        paths = posting_paths(root, key, field)
        try:
            arrays = {name: np.load(paths[name], mmap_mode="r") for name in ARRAYS}
        except (OSError, ValueError):
            return None
        if arrays["offsets"].shape != (len(manifest["values"]), ivf_of(index).nlist + 1):
            return None
        return cls(manifest, arrays["codes"], arrays["rows"], arrays["offsets"], index)

    def lists_of(self, values: list[str]) -> PostedLists:
        """The admitted rows of a filter passing any of ``values``."""
        codes = sorted({self.values[v] for v in values if v in self.values})
        return PostedLists(self, np.asarray(codes, np.int64))

    def list_ids(self, lists: np.ndarray) -> np.ndarray:
        """Every id the index holds in ``lists``."""
        parts = [faiss.rev_swig_ptr(self._invlists.get_ids(int(i)), int(self.sizes[i])).copy()
                 for i in lists if self.sizes[i]]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The positions ``starts[i]..ends[i]`` of every range, concatenated, without a Python loop."""
    lengths = ends - starts
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    if not len(lengths):
        return np.zeros(0, np.int64)
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))


class PostedLists(ListCounts):
    """:class:`~sst_search.vector_search.vector_table.ListCounts` read off postings: ``nlist``
    counts per value summed, and the rows of a few lists sliced out; nothing the size of the
    collection is touched."""

    def __init__(self, postings: Postings, codes: np.ndarray) -> None:
        self.postings, self.value_codes = postings, codes
        starts = np.asarray(postings.offsets[codes], np.int64) if len(codes) else np.zeros((0, len(postings.sizes) + 1),
                                                                                             np.int64)
        self._starts = starts
        super().__init__(postings.sizes, np.diff(starts, axis=1).sum(axis=0) if len(codes) else
                         np.zeros(len(postings.sizes), np.int64))

    def rows_in(self, lists: np.ndarray) -> np.ndarray:
        lists = np.asarray(lists, np.int64)
        ranges = _ranges(self._starts[:, lists].ravel(), self._starts[:, lists + 1].ravel())
        return np.asarray(self.postings.rows[ranges], np.int64)

    def rows(self) -> np.ndarray:
        parts = [self.postings.rows[s[0]:s[-1]] for s in self._starts]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def others_in(self, lists: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
        """The ids of ``lists`` the filter does not admit: read off the other values' postings
        when every id of those lists has a value (no sort: at 2M x 768 an own-group selector's
        set difference of the lists' ids took 4 ms a search); else the lists' ids less the
        admitted ones."""
        lists = np.asarray(lists, np.int64)
        offsets, listed = self.postings.offsets, int(self.postings.sizes[lists].sum())
        if len(offsets) * len(lists) <= 4 * listed:  # few values: cheap to read
            starts, ends = np.asarray(offsets[:, lists]), np.asarray(offsets[:, lists + 1])
            if int((ends - starts).sum()) == listed:  # no id without a value
                others = np.ones(len(offsets), bool)
                others[self.value_codes] = False
                return table_ids[self.postings.rows[_ranges(starts[others].ravel(), ends[others].ravel())]]
        return np.setdiff1d(self.postings.list_ids(lists), table_ids[self.rows_in(lists)], assume_unique=True)

    def passes_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.isin(np.asarray(self.postings.codes[rows]), self.value_codes)
