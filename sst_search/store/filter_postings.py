"""The catalog's side of filter postings (:mod:`sst_search.vector_search.postings`): each
posting field's value per vector read from the catalog when a snapshot is published, the
postings and each IVF index's list layout written beside the vectors at rest, and checked
against the catalog and the FAISS file by verify.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from sst_search.config import IndexConfig
from sst_search.measure import FIELD_NAMES as MEASURED
from sst_search.store.catalog import recorded_index_config
from sst_search.store.columns import distinct_codes, text_values
from sst_search.store.filters import CONFIDENCE_FIELDS, SPECIMEN_FIELDS
from sst_search.store.verify import Problem, index_states
from sst_search.vector_search import at_rest, indexes, postings
from sst_search.vector_search.vector_table import ListLayout
from sst_search.weights import sha256_file


def field_codes(con: duckdb.DuckDBPyConnection, key: at_rest.IndexKey, field: str, table_ids: np.ndarray
                ) -> tuple[pa.Array, pa.Array, np.ndarray] | None:
    """``(distinct values, their numbers, code per vector in id order)`` of ``field``, the
    values ordered (:func:`~sst_search.vector_search.postings.ordered_values`; code -1: no
    value, or a specimen not indexed: postings answer the filter a search asks,
    ``status == 'indexed'`` included), or None when the field is unknown. The values and
    numbers are what a snapshot's columns give a filter (:func:`text_values`), so a condition
    passes the same values on either."""
    if field in SPECIMEN_FIELDS:  # the column name comes from the compiler's allow-list, never from user text
        sql = (f"SELECT v.specimen_id, CASE WHEN s.status = 'indexed' THEN CAST({SPECIMEN_FIELDS[field]} AS VARCHAR) "
               "END AS value FROM vectors v LEFT JOIN specimens s USING (specimen_id) "
               "WHERE v.embedder = ? AND v.trait_name = ? ORDER BY v.specimen_id")
        params = list(key)
    elif con.execute("SELECT 1 FROM specimen_metadata WHERE key = ? LIMIT 1", [field]).fetchall():
        sql = ("SELECT v.specimen_id, CASE WHEN s.status = 'indexed' THEN m.value END AS value FROM vectors v "
               "LEFT JOIN specimens s USING (specimen_id) "
               "LEFT JOIN specimen_metadata m ON m.specimen_id = v.specimen_id AND m.key = ? "
               "WHERE v.embedder = ? AND v.trait_name = ? ORDER BY v.specimen_id")
        params = [field, *key]
    elif (measured := _measured(con, field)) is not None:
        table_name, trait, column = measured
        sql = (f"SELECT v.specimen_id, CASE WHEN s.status = 'indexed' THEN x.{column} END AS value FROM vectors v "
               f"LEFT JOIN specimens s USING (specimen_id) "
               f"LEFT JOIN {table_name} x ON x.specimen_id = v.specimen_id AND x.trait_name = ? "
               "WHERE v.embedder = ? AND v.trait_name = ? ORDER BY v.specimen_id")
        params = [trait, *key]
    else:
        return None
    table = con.sql(sql, params=params).to_arrow_table()
    found = table.column("specimen_id").to_numpy()
    if len(found) > len(table_ids) and np.array_equal(np.unique(found), table_ids):
        return None  # a trait measured on several instances of a specimen: one value a vector cannot say which
    if not np.array_equal(found, table_ids):
        raise RuntimeError(f"{key[0]}/{key[1]}: the vectors table changed while its postings were written")
    values = table.column("value")
    if pa.types.is_floating(values.type):  # a measurement: its numbers as they are, not read back from text
        numbers, codes = distinct_codes(values)
        return postings.ordered_values(numbers.cast(pa.string()), numbers, codes)
    column = text_values(con, values, None)
    return postings.ordered_values(column.values, column.numbers, column.codes)


def _measured(con: duckdb.DuckDBPyConnection, field: str) -> tuple[str, str, str] | None:
    """``(table, trait, column)`` of a ``<trait>.<measurement or confidence>`` field some
    specimen has, else None; the column is checked against the filter compiler's allow-lists."""
    trait, _, column = field.rpartition(".")
    table = "trait_masks" if column in CONFIDENCE_FIELDS else "trait_measurements" if column in MEASURED else None
    if not trait or table is None:
        return None
    if not con.execute(f"SELECT 1 FROM {table} WHERE trait_name = ? LIMIT 1", [trait]).fetchall():
        return None
    return table, trait, column


def _ivf_indexes(con: duckdb.DuckDBPyConnection, db_path: Path):
    """``(key, generation, FAISS manifest, index, table ids, list layout)`` of every IVF index
    whose file and vectors at rest are the catalog's."""
    faiss_dir, root = db_path.with_name(db_path.name + ".faiss"), at_rest.vectors_dir(db_path)
    for embedder, trait, generation, _ in index_states(con):
        key = (embedder, trait)
        manifest = indexes.read_manifest(faiss_dir, *key)
        rest = at_rest.read_manifest(root, key)
        if (manifest is None or manifest.get("kind") != "ivf" or manifest.get("generation") != generation
                or rest is None or rest.get("generation") != generation):
            continue
        index = indexes.load_index(faiss_dir, *key, mapped=True)  # its lists' ids are read, not its codes
        table_ids = np.asarray(np.load(at_rest.vector_paths(root, key)[1], mmap_mode="r"))
        yield key, generation, manifest, index, table_ids, ListLayout.of(index, table_ids)


def fields_to_post(con: duckdb.DuckDBPyConnection, config: IndexConfig) -> list[str]:
    """The fields posted: ``posting_fields``, then every other metadata key with at most
    ``posting_categorical_values`` distinct values. A museum's table has many such columns
    (a preparation, a basis of record, a sex) no default list can name; a selective
    condition on one, unposted, built its mask on its first search (59-70 ms at ten million
    vectors). A field of many values (a catalogue number, a free-text remark) is left out:
    it costs as much to post, and ``posting_fields`` names it where its filters need it."""
    if config.posting_categorical_values == 0:
        return list(config.posting_fields)
    listed = set(config.posting_fields)
    few = con.execute("SELECT key FROM specimen_metadata GROUP BY key HAVING count(DISTINCT value) <= ? ORDER BY key",
                      [config.posting_categorical_values]).fetchall()
    return [*config.posting_fields, *(key for (key,) in few if key not in listed)]


def _fields(con: duckdb.DuckDBPyConnection, key: at_rest.IndexKey, table_ids: np.ndarray, fields: list[str],
            max_values: int):
    """``(field, values, numbers, ranges, codes)`` of each of ``fields`` one index has, in at
    most ``max_values`` ranges of values each."""
    for field in fields:
        coded = field_codes(con, key, field, table_ids)
        if coded is not None:
            values, numbers, codes = coded
            yield field, values, numbers, postings.value_ranges(codes, len(values), max_values), codes


def write_snapshot(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    """Write the postings and list layout of each IVF index of the (staged, not yet
    published) store at ``db_path``, whose catalog ``con`` reads, after its vectors at rest:
    their rows are the vectors at rest's."""
    root = at_rest.vectors_dir(db_path)
    config = recorded_index_config(con)
    fields = fields_to_post(con, config)
    for key, generation, manifest, index, table_ids, layout in _ivf_indexes(con, db_path):
        postings.write_layout(root, key, generation, manifest["sha256"], layout)
        for field, values, numbers, ranges, codes in _fields(con, key, table_ids, fields, config.posting_max_values):
            rows, counts = postings.build(layout, codes, ranges)
            postings.write(root, key, field, generation, manifest["sha256"], values, numbers, ranges, codes, rows,
                           counts)


def check_all(con: duckdb.DuckDBPyConnection, db_path: Path) -> list[Problem]:
    """Problems of the postings and list layouts beside the store at ``db_path``: each present
    one must be current, intact, and equal to what the catalog and the FAISS file give now
    (a snapshot without them is sound: its searches build masks and read the lists)."""
    root = at_rest.vectors_dir(db_path)
    if not root.is_dir():
        return []
    problems = []
    config = recorded_index_config(con)
    fields = fields_to_post(con, config)
    for key, generation, manifest, index, table_ids, layout in _ivf_indexes(con, db_path):
        paths = postings.layout_paths(root, key)
        stored = indexes.read_json(paths["manifest"])
        if stored is not None:
            why = postings.layout_unusable(root, key, stored, generation, manifest.get("sha256")) or _layout_differs(
                paths, stored, layout)
            if why is not None:
                problems.append(Problem(str(paths["manifest"]), why, "index", key))
        for field, values, numbers, ranges, codes in _fields(con, key, table_ids, fields, config.posting_max_values):
            paths = postings.posting_paths(root, key, field)
            stored = postings.read_manifest(root, key, field)
            if stored is None or postings.older_format(stored):  # not read: searches build masks
                continue
            why = postings.unusable(root, key, field, stored, generation, manifest.get("sha256"))
            if why is None:
                why = _differs(paths, stored, layout, values, numbers, ranges, codes)
            if why is not None:
                problems.append(Problem(str(paths["manifest"]), why, "index", key))
    return problems


def _layout_differs(paths: dict[str, Path], stored: dict, layout: ListLayout) -> str | None:
    for name in postings.LAYOUT_ARRAYS:
        if sha256_file(paths[name]) != stored.get(f"{name}_sha256"):
            return f"{paths[name].name} does not match its manifest's checksum"
        if not np.array_equal(np.load(paths[name]), getattr(layout, name)):
            return "list layout differs from the FAISS file's lists"
    return None


def _differs(paths: dict[str, Path], stored: dict, layout: ListLayout, values: pa.Array, numbers: pa.Array,
             ranges: np.ndarray, codes: np.ndarray) -> str | None:
    for name in postings.FILES:
        if sha256_file(paths[name]) != stored.get(f"{name}_sha256"):
            return f"{paths[name].name} does not match its manifest's checksum"
    rows, counts = postings.build(layout, codes, ranges)
    written = postings.read_dictionary(paths["values"])
    if (written.column("value").to_pylist() != values.to_pylist()
            or not written.column("number").equals(pa.chunked_array([numbers.cast(pa.float64())]))
            or not np.array_equal(written.column("range").to_numpy(), ranges)
            or not np.array_equal(np.load(paths["codes"]), codes)
            or not np.array_equal(np.load(paths["rows"]), rows) or not np.array_equal(np.load(paths["counts"]), counts)):
        return "postings differ from the catalog's values and the FAISS file's lists"
    return None
