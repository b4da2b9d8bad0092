"""Columns written with a snapshot for its readers: the specimen ids, each specimen's
listing and trait masks in specimen order, and each text field a filter can name as a code
per specimen, all memory-mapped.

Read from the catalog, each of these costs a scan of a whole table on a reader's query path,
or memory that grows with the collection: the first search under a locality or a date
filter encoded the field's column (28 s and 15 s at ten million specimens), the first
filtered search read every specimen id, and the listing and masks a search joins to its
hits were either all held in memory (14 s to load at ten million, about 1.2 KB per
specimen) or asked of DuckDB per search (by specimen id, a hash of the image's path spread
over every row group: a scan, 13 ms at a million; by row id, 2 ms a query, DuckDB's
per-query floor). Written at publish instead, a filter maps two files and compares the
field's few distinct values, then gathers one int32 per specimen, and a hit's rows are
read from Arrow files in small record batches (a positional read of the batch
around each hit, under a millisecond for ten), leaving nothing resident. The price is
a second copy of the masks on disk (their RLE text, about 420 bytes a mask on the bench).

Layout, in ``<snapshot>.vectors/columns/`` beside the vectors at rest and the postings::

    specimens.ids.npy                  (specimens,) int64, ascending: the order of every
                                       file below
    specimens.rows.arrow               each specimen's listing row (what a search shows of
                                       a hit), Arrow IPC in record batches
    masks.<trait>.rows.arrow           each specimen's mask row of that trait (its lowest
                                       trait id; all null where it has none)
    <source>.<column>.codes.npy        (specimens,) int32: index into the values (-1: no
                                       value), for the specimen columns but ``path`` and
                                       every metadata key
    <source>.<column>.values.arrow     ``value`` (distinct, text) and ``number`` (DuckDB's
                                       TRY_CAST to DOUBLE)
    <stem>.json                        manifest: specimens, bytes and sha256 per file

Everything is written inside the staging copy before the snapshot pointer moves, like the
postings, each file under a temporary name, fsynced and renamed, its manifest last: a
publish that dies half-way leaves no version to point at. A reader uses a set of files only
when its manifest is there and every file has the size it records, else it reads the
catalog as before (a snapshot published before these files existed still searches); a row
whose specimen id is not the one asked for sends the ask to the catalog. verify checks each
file against its manifest's checksum.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from urllib.parse import quote

import duckdb
import numpy as np
import pyarrow as pa
from pyarrow import ipc

from sst_search.store.columns import LISTING_COLUMNS, MASK_COLUMNS, text_values
from sst_search.store.filters import SPECIMEN_FIELDS, ColumnValues
from sst_search.store.verify import Problem
from sst_search.vector_search.at_rest import save_array, vectors_dir
from sst_search.vector_search.indexes import atomic_write
from sst_search.vector_search.vector_table import sorted_rows
from sst_search.weights import sha256_file

#: Specimen fields not written: a path is unique per specimen, so its "dictionary" is the column itself.
UNCOLUMNED = {"path"}
SPECIMENS = "specimens"
#: Files of a set that are Arrow IPC files rather than ``.npy`` arrays.
ARROW_FILES = ("values", "rows")
#: Rows per record batch of a ``rows`` file: a hit's row is read with the batch holding it
#: (about 100 KB of masks on the bench).
BATCH = 256


def columns_dir(db_path: str | Path) -> Path:
    return vectors_dir(db_path) / "columns"


def field_stem(source: str, column: str) -> str:
    return f"{quote(source, safe='')}.{quote(column, safe='')}"


def masks_stem(trait: str) -> str:
    return f"masks.{quote(trait, safe='')}"


def file_paths(root: Path, stem: str, names: list[str]) -> dict[str, Path]:
    """The files of one set (:data:`ARROW_FILES` are Arrow IPC files, any other name an array) and its ``manifest``."""
    return {**{name: root / f"{stem}.{name}.{'arrow' if name in ARROW_FILES else 'npy'}" for name in names},
            "manifest": root / f"{stem}.json"}


def fields(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """``(source, column)`` of every field written: the specimen columns a filter names (but
    ``path``) and every metadata key."""
    keys = [k for (k,) in con.execute("SELECT DISTINCT key FROM specimen_metadata ORDER BY 1").fetchall()]
    return [("specimen", c) for f, c in SPECIMEN_FIELDS.items() if f not in UNCOLUMNED] + [("metadata", k) for k in keys]


def read_field(con: duckdb.DuckDBPyConnection, source: str, column: str) -> ColumnValues:
    """One field's values, one entry per specimen in specimen id order (null: none)."""
    if source == "specimen":  # column names come from the compiler's allow-list, never from user text
        table = con.sql(f"SELECT CAST({column} AS VARCHAR) AS v FROM specimens s ORDER BY s.specimen_id").to_arrow_table()
    else:  # one value per specimen and key: the key is specimen_metadata's primary key with the id
        table = con.sql("SELECT m.value AS v FROM specimens s LEFT JOIN specimen_metadata m "
                        "ON m.specimen_id = s.specimen_id AND m.key = ? ORDER BY s.specimen_id",
                        params=[column]).to_arrow_table()
    return text_values(con, table.column("v"), None)


def write_snapshot(db_path: Path) -> None:
    """Write the columns of the (staged, not yet published) store at ``db_path``."""
    root = columns_dir(db_path)
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        ids = con.execute("SELECT specimen_id FROM specimens ORDER BY 1").fetchnumpy()["specimen_id"].astype(np.int64)
        n = len(ids)
        write(root, SPECIMENS, n, {"ids": ids},
              {"rows": con.sql(f"SELECT {LISTING_COLUMNS} FROM specimens ORDER BY specimen_id").to_arrow_reader(BATCH)})
        for (trait,) in con.execute("SELECT DISTINCT trait_name FROM trait_masks ORDER BY 1").fetchall():
            masks = con.sql(  # one row per specimen (null where it has no such mask), its lowest trait id
                f"SELECT m.* FROM specimens s LEFT JOIN (SELECT {MASK_COLUMNS} FROM trait_masks WHERE trait_name = ? "
                "QUALIFY row_number() OVER (PARTITION BY specimen_id ORDER BY trait_id) = 1) m "
                "ON m.specimen_id = s.specimen_id ORDER BY s.specimen_id", params=[trait]).to_arrow_reader(BATCH)
            write(root, masks_stem(trait), n, {}, {"rows": masks})
        for source, column in fields(con):
            values = read_field(con, source, column)
            write(root, field_stem(source, column), n, {"codes": values.codes.astype(np.int32)},
                  {"values": pa.table({"value": values.values.cast(pa.large_string()), "number": values.numbers})})
    finally:
        con.close()


def write(root: Path, stem: str, n: int, arrays: dict[str, np.ndarray],
          tables: dict[str, pa.Table | pa.RecordBatchReader] | None = None) -> None:
    """One set of files: ``arrays`` as ``.npy``, ``tables`` as Arrow IPC files (a reader's
    batches written as they come, so millions of masks are never all in memory), manifest last."""
    tables = tables or {}
    names = [*arrays, *tables]
    paths = file_paths(root, stem, names)
    for name, array in arrays.items():
        atomic_write(paths[name], lambda tmp, array=array: save_array(tmp, array))
    for name, table in tables.items():
        def write_table(tmp: str, table=table, name=name) -> None:
            batches = table.to_batches() if isinstance(table, pa.Table) else table
            with ipc.new_file(tmp, table.schema) as writer:
                for batch in (rebatched(batches, BATCH) if name == "rows" else batches):
                    writer.write_batch(batch)

        atomic_write(paths[name], write_table)
    manifest = {"specimens": n, **({"batch": BATCH} if "rows" in tables else {}),
                "files": {name: {"bytes": paths[name].stat().st_size, "sha256": sha256_file(paths[name])}
                          for name in names}}
    atomic_write(paths["manifest"], lambda tmp: Path(tmp).write_text(json.dumps(manifest)))


def rebatched(batches, size: int):
    """``batches`` cut into batches of exactly ``size`` rows (the last one fewer), so a row's
    batch is its number divided by ``size``."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= size:
            table = pa.Table.from_batches(pending)
            yield from table.slice(0, size).combine_chunks().to_batches()
            rest = table.slice(size)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield from pa.Table.from_batches(pending).combine_chunks().to_batches()


def _manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def _unusable(paths: dict[str, Path], manifest: dict, n: int | None) -> str | None:
    """Why the files cannot be trusted without reading them, or None."""
    if n is not None and manifest.get("specimens") != n:
        return f"written for {manifest.get('specimens')} specimens, the catalog has {n}"
    for name, path in paths.items():
        if name != "manifest" and (not path.is_file() or path.stat().st_size != manifest["files"].get(name, {}).get("bytes")):
            return f"{path.name} is missing or not the size its manifest says"
    return None


class PublishedColumns:
    """The columns of one snapshot, each set mapped on first use (None: not usable, read the catalog)."""

    def __init__(self, db_path: Path) -> None:
        self.root = columns_dir(db_path)
        self._lock = threading.Lock()
        self._sets: dict[str, dict | None] = {}

    def _open(self, stem: str, names: list[str], n: int | None) -> dict | None:
        with self._lock:
            if stem not in self._sets:
                self._sets[stem] = self._map(stem, names, n)
            return self._sets[stem]

    def _map(self, stem: str, names: list[str], n: int | None) -> dict | None:
        paths = file_paths(self.root, stem, names)
        manifest = _manifest(paths["manifest"])
        if manifest is None or set(manifest["files"]) != set(names) or _unusable(paths, manifest, n) is not None:
            return None
        size = manifest["specimens"]
        try:
            found = {name: np.load(paths[name], mmap_mode="r") for name in names if name not in ARROW_FILES}
            if "values" in names:
                found["values"] = ipc.open_file(pa.memory_map(str(paths["values"]))).read_all()
            if "rows" in names:
                found["rows"] = RowFile(paths["rows"], manifest.get("batch"), size)
        except (OSError, ValueError, pa.ArrowException):
            return None
        if not all(a.shape == (size,) for name, a in found.items() if name not in ARROW_FILES):
            return None
        return found

    def ids(self) -> np.ndarray | None:
        """The snapshot's specimen ids, ascending."""
        found = self._open(SPECIMENS, ["ids", "rows"], None)
        return None if found is None else found["ids"]

    def field(self, source: str, column: str, n: int) -> ColumnValues | None:
        """One filter field's column over the ``n`` specimens of :meth:`ids`."""
        found = self._open(field_stem(source, column), ["codes", "values"], n)
        if found is None or found["codes"].dtype != np.int32:
            return None
        values = found["values"]
        return ColumnValues(values.column("value").combine_chunks(), found["codes"], None,
                            values.column("number").combine_chunks())

    def rows(self, ids: list[int], trait: str | None = None) -> list[dict] | None:
        """The listing rows (``trait``: the mask rows of that trait) of those of ``ids`` that
        have one, as the catalog holds them; None: no usable files, ask the catalog."""
        specimens = self._open(SPECIMENS, ["ids", "rows"], None)
        if specimens is None:
            return None
        table = specimens["rows"]
        if trait is not None:
            masks = self._open(masks_stem(trait), ["rows"], len(specimens["ids"]))
            if masks is None:
                return None
            table = masks["rows"]
        found, at = sorted_rows(specimens["ids"], np.asarray(ids, np.int64))
        return [row for row in table.take(at[found]) if row["specimen_id"] is not None]


class RowFile:
    """The rows of an Arrow file in record batches of ``batch`` rows, a few at a time: each is
    read with its batch (a positional read, about 100 KB), sliced out, and the batch dropped.
    Read through a memory mapping instead, each row's 13 columns would map 13 pieces of the
    file with the kernel's fault-around (64 KB each): a reader then holds the whole file
    resident after a few hundred searches."""

    def __init__(self, path: Path, batch: int | None, rows: int) -> None:
        self._reader = ipc.open_file(pa.OSFile(str(path)))
        if not isinstance(batch, int) or batch < 1 or self._reader.num_record_batches != -(-rows // batch):
            raise ValueError(f"{path.name}: not in record batches of the manifest's size")
        self._batch = batch
        self._lock = threading.Lock()  # one reader object, shared by the app's threads

    def take(self, rows: np.ndarray) -> list[dict]:
        out = []
        for b in np.unique(rows // self._batch):
            with self._lock:
                batch = self._reader.get_batch(int(b))
            out += batch.take(pa.array(rows[rows // self._batch == b] - b * self._batch)).to_pylist()
        return out


def check_all(con: duckdb.DuckDBPyConnection, db_path: Path) -> list[Problem]:
    """Problems of the columns beside the store at ``db_path``: each set present must be intact
    (its manifest's sizes and checksums) and written for the catalog's specimens (a snapshot
    without them is sound: its readers ask the catalog)."""
    root = columns_dir(db_path)
    if not root.is_dir():
        return []
    n = con.execute("SELECT count(*) FROM specimens").fetchone()[0]
    problems = []
    for path in sorted(root.glob("*.json")):
        manifest = _manifest(path)
        if manifest is None:
            problems.append(Problem(str(path), "manifest does not read", "database"))
            continue
        paths = file_paths(root, path.name.removesuffix(".json"), list(manifest["files"]))
        why = _unusable(paths, manifest, n) or next(
            (f"{paths[name].name} does not match its manifest's checksum" for name in manifest["files"]
             if sha256_file(paths[name]) != manifest["files"][name].get("sha256")), None)
        if why is not None:
            problems.append(Problem(str(path), why, "database"))
    return problems
