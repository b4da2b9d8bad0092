"""A read-only snapshot's filterable fields, and the two ways a filter admits ids.

A search with a filter asks *which of these ids pass?* (a selectivity sample, a page of
candidates) and *which ids pass at all?*. Answered in SQL, each costs a scan of the catalog
per query, more than the vector search itself at a million specimens. A snapshot never
changes, so :class:`SnapshotColumns` loads each field a filter needs once (dictionary-encoded
text, numbers per row) and :func:`~sst_search.store.filters.compile_mask` evaluates the same
resolved conditions as the SQL compiler against them; :class:`MaskAdmission` answers both
questions from the resulting mask (what :class:`~sst_search.store.snapshot_catalog.SnapshotCatalog`
hands a search). A live catalog changes under it, so :class:`~sst_search.store.catalog.Catalog`
hands out :class:`SqlAdmission`, which asks SQL each time.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sst_search.kept import Kept
from sst_search.store.filters import ColumnValues, Condition, Filter, condition_mask
from sst_search.vector_search.postings import JointLists
from sst_search.vector_search.vector_table import ListCounts, sorted_rows

#: Condition masks a snapshot keeps (one byte per specimen each).
MASKS_KEPT = 64
#: Masks a snapshot keeps over the rows of an index that holds some of its specimens.
TABLE_MASKS_KEPT = 16
#: What a search joins to each hit from ``specimens`` and ``trait_masks`` (read for the hits alone).
LISTING_COLUMNS = "specimen_id, path, group_name, status, metadata"
MASK_COLUMNS = ("specimen_id, trait_id, trait_name, rle, area, bbox_x0, bbox_y0, bbox_x1, bbox_y1, quality, source, "
                "object_score, predicted_iou")

if TYPE_CHECKING:
    from sst_search.store.catalog import Catalog
    from sst_search.store.published_columns import PublishedColumns
    from sst_search.vector_search.postings import Postings


class SnapshotColumns:
    """Specimen ids (ascending) and, loaded on first use, the values of each filtered field."""

    def __init__(self, catalog: Catalog, published: PublishedColumns | None = None) -> None:
        self._catalog = catalog
        self._published = published
        self._lock = threading.Lock()
        self._columns: dict[tuple[str, str, str | None], ColumnValues] = {}
        self._masks: Kept[np.ndarray] = Kept(MASKS_KEPT)
        self._shares: Kept[tuple[np.ndarray, float]] = Kept(MASKS_KEPT)
        self._tables: dict[int, tuple[np.ndarray, slice | np.ndarray | None]] = {}
        self._table_masks: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        ids = published.ids() if published is not None else None
        self.ids = ids if ids is not None else catalog.con.execute(
            "SELECT specimen_id FROM specimens ORDER BY 1").fetchnumpy()["specimen_id"].astype(np.int64)

    def column(self, condition: Condition) -> ColumnValues:
        key = (condition.source, condition.column, condition.trait)
        with self._lock:  # threads of the app share the snapshot: load each field once
            if key not in self._columns:
                self._columns[key] = self._load(condition)
            return self._columns[key]

    def condition_mask(self, condition: Condition) -> np.ndarray:
        """Which specimens pass ``condition``, remembered for the snapshot's lifetime (the last
        :data:`MASKS_KEPT`): every search repeats ``status == 'indexed'``, and people page
        and re-query under the same filter, which then costs nothing instead of a pass over
        every specimen."""
        return self._remembered(_mask_key([condition]), lambda: condition_mask(condition, self.column(condition),
                                                                              len(self.ids)))

    def all_of(self, conditions: Sequence[Condition]) -> np.ndarray:
        """Which specimens pass every one of ``conditions``, remembered like each condition's
        mask: a filter then yields the same array search after search, and what a search
        derives from it (its rows per IVF list, a FAISS selector) is kept with it."""
        if len(conditions) == 1:
            return self.condition_mask(conditions[0])

        def conjunction() -> np.ndarray:
            mask = self.condition_mask(conditions[0]).copy()
            for condition in conditions[1:]:
                mask &= self.condition_mask(condition)
            return mask

        return self._remembered(_mask_key(conditions), conjunction)

    def remembered_share(self, key: Hashable, population: np.ndarray, estimate: Callable[[], float]) -> float:
        """``estimate()`` kept under ``key`` for the index whose ids are ``population`` (the
        array itself: an index's id array lives as long as its generation), the last
        :data:`MASKS_KEPT`."""
        known = self._shares.get((key, id(population)), lambda: (population, estimate()))
        return known[1] if known[0] is population else estimate()

    @property
    def masks_kept(self) -> int:
        """How many condition and filter masks the snapshot keeps (one byte per specimen each)."""
        return len(self._masks)

    def known_mask(self, conditions: Sequence[Condition]) -> np.ndarray | None:
        """:meth:`all_of` when a search built it already, else None (nothing is built)."""
        return self._masks.known(_mask_key(conditions))

    def _remembered(self, key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
        def shared() -> np.ndarray:
            mask = compute()
            mask.flags.writeable = False  # shared by every search that repeats the filter
            return mask

        return self._masks.get(key, shared)

    def table_rows(self, ids: np.ndarray) -> slice | np.ndarray | None:
        """Where the ids of an index (``ids``, ascending) lie among the snapshot's specimens:
        all of them row for row (``slice(None)``), or the rows of some of them (a trait that
        not every specimen has, a shard's index, :mod:`sst_search.sharding`); None when some
        id is no specimen. Worked out once per array: an index's id array lives as long as
        its generation."""
        with self._lock:
            known = self._tables.get(id(ids))
            if known is not None and known[0] is ids:
                return known[1]
        if len(ids) == len(self.ids) and np.array_equal(ids, self.ids):
            rows: slice | np.ndarray | None = slice(None)
        else:
            found, rows = self.rows_of(ids)
            rows = rows if found.all() else None
        with self._lock:
            self._tables[id(ids)] = (ids, rows)
        return rows

    def table_mask(self, mask: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
        """``mask``, over the snapshot's specimens, over the rows of an index whose ids are
        ``ids`` instead (None where :meth:`table_rows` is): the mask itself when they are the
        snapshot's specimens, else its entries at their rows, remembered per mask and index
        (the last :data:`TABLE_MASKS_KEPT`), so that a filter yields the same array search
        after search and what the index keeps per filter array (its admitted rows per list)
        is found again."""
        rows = self.table_rows(ids)
        if rows is None:
            return None
        if isinstance(rows, slice):
            return mask
        key = (id(mask), id(ids))
        with self._lock:
            known = self._table_masks.get(key)
            if known is not None and known[0] is mask and known[1] is ids:
                self._table_masks.move_to_end(key)
                return known[2]
        rows_mask = mask[rows]
        rows_mask.flags.writeable = False
        with self._lock:
            self._table_masks[key] = (mask, ids, rows_mask)
            while len(self._table_masks) > TABLE_MASKS_KEPT:
                self._table_masks.popitem(last=False)
        return rows_mask

    def rows_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, rows)``: which ``ids`` are specimens, and their rows in :attr:`ids`."""
        return sorted_rows(self.ids, ids)

    def _load(self, c: Condition) -> ColumnValues:
        """The field's column as written at publish (:mod:`~sst_search.store.published_columns`),
        else read from the catalog."""
        column = None if self._published is None else self._published.field(c.source, c.column, len(self.ids), c.trait)
        return column if column is not None else self._read(c)

    def _read(self, c: Condition) -> ColumnValues:
        con = self._catalog.con
        # Column names come from the compiler's allow-lists (specimen columns, measurements), never from user text.
        if c.source == "specimen":
            table = con.sql(f"SELECT CAST({c.column} AS VARCHAR) AS v FROM specimens s ORDER BY s.specimen_id").to_arrow_table()
            return text_values(self._catalog.con, table.column("v"), None)
        if c.source == "metadata":
            table = con.sql("SELECT specimen_id, value AS v FROM specimen_metadata WHERE key = ?", params=[c.column]).to_arrow_table()
        else:
            source = "trait_masks" if c.source == "confidence" else "trait_measurements"
            table = con.sql(f"SELECT specimen_id, {c.column} AS v FROM {source} WHERE trait_name = ?",
                            params=[c.trait]).to_arrow_table()
        found, rows = self.rows_of(table.column("specimen_id").to_numpy().astype(np.int64))
        table, rows = table.filter(pa.array(found)), rows[found]
        values = table.column("v")
        if pa.types.is_floating(values.type):
            column = ColumnValues(values.combine_chunks(), None, rows)
        else:
            column = text_values(self._catalog.con, values, rows)
        return self._per_specimen(column)

    def _per_specimen(self, column: ColumnValues) -> ColumnValues:
        """The entries laid out one per specimen (missing ones null / code -1) when no specimen
        has two: a condition is then one gather over the specimens, not a scatter of entries."""
        rows, n = column.rows, len(self.ids)
        if rows is None or (len(rows) and np.bincount(rows, minlength=n).max() > 1):
            return column
        if column.codes is not None:
            codes = np.full(n, -1, np.int32)
            codes[rows] = column.codes
            return ColumnValues(column.values, codes, None, column.numbers)
        values, present = np.zeros(n, np.float64), np.zeros(n, bool)
        valid = ~column.values.is_null().to_numpy(zero_copy_only=False)
        values[rows[valid]] = column.values.filter(pa.array(valid)).to_numpy(zero_copy_only=False)
        present[rows[valid]] = True
        return ColumnValues(pa.array(values, mask=~present), None, None)


class MaskAdmission:
    """A filter evaluated to a mask over a snapshot's specimens."""

    def __init__(self, columns: SnapshotColumns, mask: np.ndarray) -> None:
        self._columns, self._mask = columns, mask

    def passes(self, ids: np.ndarray) -> np.ndarray:
        found, rows = self._columns.rows_of(np.asarray(ids, np.int64))
        return found & self._mask[rows]

    def admitted(self) -> np.ndarray:
        return self._columns.ids[self._mask]

    def table_mask(self, table_ids: np.ndarray) -> np.ndarray | None:
        """The mask over the rows of an index that holds the snapshot's specimens or some of
        them (:meth:`SnapshotColumns.table_mask`; see
        :class:`~sst_search.vector_search.planner.RowMask`)."""
        return self._columns.table_mask(self._mask, table_ids)


class PostedAdmission(MaskAdmission):
    """A filter with conditions on posting fields (``index.posting_fields``): a search whose
    index has those fields' postings reads the admitted vectors off them (see :attr:`posting`
    and :meth:`posted`), and asks its other conditions (``checked``) of those vectors alone;
    any other question builds the filter's mask, once."""

    def __init__(self, posting: list[tuple[str, Condition]], build: Callable[[], tuple[SnapshotColumns, np.ndarray]],
                 checked: Sequence[Condition] = (), columns: Callable[[], SnapshotColumns] | None = None) -> None:
        #: ``(field, condition)`` of each condition on a posting field: what the postings are asked.
        self.posting = posting
        self._checked, self._snapshot_columns = list(checked), columns
        self._build, self._mask = build, None

    def posted(self, postings: Sequence[Postings], table_ids: np.ndarray) -> ListCounts | None:
        """The admitted vectors read off ``postings``, one per posted condition (of its field):
        each condition evaluated on its field's distinct values and kept by its postings per
        condition, several joined (:class:`~sst_search.vector_search.postings.JointLists`)
        and the other conditions asked of the rows they admit (:class:`ConditionCheck`, for
        the index whose ids are ``table_ids``); None when one of those cannot be asked row by
        row (a field with several values for one specimen)."""
        parts = [found.admitted(_key(condition), functools.partial(_passing_values, condition))
                 for found, (_, condition) in zip(postings, self.posting)]
        if len(parts) == 1 and not self._checked:
            return parts[0]
        checks = [ConditionCheck.of(self._snapshot_columns(), c, table_ids) for c in self._checked]
        if any(check is None for check in checks):
            return None
        keys = [_key(c) for _, c in self.posting] + [("checked", *_key(c)) for c in self._checked]
        return postings[0].kept(("and", *sorted(map(repr, keys))), lambda: JointLists(parts, checks))

    def _built(self) -> None:
        if self._mask is None:
            self._columns, self._mask = self._build()

    def passes(self, ids: np.ndarray) -> np.ndarray:
        self._built()
        return super().passes(ids)

    def admitted(self) -> np.ndarray:
        self._built()
        return super().admitted()

    def table_mask(self, table_ids: np.ndarray) -> np.ndarray | None:
        self._built()
        return super().table_mask(table_ids)


def read_off_postings(admission: object, postings_of: Callable[[str], Postings | None], table_ids: np.ndarray
                      ) -> ListCounts | None:
    """The vectors ``admission`` admits of the index whose ids are ``table_ids``, read off
    that index's postings (``postings_of(field)``), when its filter has conditions on posting
    fields (:class:`PostedAdmission`) and the index has all of their postings; else None (the
    search builds the filter's mask)."""
    posting = getattr(admission, "posting", None)
    if posting is None:
        return None
    found = [postings_of(field) for field, _ in posting]
    return admission.posted(found, table_ids) if all(p is not None for p in found) else None


class CheckedAdmission(MaskAdmission):
    """A filter on fields without postings alone, asked of specimens one by one until a
    search needs every vector it admits (:class:`~sst_search.vector_search.planner.DeferredMask`).
    Its share is then sampled, and a broad filter (a measurement above a bound, a
    segmentation's confidence, most specimens' basis of record) is searched by post-filtering
    the index's candidates, which asks a few thousand specimens: no pass over every one
    (40-80 ms at ten million). The mask is built for a search that needs the admitted set (a
    selective filter, or a post-filter that falls through) and remembered as every mask is,
    so the filter's later searches read it."""

    def __init__(self, columns: SnapshotColumns, conditions: Sequence[Condition],
                 checks: Sequence[ConditionCheck]) -> None:
        super().__init__(columns, columns.known_mask(conditions))
        self._conditions, self._checks = list(conditions), list(checks)

    def passes(self, ids: np.ndarray) -> np.ndarray:
        if self._mask is not None:
            return super().passes(ids)
        found, rows = self._columns.rows_of(np.asarray(ids, np.int64))
        rows, keep = np.where(found, rows, 0), found.copy()
        for check in self._checks:
            keep &= check.passes_rows(rows)
        return keep

    def _needed(self) -> None:
        if self._mask is None:
            self._mask = self._columns.all_of(self._conditions)

    def admitted(self) -> np.ndarray:
        self._needed()
        return super().admitted()

    def table_mask(self, table_ids: np.ndarray) -> np.ndarray | None:
        return super().table_mask(table_ids) if self._mask is not None else None

    def needed_mask(self, table_ids: np.ndarray) -> np.ndarray | None:
        self._needed()
        return super().table_mask(table_ids)

    def remembered_share(self, population: np.ndarray, sample: Hashable, estimate: Callable[[], float]) -> float:
        return self._columns.remembered_share((_mask_key(self._conditions), sample), population, estimate)


class ConditionCheck:
    """A condition on a field without postings, asked of an index's table rows one by one:
    the rows a posted condition admits, not every specimen (a mask is a pass over all of
    them). Its field's column is loaded as a mask would load it."""

    def __init__(self, condition: Condition, column: ColumnValues, specimen_rows: slice | np.ndarray) -> None:
        self._condition, self._column, self._specimen_rows = condition, column, specimen_rows
        self._hit = (np.append(_passing_values(condition, column.values, column.numbers), False)
                     if column.codes is not None else None)  # code -1 (no value) never passes

    @classmethod
    def of(cls, columns: SnapshotColumns, condition: Condition, table_ids: np.ndarray | None = None
           ) -> ConditionCheck | None:
        """The check for the index whose ids are ``table_ids`` (None: for the snapshot's
        specimens' own rows); None when the field has several values for one specimen
        (instances measured apart) or an id is no specimen."""
        column = columns.column(condition)
        rows = columns.table_rows(table_ids) if table_ids is not None else slice(None)
        if column.rows is not None or rows is None:
            return None
        return cls(condition, column, rows)

    def passes_rows(self, rows: np.ndarray) -> np.ndarray:
        specimens = rows if isinstance(self._specimen_rows, slice) else self._specimen_rows[rows]
        if self._hit is not None:
            return self._hit[self._column.codes[specimens]]
        values = self._column.values.take(pa.array(specimens))
        return condition_mask(self._condition, ColumnValues(values, None, None), len(specimens))


class SqlAdmission:
    """A filter asked of the catalog in SQL each time (a writer's catalog changes under it)."""

    def __init__(self, catalog: Catalog, filters: list[Filter]) -> None:
        self._catalog, self._filters = catalog, filters

    def passes(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        return np.isin(ids, self._catalog.specimen_ids(self._filters, specimen_ids=ids.tolist()))

    def admitted(self) -> np.ndarray:
        return self._catalog.specimen_ids(self._filters)


def text_values(con: duckdb.DuckDBPyConnection, values: pa.ChunkedArray, rows: np.ndarray | None) -> ColumnValues:
    """Distinct values plus a code per entry, and the distinct values as numbers (DuckDB's
    TRY_CAST on ``con``, as the SQL backend compares them)."""
    distinct, codes = distinct_codes(values)
    numbers = con.sql(
        "SELECT TRY_CAST(v AS DOUBLE) AS n FROM (SELECT unnest(?::VARCHAR[]) AS v)", params=[distinct.to_pylist()]
    ).to_arrow_table().column("n").combine_chunks()
    return ColumnValues(distinct, codes, rows, numbers)


def distinct_codes(values: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """``(distinct values, int32 code per entry)``, code -1 for a missing value."""
    encoded = pc.dictionary_encode(whole(values))
    return encoded.dictionary, pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)


def _passing_values(condition: Condition, values: pa.Array, numbers: pa.Array) -> np.ndarray:
    """Which of a field's distinct ``values`` (with their ``numbers``) pass ``condition``."""
    return condition_mask(condition, ColumnValues(values, None, None, numbers), len(values))


def _key(c: Condition) -> tuple:
    return (c.source, c.column, c.trait, c.op, repr(c.value), c.numeric)


def _mask_key(conditions: Sequence[Condition]) -> Hashable:
    """The key a conjunction's mask is remembered under (one condition's is its own)."""
    return _key(conditions[0]) if len(conditions) == 1 else frozenset(map(_key, conditions))


def whole(data: pa.Table | pa.ChunkedArray) -> pa.Table | pa.Array:
    """``data`` as one contiguous table or array, text as ``large_string``: a column holding
    more than 2 GiB of text (10 million masks' RLE, say) overflows Arrow's 32-bit offsets."""
    if isinstance(data, pa.ChunkedArray):
        return (data.cast(pa.large_string()) if pa.types.is_string(data.type) else data).combine_chunks()
    schema = pa.schema([f.with_type(pa.large_string()) if pa.types.is_string(f.type) else f for f in data.schema])
    return data.cast(schema).combine_chunks()
