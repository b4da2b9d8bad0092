"""Filter postings: for each filter field of ``index.posting_fields`` (group, locality, event
date ...), which rows of an IVF index's vector table hold which values, list by list,
written when a snapshot is published.

A filter passing a share of the collection needs, per search, the share itself, how many
admitted vectors each IVF list holds (the plan and the selector read them), the admitted
rows of the lists probed, and whether a few candidate ids pass. Built from a filter's mask
on the first search under it, these cost a pass over every vector (the mask, then a
histogram of the admitted rows' lists): about 4 ms at a million vectors, 40-80 ms at ten
million, paid by the first search under every new filter. Postings precompute them for any
condition on one field: the condition is evaluated on the field's distinct values (a few
thousand, where the rows are millions), and the values are posted in ranges of neighbouring
values (one value each up to ``index.posting_max_values`` of them, else that many ranges of
about equal size). A range all of whose values pass is read off its counts per list; only
the rows of a range that some of its values pass are checked one by one. A group, a
locality, a date range then costs ``nlist`` counts per range boundary plus a range's rows at
each end, whatever the collection's size.

Layout, beside the vectors at rest (:mod:`.at_rest`), per index and field::

    <trait>.<field>.codes.npy     (n,) int32: each table row's value (-1: none, or not indexed)
    <trait>.<field>.values.arrow  the distinct values, ordered (as numbers when all are), with
                                  each one's number (DuckDB's TRY_CAST, for numeric conditions)
                                  and range
    <trait>.<field>.rows.npy      table rows ordered by IVF list, then range, then row
    <trait>.<field>.counts.npy    (ranges + 1, nlist) int32: rows of list l in ranges below r;
                                  list l's rows of ranges r0..r1 are
                                  rows[start[l] + counts[r0, l]:start[l] + counts[r1, l]]
    <trait>.<field>.json          manifest: format, generation, field, ranges, nlist, the FAISS
                                  file's sha256 the lists were read from, bytes and sha256 of each file

Written like the vectors at rest (temporary name, fsync, rename, manifest last, inside the
staging copy verified before the pointer moves). A reader uses them only when the manifest's
format is this one, its generation is the catalog's and its FAISS sha256 is that of the index
file the reader loaded: an index rebuilt in memory has other lists, and its searches build
masks as before (so do a snapshot's postings of an older format, until it is published again).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sst_search.kept import Kept
from sst_search.vector_search.at_rest import IndexKey, save_array
from sst_search.vector_search.indexes import atomic_write, ivf_of, read_json, write_json
from sst_search.vector_search.vector_table import ListCounts, ListLayout, spans
from sst_search.weights import sha256_file

#: The postings' format; a manifest of another (an older publish's) is not read.
FORMAT = 2
ARRAYS = ("codes", "rows", "counts")
FILES = (*ARRAYS, "values")
LAYOUT_ARRAYS = ("row_lists", "rows", "starts")
#: Conditions whose admitted lists a field's postings keep (``nlist`` counts each).
ADMITTED_KEPT = 64


def posting_paths(root: Path, key: IndexKey, field: str) -> dict[str, Path]:
    """The files of one field's postings (``codes``, ``values``, ``rows``, ``counts``, ``manifest``)."""
    stem = root / quote(key[0], safe="") / f"{quote(key[1], safe='')}.{quote(field, safe='')}"
    return {**{name: stem.with_name(f"{stem.name}.{name}.npy") for name in ARRAYS},
            "values": stem.with_name(stem.name + ".values.arrow"), "manifest": stem.with_name(stem.name + ".json")}


def read_by_range(path: Path) -> bool:
    """Whether ``path`` holds a field's counts per range and list, of which a condition reads
    only its range boundaries' rows (``nlist`` counts each): a reader maps those in as it
    reads them, where a field's codes and rows are read all over (``ranges x nlist x 4``
    bytes a field: 7.3 MB for 1,024 ranges of 1,789 lists at 200,000 vectors, mostly never
    read)."""
    return path.name.endswith(".counts.npy")


def ordered_values(values: pa.Array, numbers: pa.Array, codes: np.ndarray) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """``(values, numbers, codes)`` with the distinct values sorted (by number when every one
    is a number, else as text, which orders ISO dates) and the codes renumbered: a range
    condition then passes a run of neighbouring values."""
    if len(values) and numbers.null_count == 0:
        order = np.argsort(numbers.to_numpy(zero_copy_only=False), kind="stable")
    else:
        order = np.asarray(pc.sort_indices(values), np.int64)
    renumber = np.empty(len(order) + 1, np.int32)
    renumber[order] = np.arange(len(order), dtype=np.int32)
    renumber[-1] = -1  # code -1 (no value) stays
    return values.take(pa.array(order)), numbers.take(pa.array(order)), renumber[codes]


def value_ranges(codes: np.ndarray, n_values: int, max_ranges: int) -> np.ndarray:
    """The range of each (ordered) value: its own up to ``max_ranges`` values, else runs of
    neighbouring values holding about equal numbers of rows (a value with more rows than a
    range's share is a range of its own)."""
    if n_values <= max_ranges:
        return np.arange(n_values, dtype=np.int32)
    rows = np.bincount(codes[codes >= 0], minlength=n_values).astype(np.int64)
    before = np.cumsum(rows) - rows
    share = before * max_ranges // max(1, int(rows.sum()))
    return np.unique(share, return_inverse=True)[1].astype(np.int32)


def build(layout: ListLayout, codes: np.ndarray, ranges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, counts)`` of the postings of ``codes`` (one per table row, -1: none), whose
    values lie in ``ranges``, over the index's lists as ``layout`` has them."""
    nlist, n_ranges = len(layout.starts) - 1, int(ranges.max()) + 1 if len(ranges) else 0
    rows, lists = layout.rows.astype(np.int64), np.repeat(np.arange(nlist, dtype=np.int64), layout.sizes)
    row_codes = codes[rows]
    keep = row_codes >= 0
    cell = lists[keep] * n_ranges + ranges[row_codes[keep]]
    rows = rows[keep][np.argsort(cell, kind="stable")].astype(np.int32 if len(codes) < 2**31 else np.int64)
    per_cell = np.bincount(cell, minlength=nlist * n_ranges).reshape(nlist, n_ranges)
    counts = np.zeros((n_ranges + 1, nlist), np.int32)
    np.cumsum(per_cell.T, axis=0, out=counts[1:])
    return rows, counts


def write(root: Path, key: IndexKey, field: str, generation: int, index_sha256: str, values: pa.Array,
          numbers: pa.Array, ranges: np.ndarray, codes: np.ndarray, rows: np.ndarray, counts: np.ndarray) -> None:
    """The files of one field's postings, the manifest last."""
    paths = posting_paths(root, key, field)
    arrays = {"codes": codes.astype(np.int32), "rows": rows, "counts": counts}
    for name, array in arrays.items():
        atomic_write(paths[name], lambda tmp, array=array: save_array(tmp, array))
    dictionary = pa.table({"value": values.cast(pa.large_string()), "number": numbers.cast(pa.float64()),
                           "range": pa.array(ranges, pa.int32())})
    atomic_write(paths["values"], lambda tmp: _write_table(tmp, dictionary))
    manifest = {"format": FORMAT, "generation": generation, "field": field, "values": len(values),
                "ranges": int(counts.shape[0] - 1), "nlist": int(counts.shape[1]), "index_sha256": index_sha256,
                **{f"{name}_bytes": paths[name].stat().st_size for name in FILES},
                **{f"{name}_sha256": sha256_file(paths[name]) for name in FILES}}
    write_json(paths["manifest"], manifest)


def _write_table(path: str, table: pa.Table) -> None:
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_dictionary(path: Path) -> pa.Table:
    """The values file, mapped (its text is not copied)."""
    with pa.ipc.open_file(pa.memory_map(str(path))) as reader:
        return reader.read_all()


def read_manifest(root: Path, key: IndexKey, field: str) -> dict | None:
    return read_json(posting_paths(root, key, field)["manifest"])


def fields_with_postings(root: Path) -> set[str]:
    """The fields some index at ``root`` has postings of in this format: a publish posts
    fields of few values beyond those a reader's configuration lists, which the reader
    learns from the manifests (a few dozen small files)."""
    found = set()
    for path in root.glob("*/*.json"):
        manifest = read_json(path)
        if manifest is not None and not older_format(manifest) and isinstance(manifest.get("field"), str):
            found.add(manifest["field"])
    return found


def older_format(manifest: dict) -> bool:
    """Whether the manifest is an older publish's postings: sound, but not read (the
    snapshot's searches build masks until it is published again)."""
    return manifest.get("format") != FORMAT


def unusable(root: Path, key: IndexKey, field: str, manifest: dict, generation: int, index_sha256: str | None
             ) -> str | None:
    """Why the files cannot be trusted without reading them, or None."""
    if older_format(manifest):
        return f"postings are of an older format ({manifest.get('format', 1)}, now {FORMAT})"
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
    """One field's postings of one index, mapped read-only. :meth:`admitted` hands out the
    :class:`PostedLists` of a condition, kept per condition (a filter paged through or
    repeated by many users then costs nothing)."""

    def __init__(self, manifest: dict, codes: np.ndarray, rows: np.ndarray, counts: np.ndarray,
                 dictionary: pa.Table, index: faiss.Index) -> None:
        self.manifest = manifest
        self.codes, self.rows, self.counts = codes, rows, counts
        #: The distinct values, ordered, and each one's number (null where it is not one).
        self.values = dictionary.column("value").combine_chunks()
        self.numbers = dictionary.column("number").combine_chunks()
        self.value_ranges = dictionary.column("range").to_numpy()
        self.values_per_range = np.bincount(self.value_ranges, minlength=counts.shape[0] - 1)
        ivf = ivf_of(index)
        self.sizes = np.fromiter((ivf.invlists.list_size(i) for i in range(ivf.nlist)), np.int64, ivf.nlist)
        valued = np.asarray(counts[-1], np.int64)
        #: Where each list's rows begin in :attr:`rows`, and whether every row of it has a value.
        self.starts = np.concatenate([[0], np.cumsum(valued)])
        self.all_valued = valued == self.sizes
        self._invlists = ivf.invlists
        self._admitted: Kept[ListCounts] = Kept(ADMITTED_KEPT)

    @classmethod
    def open(cls, root: Path, key: IndexKey, field: str, generation: int, index_sha256: str | None,
             index: faiss.Index, positions: np.ndarray | None = None) -> Postings | None:
        """The postings written with the snapshot, mapped read-only, if they fit ``index``
        (loaded from the file of ``index_sha256``); else None. With ``positions`` (ascending
        rows of the index's vector table), those rows' postings alone, renumbered, for
        ``index`` holding just their entries of the stored index's lists: a shard's
        (:mod:`sst_search.sharding`). That costs a pass over the posted rows when the shard
        starts, so that its searches read their filters off postings, as the whole store's do,
        and build no mask over the catalog's specimens."""
        manifest = read_manifest(root, key, field)
        if manifest is None or unusable(root, key, field, manifest, generation, index_sha256) is not None:
            return None
        paths = posting_paths(root, key, field)
        try:
            arrays = {name: np.load(paths[name], mmap_mode="r") for name in ARRAYS}
            dictionary = read_dictionary(paths["values"])
        except (OSError, ValueError, pa.ArrowException):
            return None
        nlist = ivf_of(index).nlist
        if (arrays["counts"].shape != (manifest.get("ranges", -1) + 1, nlist) or len(dictionary) != manifest["values"]
                or arrays["rows"].shape[0] != int(arrays["counts"][-1].sum())):
            return None
        if positions is not None:
            arrays = _subset(arrays, np.asarray(positions, np.int64))
        return cls(manifest, arrays["codes"], arrays["rows"], arrays["counts"], dictionary, index)

    def admitted(self, condition: Hashable, hit: Callable[[pa.Array, pa.Array], np.ndarray]) -> PostedLists:
        """The admitted rows of ``condition``, which passes the values ``hit(values, numbers)``
        says (a boolean per distinct value)."""
        return self.kept(condition, lambda: PostedLists(self, np.asarray(hit(self.values, self.numbers), bool)))

    def kept(self, key: Hashable, make: Callable[[], ListCounts]) -> ListCounts:
        """What ``make`` gives, kept under ``key`` (the last :data:`ADMITTED_KEPT`)."""
        return self._admitted.get(key, make)

    def list_ids(self, lists: np.ndarray) -> np.ndarray:
        """Every id the index holds in ``lists``."""
        parts = [faiss.rev_swig_ptr(self._invlists.get_ids(int(i)), int(self.sizes[i])).copy()
                 for i in lists if self.sizes[i]]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def segments(self, lists: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Positions in :attr:`rows` of ranges ``low[i]..high[i]`` (exclusive) of each of ``lists``."""
        base = self.starts[lists]
        return spans((base + np.asarray(self.counts[np.ix_(low, lists)], np.int64)).ravel(),
                     (base + np.asarray(self.counts[np.ix_(high, lists)], np.int64)).ravel())


def _subset(arrays: dict[str, np.ndarray], positions: np.ndarray) -> dict[str, np.ndarray]:
    """``codes``, ``rows`` and ``counts`` over the table rows ``positions`` (ascending) alone,
    renumbered 0.. in their order: the posted rows kept in the order they lie (by list, then
    range, then row) and counted again per list and range."""
    codes, rows, counts = arrays["codes"], np.asarray(arrays["rows"]), np.asarray(arrays["counts"], np.int64)
    n_ranges, nlist = counts.shape[0] - 1, counts.shape[1]
    renumber = np.full(len(codes), -1, np.int64)
    renumber[positions] = np.arange(len(positions))
    kept = renumber[rows]
    keep = kept >= 0
    cells = np.repeat(np.arange(nlist * n_ranges, dtype=np.int64), np.diff(counts, axis=0).T.ravel())[keep]
    per_cell = np.bincount(cells, minlength=nlist * n_ranges).reshape(nlist, n_ranges)
    subset_counts = np.zeros((n_ranges + 1, nlist), np.int32)
    np.cumsum(per_cell.T, axis=0, out=subset_counts[1:])
    return {"codes": np.asarray(codes[positions], np.int32), "rows": kept[keep].astype(rows.dtype),
            "counts": subset_counts}


def _runs(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, past)`` of each run of True in ``flags``."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


class PostedLists(ListCounts):
    """:class:`~sst_search.vector_search.vector_table.ListCounts` of a condition read off
    postings: the ranges all of whose values pass are counted per list from the range
    boundaries of each run of them; the rows of the ranges only some of whose values pass
    are checked one by one. Nothing the size of the collection is touched unless the
    condition passes values scattered over most ranges."""

    def __init__(self, postings: Postings, hit: np.ndarray) -> None:
        self.postings, self._rows = postings, None
        self._hit = np.append(hit, False)  # code -1 (no value) never passes
        passing = np.bincount(postings.value_ranges[hit], minlength=len(postings.values_per_range))
        full = (passing == postings.values_per_range) & (passing > 0)
        self._first, self._past = _runs(full)
        self._partial = np.flatnonzero((passing > 0) & ~full)
        self._none_first, self._none_past = _runs(passing == 0)  # ranges none of whose values pass
        held = np.zeros(len(postings.sizes), np.int64)
        for first, past in zip(self._first, self._past):
            held += postings.counts[past]
            held -= postings.counts[first]
        if len(self._partial):
            held += np.bincount(self._segment_rows(self._partial, self._partial + 1)[1], minlength=len(held))
        super().__init__(postings.sizes, held)

    def _segment_rows(self, low: np.ndarray, high: np.ndarray, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, their lists)`` of ranges ``low[i]..high[i]`` in every list, the rows that
        fail the condition left out when ``check``."""
        posted, every = self.postings, np.arange(len(self.postings.sizes), dtype=np.int64)
        spans = np.asarray(posted.counts[high], np.int64) - np.asarray(posted.counts[low], np.int64)
        rows = np.asarray(posted.rows[posted.segments(every, low, high)], np.int64)
        lists = np.repeat(np.tile(every, len(low)), spans.ravel())
        if not check:
            return rows, lists
        keep = self.passes_rows(rows)
        return rows[keep], lists[keep]

    def listed(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, their lists)`` of every admitted vector."""
        whole = self._segment_rows(self._first, self._past, check=False)
        some = self._segment_rows(self._partial, self._partial + 1)
        return np.concatenate([whole[0], some[0]]), np.concatenate([whole[1], some[1]])

    def rows_in(self, lists: np.ndarray) -> np.ndarray:
        lists = np.asarray(lists, np.int64)
        rows = self.postings.rows
        whole = np.asarray(rows[self.postings.segments(lists, self._first, self._past)], np.int64)
        if not len(self._partial):
            return whole
        some = np.asarray(rows[self.postings.segments(lists, self._partial, self._partial + 1)], np.int64)
        return np.concatenate([whole, some[self.passes_rows(some)]])

    def rows(self) -> np.ndarray:
        """Listed once per condition: an exact scan under it then touches only its rows."""
        if self._rows is None:
            self._rows = self.rows_in(np.arange(len(self.postings.sizes)))
        return self._rows

    def others_in(self, lists: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
        """The ids of ``lists`` the filter does not admit, when every row of those lists has a
        value: the rows of the ranges it passes none of, read as they lie, and those of the
        ranges it passes in part that fail it (no sort: at 2M x 768 an own-group selector's
        set difference of the lists' ids took 4 ms a search; no value looked up for a range
        decided whole); else the lists' ids less the admitted ones."""
        lists = np.asarray(lists, np.int64)
        posted = self.postings
        if not posted.all_valued[lists].all():
            return np.setdiff1d(posted.list_ids(lists), table_ids[self.rows_in(lists)], assume_unique=True)
        rows = np.asarray(posted.rows[posted.segments(lists, self._none_first, self._none_past)], np.int64)
        if len(self._partial):
            some = np.asarray(posted.rows[posted.segments(lists, self._partial, self._partial + 1)], np.int64)
            rows = np.concatenate([rows, some[~self.passes_rows(some)]])
        return table_ids[rows]

    def passes_rows(self, rows: np.ndarray) -> np.ndarray:
        return self._hit[self.postings.codes[rows]]


class RowCheck(Protocol):
    """A condition asked of table rows one by one, with no postings of its own."""

    def passes_rows(self, rows: np.ndarray) -> np.ndarray: ...


class JointLists(ListCounts):
    """:class:`~sst_search.vector_search.vector_table.ListCounts` of several conditions at once
    (``locality contains ridge`` and ``eventDate >= 2020``), at least one of them posted: the
    admitted vectors of the posted one that admits fewest, each checked against the others
    (``checks``: conditions on fields without postings, asked of those rows alone). A
    conjunction costs a pass over its most selective posted condition's vectors, never over
    the collection's, and is kept like a single condition (:meth:`Postings.kept`)."""

    def __init__(self, parts: list[PostedLists], checks: Sequence[RowCheck] = ()) -> None:
        parts = sorted(parts, key=len)
        self._driver, self._others = parts[0], [*parts[1:], *checks]
        rows, lists = self._driver.listed()
        keep = self._others_pass(rows)
        self._rows, nlist = np.sort(rows[keep]), len(self._driver.sizes)
        super().__init__(self._driver.sizes, np.bincount(lists[keep], minlength=nlist).astype(np.int64))

    def _others_pass(self, rows: np.ndarray) -> np.ndarray:
        keep = np.ones(len(rows), bool)
        for other in self._others:
            keep &= other.passes_rows(rows)
        return keep

    def rows_in(self, lists: np.ndarray) -> np.ndarray:
        rows = self._driver.rows_in(lists)
        return rows[self._others_pass(rows)]

    def rows(self) -> np.ndarray:
        return self._rows

    def others_in(self, lists: np.ndarray, table_ids: np.ndarray) -> np.ndarray:
        lists = np.asarray(lists, np.int64)
        return np.setdiff1d(self._driver.postings.list_ids(lists), table_ids[self.rows_in(lists)], assume_unique=True)

    def passes_rows(self, rows: np.ndarray) -> np.ndarray:
        return self._driver.passes_rows(rows) & self._others_pass(rows)
