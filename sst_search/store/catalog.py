"""Reading the catalog: typed answers from the DuckDB file, for every reader of the library.

The search engine, the exports, the evaluation, the CLI and the app read specimens,
masks, measurements, vectors, runs and index generations through these methods, never
through a connection, and every selection of specimens goes through the one filter compiler
(:mod:`sst_search.store.filters`). :class:`Catalog` answers in SQL each time, as a live
store that changes under it must; a published snapshot never changes, and
:class:`~sst_search.store.snapshot_catalog.SnapshotCatalog` answers it from memory instead.
"""


from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from sst_search.config import IndexConfig, recorded
from sst_search.store import vector_column
from sst_search.store.columns import LISTING_COLUMNS, MASK_COLUMNS, SqlAdmission
from sst_search.store.filters import Filter, TraitNames, scope_where
from sst_search.store.records import TraitMask
from sst_search.store.rle import decode_mask
from sst_search.store.schema import TRAIT_MEASUREMENTS_COLUMNS
from sst_search.vector_search.cache import IndexKey

#: Columns of :meth:`Catalog.mask_rows`, in order.
MASK_ROW_COLUMNS = (
    "specimen_id", "path", "group_name", "width", "height", "metadata",
    "trait_id", "trait_name", "rle", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "quality", "source",
    "image_source",
)


#: Vectors per batch read from DuckDB (a few tens of megabytes at dim 512).
VECTOR_BATCH_ROWS = 32_768


def duckdb_memory_limit() -> str:
    """DuckDB's own buffer limit: a quarter of the machine's memory (DuckDB's default is 80%).

    The store's bulk data in memory lives outside DuckDB (vector matrices, FAISS indexes,
    the snapshot's columns and masks); left at 80%, DuckDB's sort buffers for reading a
    10 million x 128 vector table grew to 10 GiB on top of the 5 GiB matrix being filled and
    a 24 GiB machine ran out. Past the limit DuckDB spills to disk instead.
    """
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return f"{max(1, total // 4 // 2**20)}MB"


def vector_batch(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, (rows, dim) matrix)`` of one non-empty batch of ``(specimen_id, vector)`` rows."""
    return batch.column(0).to_numpy().astype(np.int64, copy=False), vector_column.decode(batch.column(1), len(batch))


def _vector_rows(batches: pa.RecordBatchReader, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, matrix)`` from batches of ``(specimen_id, vector)``, copied once into arrays of
    ``n`` rows: at 10 million vectors an Arrow table and its combined, flattened and
    converted copies held the matrix four times over, more than the machine's memory."""
    ids, matrix, at = np.empty(n, np.int64), None, 0
    for batch in batches:
        rows = len(batch)
        if not rows:
            continue
        if at + rows > n:
            raise RuntimeError(f"the vectors table grew while it was read ({at + rows} rows, {n} counted)")
        batch_ids, values = vector_batch(batch)
        if matrix is None:
            matrix = np.empty((n, values.shape[1]), np.float32)
        matrix[at : at + rows] = values
        ids[at : at + rows] = batch_ids
        at += rows
    if matrix is None:
        return ids[:0], np.zeros((0, 0), np.float32)
    return ids[:at], matrix[:at]


def _json(value: str | None):
    return json.loads(value) if value is not None else None


class Catalog:
    """Read methods over ``self.con`` (a DuckDB cursor on one store file), answered in SQL."""

    con: duckdb.DuckDBPyConnection

    # -- runs ----------------------------------------------------------------------------

    def runs(self) -> list[dict]:
        return self.query_dicts("SELECT * FROM runs ORDER BY started_at")

    def last_run_fingerprint(self) -> dict:
        """Fingerprint of the last finished run (models, config, references); {} when none finished."""
        rows = self.con.execute(  # fetchall: a half-read result blocks the cursor's next .sql()
            "SELECT fingerprint FROM runs WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1"
        ).fetchall()
        return json.loads(rows[0][0]) if rows and rows[0][0] else {}

    # -- specimens -----------------------------------------------------------------------

    def get_specimen(self, specimen_id: int) -> dict | None:
        rows = self.query_dicts("SELECT * FROM specimens WHERE specimen_id = ?", [int(specimen_id)])
        if not rows:
            return None
        row = rows[0]
        for col in ("fingerprint", "metadata"):
            row[col] = _json(row[col])
        return row

    def specimens(
        self,
        filters: Iterable[Filter] = (),
        *,
        status: str | None = "indexed",
        groups: Iterable[str] | None = None,
        specimen_ids: Iterable[int] | None = None,
    ) -> list[dict]:
        """``specimen_id, path, group_name, status, metadata`` (parsed), ``source`` of the specimens passing
        the filters, with the status (any when None), in the groups / among the ids given;
        in (group, path) order."""
        where, params = self._scope_where(filters, status, groups, specimen_ids)
        rows = self.query_dicts(
            f"SELECT specimen_id, path, group_name, status, metadata, source FROM specimens s WHERE {where} "
            "ORDER BY group_name, path",
            params,
        )
        for row in rows:
            row["metadata"] = _json(row["metadata"]) or {}
        return rows

    def admission(self, filters: Iterable[Filter]) -> SqlAdmission | None:
        """The indexed specimens passing ``filters``, in the form a filtered search asks about
        them (see :mod:`sst_search.vector_search.planner`); None without filters. Asked in
        SQL each time: a live catalog changes under it."""
        filters = list(filters)
        return SqlAdmission(self, filters) if filters else None

    def listing(self, specimen_ids: Sequence[int]) -> dict[int, dict]:
        """``{specimen_id: {path, group_name, status, metadata (parsed)}}`` of the given specimens,
        whatever their status: what a search joins to its hits, read for them alone."""
        rows = self.query_dicts(f"SELECT {LISTING_COLUMNS} FROM specimens WHERE specimen_id IN (SELECT unnest(?::BIGINT[]))",
                                [[int(i) for i in specimen_ids]])
        return listing_of(rows)

    def specimen_ids(
        self,
        filters: Iterable[Filter] = (),
        *,
        status: str | None = "indexed",
        groups: Iterable[str] | None = None,
        specimen_ids: Iterable[int] | None = None,
    ) -> np.ndarray:
        """Ids (ascending) of the specimens :meth:`specimens` would list."""
        where, params = self._scope_where(filters, status, groups, specimen_ids)
        return (
            self.con.execute(f"SELECT s.specimen_id FROM specimens s WHERE {where} ORDER BY 1", params)
            .fetchnumpy()["specimen_id"]
            .astype(np.int64)
        )

    def filter_specimens(
        self,
        filters: Mapping[str, str | Sequence[str]] | None = None,
        group: str | None = None,
        status: str | None = "indexed",
    ) -> list[int]:
        """Ids of specimens whose metadata ``key`` equals the value (or one of the values) for every filter."""
        conditions = [
            Filter(field=key, op="in", value=[value] if isinstance(value, str) else list(value))
            for key, value in (filters or {}).items()
        ]
        return self.specimen_ids(conditions, status=status, groups=None if group is None else [group]).tolist()

    def specimen_states(self) -> dict[int, tuple[str | None, str | None, str]]:
        """``specimen_id -> (content_hash, fingerprint JSON, status)``, what incremental planning compares."""
        rows = self.con.execute("SELECT specimen_id, content_hash, fingerprint, status FROM specimens").fetchall()
        return {sid: (h, fp, st) for sid, h, fp, st in rows}

    def specimen_locations(self) -> dict[int, tuple[str, str | None]]:
        """``specimen_id -> (path, item_key)``: where each row's pixels are and the key it was
        written under (NULL for rows from before item keys), for planning moves."""
        rows = self.con.execute("SELECT specimen_id, path, item_key FROM specimens").fetchall()
        return {sid: (path, key) for sid, path, key in rows}

    def path_prefixes(self, limit: int = 5) -> list[str]:
        """The most common parent folders of the stored paths (what ``relocate`` can re-point)."""
        rows = self.con.execute(
            "SELECT regexp_replace(path, '/[^/]*$', '') AS folder, count(*) FROM specimens "
            "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?", [limit]).fetchall()
        return [r[0] for r in rows]

    def count_under(self, prefix: str) -> int:
        """How many stored paths lie in the folder ``prefix`` (whole path components)."""
        prefix = prefix.rstrip("/") or "/"
        return self.con.execute("SELECT count(*) FROM specimens WHERE path = ? OR starts_with(path, ? || '/')",
                                [prefix, prefix]).fetchall()[0][0]

    def indexed_specimens(self) -> list[tuple[int, str, dict]]:
        """``(specimen_id, path, metadata)`` of every indexed specimen, by id: what a re-measure walks."""
        rows = self.con.execute(
            "SELECT specimen_id, path, metadata FROM specimens WHERE status = 'indexed' ORDER BY specimen_id"
        ).fetchall()
        return [(sid, path, json.loads(md) if md else {}) for sid, path, md in rows]

    def original_widths(self) -> dict[int, int]:
        """``specimen_id -> width`` of the full image, for specimens whose masks are at a
        downsampled size (an IIIF image fetched at the model's size): what converts their
        measurements to the original pixels a scale refers to."""
        rows = self.con.execute("SELECT specimen_id, original_width FROM specimens WHERE original_width > 0").fetchall()
        return {int(sid): int(w) for sid, w in rows}

    def full_sources(self) -> dict[int, str]:
        """``specimen_id -> URL`` of the full-resolution image of specimens indexed from a
        downsampled copy: what crops and exports fetch instead of the stored file."""
        rows = self.con.execute("SELECT specimen_id, full_source FROM specimens WHERE full_source IS NOT NULL").fetchall()
        return {int(sid): str(url) for sid, url in rows}

    def groups(self) -> list[str]:
        return [r[0] for r in self.con.execute(
            "SELECT DISTINCT group_name FROM specimens WHERE group_name IS NOT NULL ORDER BY 1").fetchall()]

    def metadata_keys(self) -> set[str]:
        """Every metadata column of the manifest(s)."""
        return self.remember("metadata_keys", lambda: {
            r[0] for r in self.con.execute("SELECT DISTINCT key FROM specimen_metadata").fetchall()})

    def group_labels(self) -> dict[int, str]:
        """``{specimen_id: group}`` of indexed specimens that have a group."""
        rows = self.con.execute(
            "SELECT specimen_id, group_name FROM specimens WHERE status = 'indexed' AND group_name IS NOT NULL"
        ).fetchall()
        return {int(sid): str(group) for sid, group in rows}

    def metadata_labels(self, key: str) -> dict[int, str]:
        """``{specimen_id: value}`` of metadata column ``key`` on indexed specimens (empty values left out)."""
        rows = self.con.execute(
            "SELECT m.specimen_id, m.value FROM specimen_metadata m JOIN specimens s USING (specimen_id) "
            "WHERE s.status = 'indexed' AND m.key = ? AND m.value IS NOT NULL AND m.value <> ''",
            [key],
        ).fetchall()
        return {int(sid): str(value) for sid, value in rows}

    def failures(self, statuses: Sequence[str] = ("failed", "no_reference"), limit: int | None = None) -> pd.DataFrame:
        """``specimen_id, path, group, status, error, updated_at`` of items not indexed, by group and path."""
        sql = (
            'SELECT specimen_id, path, group_name AS "group", status, error, updated_at FROM specimens '
            "WHERE status IN (SELECT unnest(?::VARCHAR[])) ORDER BY group_name, path"
        )
        params: list = [list(statuses)]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self.con.execute(sql, params).df()

    # -- masks and measurements ----------------------------------------------------------

    def trait_masks(self, specimen_id: int) -> list[TraitMask]:
        rows = self.con.execute(
            "SELECT trait_id, trait_name, rle, area, bbox_x0, bbox_y0, bbox_x1, bbox_y1, quality, source, "
            "object_score, predicted_iou FROM trait_masks WHERE specimen_id = ? ORDER BY trait_id",
            [int(specimen_id)],
        ).fetchall()
        return [
            TraitMask(t, n, rle, a, (x0, y0, x1, y1), q, s, o, p)
            for t, n, rle, a, x0, y0, x1, y1, q, s, o, p in rows
        ]

    def trait_mask_of(self, trait_name: str, specimen_ids: Iterable[int]) -> dict[int, TraitMask]:
        """``{specimen_id: mask}`` of one trait on the given specimens (those without it are left
        out; of two traits drawn under one name, the lower trait id), read for them alone: the
        rows are stored in specimen order, so DuckDB's zone maps skip all but the hits' row
        groups (about 2 ms for ten hits at a million masks)."""
        rows = self.con.execute(
            f"SELECT {MASK_COLUMNS} FROM trait_masks WHERE trait_name = ? AND specimen_id IN (SELECT unnest(?::BIGINT[])) "
            "ORDER BY trait_id DESC", [trait_name, [int(i) for i in specimen_ids]],  # the lowest trait id is written last, and kept
        ).fetchall()
        return masks_by_specimen(rows)

    def hits_rows(self, trait_name: str, specimen_ids: Sequence[int]) -> tuple[dict[int, dict], dict[int, TraitMask]]:
        """:meth:`listing` and :meth:`trait_mask_of` of the same specimens (a search's hits, a
        page of cards): what a result joins to each hit."""
        return self.listing(specimen_ids), self.trait_mask_of(trait_name, specimen_ids)

    def label_map(self, specimen_id: int, replacing: Mapping[int, np.ndarray] | None = None) -> np.ndarray | None:
        """The specimen's label map rebuilt from its stored masks (None without masks);
        ``replacing`` ``{trait_id: mask}``: as it will be once those masks are stored."""
        masks = {m.trait_id: decode_mask(m.rle) for m in self.trait_masks(specimen_id)} | dict(replacing or {})
        if not masks:
            return None
        out = np.zeros(next(iter(masks.values())).shape, np.uint8)
        for trait_id in sorted(masks):
            out[masks[trait_id]] = trait_id
        return out

    def traits(self, group: str | None = None) -> list[str]:
        """Trait names with at least one mask (on the group's specimens when given), sorted."""
        sql = "SELECT DISTINCT t.trait_name FROM trait_masks t JOIN specimens s USING (specimen_id)"
        params = []
        if group is not None:
            sql += " WHERE s.group_name = ?"
            params.append(group)
        return [r[0] for r in self.con.execute(sql + " ORDER BY 1", params).fetchall()]

    def mask_rows(self, groups: Iterable[str] | None = None, specimen_ids: Iterable[int] | None = None) -> list[tuple]:
        """One tuple (:data:`MASK_ROW_COLUMNS`) per trait mask of the indexed specimens in scope,
        by specimen id and trait id."""
        where, params = self._scope_where((), "indexed", groups, specimen_ids)
        return self.con.execute(
            "SELECT s.specimen_id, s.path, s.group_name, s.width, s.height, s.metadata, t.trait_id, t.trait_name, "
            "t.rle, t.area, t.bbox_x0, t.bbox_y0, t.bbox_x1, t.bbox_y1, t.quality, t.source, s.source AS image_source "
            f"FROM trait_masks t JOIN specimens s USING (specimen_id) WHERE {where} ORDER BY s.specimen_id, t.trait_id",
            params,
        ).fetchall()

    def provenance(self, groups: Iterable[str] | None = None, specimen_ids: Iterable[int] | None = None) -> dict[int, dict]:
        """``specimen_id -> {path, group_name, item_key, source, full_source, license, rights_holder,
        width, height, original_width, original_height, metadata, fingerprint}`` (JSON parsed) of the
        indexed specimens in scope: where each image came from, what exports hand back to its owner."""
        where, params = self._scope_where((), "indexed", groups, specimen_ids)
        rows = self.query_dicts(
            "SELECT specimen_id, path, group_name, item_key, source, full_source, license, rights_holder, width, height, "
            f"original_width, original_height, metadata, fingerprint FROM specimens s WHERE {where} ORDER BY specimen_id",
            params,
        )
        for row in rows:
            row["metadata"] = _json(row["metadata"]) or {}
            row["fingerprint"] = _json(row["fingerprint"]) or {}
        return {int(row["specimen_id"]): row for row in rows}

    def measurements_frame(self, specimen_ids: Iterable[int] | None = None, groups: Iterable[str] | None = None):
        """Measurements joined with their specimen and mask, one row per (specimen, trait), as a
        pandas DataFrame: ``specimen_id, path, group, metadata, fingerprint`` (JSON), ``image_source`` (the
        URL the pixels were fetched from, else NULL), ``trait_id, trait``,
        the mask's ``area, bbox_x0..bbox_y1, quality, source`` and every ``trait_measurements`` column
        (NULL for masks written before measurements existed)."""
        where, params = self._scope_where((), "indexed", groups, specimen_ids)
        columns = ", ".join(f"x.{c}" for c in TRAIT_MEASUREMENTS_COLUMNS[3:])
        return self.con.execute(
            "SELECT s.specimen_id, s.path, s.group_name AS \"group\", s.metadata, s.fingerprint, "
            "s.source AS image_source, t.trait_id, "
            "t.trait_name AS trait, t.area, t.bbox_x0, t.bbox_y0, t.bbox_x1, t.bbox_y1, "
            f"t.quality, t.source, {columns} FROM trait_masks t JOIN specimens s USING (specimen_id) "
            "LEFT JOIN trait_measurements x ON x.specimen_id = t.specimen_id AND x.trait_id = t.trait_id "
            f"WHERE {where} ORDER BY s.group_name, s.path, t.trait_id",
            params,
        ).df()

    def unmeasured_specimens(self) -> list[int]:
        """Indexed specimens with a trait mask that has no measurements (written before they existed)."""
        return [r[0] for r in self.con.execute(
            "SELECT DISTINCT t.specimen_id FROM trait_masks t JOIN specimens s USING (specimen_id) "
            "LEFT JOIN trait_measurements x ON x.specimen_id = t.specimen_id AND x.trait_id = t.trait_id "
            "WHERE x.specimen_id IS NULL AND s.status = 'indexed' ORDER BY 1"
        ).fetchall()]

    def measured_traits(self) -> list[str]:
        """Names of the traits that have measurements (what measurement filters and plots accept)."""
        return self.remember("measured_traits", lambda: [
            r[0] for r in self.con.execute("SELECT DISTINCT trait_name FROM trait_measurements ORDER BY 1").fetchall()])

    def filter_traits(self) -> TraitNames:
        """The traits per-trait filters may name: measured ones, and every one with masks for confidences."""
        return self.remember("filter_traits", lambda: TraitNames(frozenset(self.measured_traits()), frozenset(
            r[0] for r in self.con.execute("SELECT DISTINCT trait_name FROM trait_masks").fetchall())))

    # -- vectors -------------------------------------------------------------------------

    def embedders(self) -> list[str]:
        # index_state has one row per index: no scan of the (large) vectors table per search.
        return [r[0] for r in self.con.execute("SELECT DISTINCT embedder FROM index_state ORDER BY 1").fetchall()]

    def get_vectors(
        self, embedder: str, trait_name: str, ids: Iterable[int] | None = None, shard: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(specimen_ids, (n, dim) matrix)`` of one index's vectors, from DuckDB, ordered by id;
        ``shard=(i, n)``: only those with ``specimen_id % n == i`` (see :mod:`sst_search.sharding`)."""
        where = "embedder = ? AND trait_name = ?"
        params: list = [embedder, trait_name]
        if ids is not None:
            where += " AND specimen_id IN (SELECT unnest(?::BIGINT[]))"
            params.append([int(i) for i in ids])
        if shard is not None:
            where += " AND specimen_id % ? = ?"
            params += [int(shard[1]), int(shard[0])]
        n = self.con.execute(f"SELECT count(*) FROM vectors WHERE {where}", params).fetchall()[0][0]
        batches = self.con.sql(f"SELECT specimen_id, vector FROM vectors WHERE {where} ORDER BY specimen_id",
                               params=params).to_arrow_reader(VECTOR_BATCH_ROWS)
        return _vector_rows(batches, n)

    # -- indexes ---------------------------------------------------------------------------

    def generations(self) -> dict[IndexKey, int]:
        """The generation of every index: a FAISS file or cached index is used only at its
        catalog's generation (asked several times per search)."""
        return self.remember("generations", lambda: {
            (e, t): g for e, t, g in self.con.execute("SELECT embedder, trait_name, generation FROM index_state").fetchall()})

    def index_dims(self) -> dict[IndexKey, int]:
        """The vector dimension of every index."""
        return self.remember("dims", lambda: {
            (e, t): d for e, t, d in self.con.execute("SELECT embedder, trait_name, dim FROM index_state").fetchall()})

    def recorded_index_config(self) -> IndexConfig:
        """The index configuration the writer recorded; the defaults for stores from before it was recorded."""
        return recorded_index_config(self.con)

    # -- helpers -------------------------------------------------------------------------

    def remember(self, name: str, compute):
        """``compute()``: a live catalog changes under its reader, so nothing is remembered
        (:class:`~sst_search.store.snapshot_catalog.SnapshotCatalog` remembers)."""
        return compute()

    def query_dicts(self, sql: str, params: list | None = None) -> list[dict]:
        """The rows of a query as dicts by column name."""
        cur = self.con.execute(sql, params or [])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def _scope_where(self, filters: Iterable[Filter], status, groups, specimen_ids) -> tuple[str, list]:
        """WHERE clause over ``specimens s``; the catalog is asked for its fields only when there are filters."""
        filters = list(filters)
        known = (self.metadata_keys(), self.filter_traits()) if filters else (set(), TraitNames())
        return scope_where(filters, *known, status=status, groups=groups, specimen_ids=specimen_ids)


def listing_of(rows: Iterable[Mapping]) -> dict[int, dict]:
    """:meth:`Catalog.listing`'s answer from its rows (metadata parsed)."""
    return {row["specimen_id"]: {**row, "metadata": _json(row["metadata"]) or {}} for row in rows}


def masks_by_specimen(rows: Iterable[Sequence]) -> dict[int, TraitMask]:
    """:meth:`Catalog.trait_mask_of`'s answer from rows of ``specimen_id`` and :data:`MASK_COLUMNS`."""
    return {sid: TraitMask(t, n, rle, a, (x0, y0, x1, y1), q, s, o, p)
            for sid, t, n, rle, a, x0, y0, x1, y1, q, s, o, p in rows}


def recorded_index_config(con: duckdb.DuckDBPyConnection) -> IndexConfig:
    """The index configuration the writer recorded in the store ``con`` reads; the defaults
    for stores from before it was recorded."""
    try:
        # fetchall, not fetchone: a half-read result blocks the cursor's next .sql() call
        rows = con.execute("SELECT value FROM store_settings WHERE key = 'index_config'").fetchall()
    except duckdb.CatalogException:  # a read-only store written before the table existed
        return IndexConfig()
    return recorded(IndexConfig, rows[0][0], "the store's index settings") if rows else IndexConfig()
