"""Columns written with a snapshot for its readers: the specimen ids, each specimen's
listing and trait masks in specimen order, and each text field a filter can name as a code
per specimen, and each trait's measurements and mask confidences as numbers per specimen.

Read from the catalog, each of these costs a scan of a whole table on a reader's query path,
or memory that grows with the collection: the first search under a locality or a date
filter encoded the field's column (28 s and 15 s at ten million specimens), the first
filtered search read every specimen id, and the listing and masks a search joins to its
hits were either all held in memory (14 s to load at ten million, about 1.2 KB per
specimen) or asked of DuckDB per search (by specimen id, a hash of the image's path spread
over every row group: a scan, 13 ms at a million; by row id, 2 ms a query, DuckDB's
per-query floor). Written at publish instead, a filter maps two files and compares the
field's few distinct values, then gathers one int32 per specimen, and a hit's listing and
mask are one positional read each (:class:`RowFile`), nothing held. The price is a second
copy of the masks on disk (their RLE text as JSON, about 440 bytes a mask on the bench).

Layout, in ``<snapshot>.vectors/columns/`` beside the vectors at rest and the postings::

    specimens.ids.npy                  (specimens,) int64, ascending: the order of every
                                       file below
    specimens.rows.bin, .offsets.npy   each specimen's listing row as a JSON array, back to
                                       back; (specimens + 1,) int64 offsets into it
    masks.<trait>.rows.bin, .offsets.npy  each specimen's mask row of that trait (its lowest
                                       trait id; empty where it has none)
    <source>.<column>.codes.npy        (specimens,) int32: index into the values (-1: no
                                       value), for the specimen columns but ``path`` and
                                       every metadata key
    <source>.<column>.values.arrow     ``value`` (distinct, text) and ``number`` (DuckDB's
                                       TRY_CAST to DOUBLE), Arrow IPC
    measurement.<trait>.numbers.npy, .valid.npy
    confidence.<trait>.numbers.npy, .valid.npy
                                       (columns, specimens) float64: a trait's numeric
                                       measurements or mask confidences (0 where none), one
                                       row per column its manifest names, and their validity
                                       as bits (numpy's little bit order), (columns,
                                       ceil(specimens / 8)) uint8; the trait's name has its
                                       dots escaped. One set per trait, not per column: a
                                       publish writes and syncs a few files per trait, not
                                       dozens. The text measurement (the dominant colour) is
                                       ``measurement.<trait>.dominant_color`` codes and values,
                                       like a text field. Only columns some specimen has a
                                       value in, of traits with at most one mask per specimen
                                       (instances measured apart read the catalog)
    <stem>.json                        manifest: specimens, the rows' column names, bytes
                                       and sha256 per file

Everything is written inside the staging copy before the snapshot pointer moves, like the
postings, each file under a temporary name, fsynced and renamed, its manifest last: a
publish that dies half-way leaves no version to point at. A reader uses a set of files only
when its manifest is there and every file has the size it records, else it reads the
catalog as before (a snapshot published before these files existed still searches); a row
whose specimen id is not the one asked for sends the ask to the catalog. verify checks each
file against its manifest's checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import ipc

from sst_search.measure import FIELDS as MEASUREMENT_FIELDS
from sst_search.store.columns import LISTING_COLUMNS, MASK_COLUMNS, text_values
from sst_search.store.filters import CONFIDENCE_FIELDS, SPECIMEN_FIELDS, ColumnValues
from sst_search.store.verify import Problem
from sst_search.vector_search.at_rest import save_array, vectors_dir, will_need
from sst_search.vector_search.indexes import atomic_write, read_json, write_json
from sst_search.vector_search.vector_table import sorted_rows
from sst_search.weights import sha256_file

#: Specimen fields not written: a path is unique per specimen, so its "dictionary" is the column itself.
UNCOLUMNED = {"path"}
SPECIMENS = "specimens"
#: Files of a set that are not ``.npy`` arrays: an Arrow IPC file, and rows as JSON text.
SUFFIXES = {"values": "arrow", "rows": "bin"}
#: Rows of a ``rows`` file read from DuckDB at a time when it is written.
CHUNK = 100_000
#: Per-trait columns of each filter source: the table they live in and their names and SQL types.
TRAIT_COLUMNS = {"measurement": ("trait_measurements", [(f.name, f.sql_type) for f in MEASUREMENT_FIELDS]),
                 "confidence": ("trait_masks", [(name, "DOUBLE") for name in CONFIDENCE_FIELDS])}
#: Bytes of a trait's columns read from DuckDB in one query when they are written (8 a
#: specimen per column): all of them at once for a small store, 8 at ten million specimens.
TRAIT_QUERY_BYTES = 640 << 20


def columns_dir(db_path: str | Path) -> Path:
    return vectors_dir(db_path) / "columns"


def per_hit_files(db_path: str | Path) -> set[Path]:
    """The listing and mask rows files: a search reads a row of each per hit, so a reader need
    not hold them (several GB at ten million specimens). Their offsets (8 bytes a specimen)
    are not among them: each hit looks one up through a mapping, a disk read per hit when cold."""
    return set(columns_dir(db_path).glob(f"*.rows.{SUFFIXES['rows']}"))


def field_stem(source: str, column: str, trait: str | None = None) -> str:
    return ".".join(quote(part, safe="") for part in (source, *([trait] if trait is not None else []), column))


def trait_stem(source: str, trait: str) -> str:
    """The stem of a trait's numeric columns: its name's dots escaped, so no trait's stem is
    another trait's text column (``measurement.<trait>.<column>``)."""
    return f"{source}.{quote(trait, safe='').replace('.', '%2E')}"


def masks_stem(trait: str) -> str:
    return f"masks.{quote(trait, safe='')}"


def file_paths(root: Path, stem: str, names: list[str]) -> dict[str, Path]:
    """The files of one set (:data:`SUFFIXES`; any other name an array) and its ``manifest``."""
    return {**{name: root / f"{stem}.{name}.{SUFFIXES.get(name, 'npy')}" for name in names},
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


def write_snapshot(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    """Write the columns of the (staged, not yet published) store at ``db_path``, whose catalog ``con`` reads."""
    root = columns_dir(db_path)
    ids = con.execute("SELECT specimen_id FROM specimens ORDER BY 1").fetchnumpy()["specimen_id"].astype(np.int64)
    n = len(ids)
    listing = con.sql(f"SELECT {_json_row(LISTING_COLUMNS)} AS r FROM specimens ORDER BY specimen_id"
                      ).to_arrow_reader(CHUNK)
    write(root, SPECIMENS, n, {"ids": ids}, rows=(LISTING_COLUMNS, listing))
    for (trait,) in con.execute("SELECT DISTINCT trait_name FROM trait_masks ORDER BY 1").fetchall():
        masks = con.sql(  # one row per specimen (empty where it has no such mask), its lowest trait id
            f"SELECT CASE WHEN m.specimen_id IS NULL THEN '' ELSE {_json_row(MASK_COLUMNS, 'm.')} "
            f"END AS r FROM specimens s LEFT JOIN (SELECT {MASK_COLUMNS} FROM trait_masks WHERE trait_name = ? "
            "QUALIFY row_number() OVER (PARTITION BY specimen_id ORDER BY trait_id) = 1) m "
            "ON m.specimen_id = s.specimen_id ORDER BY s.specimen_id", params=[trait]).to_arrow_reader(CHUNK)
        write(root, masks_stem(trait), n, {}, rows=(MASK_COLUMNS, masks))
    for source, column in fields(con):
        write_text(root, field_stem(source, column), n, read_field(con, source, column))
    for source, trait, columns in trait_fields(con):
        numeric = [name for name, sql_type in columns if sql_type == "DOUBLE"]
        for name in (name for name, _ in columns if name not in numeric):  # the dominant colour
            values = _trait_query(con, source, trait, [name]).column(0)
            write_text(root, field_stem(source, name, trait), n, text_values(con, values, None))
        if numeric:
            _write_numeric_columns(con, root, n, source, trait, numeric)


def write_text(root: Path, stem: str, n: int, values: ColumnValues) -> None:
    write(root, stem, n, {"codes": values.codes.astype(np.int32)},
          pa.table({"value": values.values.cast(pa.large_string()), "number": values.numbers}))


def trait_fields(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """``(source, trait, [(column, SQL type)])`` of the per-trait columns written: those some
    specimen has a value in, of each trait no specimen has two entries of."""
    found = []
    for source, (table, columns) in TRAIT_COLUMNS.items():
        counts = ", ".join(f"count({name})" for name, _ in columns)
        for trait, single, *filled in con.execute(
                f"SELECT trait_name, count(*) = count(DISTINCT specimen_id), {counts} FROM {table} GROUP BY 1 ORDER BY 1"
        ).fetchall():
            kept = [column for column, count in zip(columns, filled, strict=True) if count]
            if single and kept:
                found.append((source, trait, kept))
    return found


def _trait_query(con: duckdb.DuckDBPyConnection, source: str, trait: str, columns: list[str]) -> pa.Table:
    """Some of one trait's columns, one entry per specimen in specimen order."""
    table = TRAIT_COLUMNS[source][0]  # table and column names come from the allow-lists above
    return con.sql(f"SELECT {', '.join(f'x.{name}' for name in columns)} FROM specimens s LEFT JOIN {table} x "
                   "ON x.specimen_id = s.specimen_id AND x.trait_name = ? ORDER BY s.specimen_id",
                   params=[trait]).to_arrow_table()


def _write_numeric_columns(con: duckdb.DuckDBPyConnection, root: Path, n: int, source: str, trait: str,
                           columns: list[str]) -> None:
    """A trait's numeric columns as one set: the numbers streamed to their file a few columns
    per query (8 bytes a specimen each: gigabytes at ten million), the validity bits, an
    eighth of a byte a specimen, gathered meanwhile and written after them."""
    valid = np.empty((len(columns), (n + 7) // 8), np.uint8)
    at_once = max(1, TRAIT_QUERY_BYTES // (8 * max(1, n)))

    def numbers() -> Iterator[np.ndarray]:
        for start in range(0, len(columns), at_once):
            read = _trait_query(con, source, trait, columns[start : start + at_once])
            for j, values in enumerate(read.columns, start):
                values = values.combine_chunks()
                valid[j] = np.packbits(values.is_valid().to_numpy(zero_copy_only=False), bitorder="little")
                yield pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)

    write(root, trait_stem(source, trait), n, {"numbers": Streamed(np.dtype(np.float64), (len(columns), n), numbers()),
                                                "valid": valid}, columns=columns)


def _json_row(columns: str, prefix: str = "") -> str:
    """SQL for one row of ``columns`` as a JSON array, in their order (the ``metadata`` JSON
    column as its text, as the catalog's reads return it)."""
    names = [c.strip() for c in columns.split(",")]
    return "json_array(" + ", ".join(f"{prefix}{c}::VARCHAR" if c == "metadata" else f"{prefix}{c}" for c in names) + \
        ")::VARCHAR"


@dataclass(frozen=True)
class Streamed:
    """An array of ``shape`` given as its rows (``shape[1:]`` each), in order, written as
    they come: never all in memory."""

    dtype: np.dtype
    shape: tuple[int, ...]
    rows: Iterator[np.ndarray]

    def save(self, path: str) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        count = 0
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            for row in self.rows:
                if row.shape != self.shape[1:]:
                    raise ValueError(f"{path}: a row of shape {row.shape} for an array of {self.shape}")
                fh.write(np.ascontiguousarray(row, self.dtype).tobytes())
                count += 1
        if count != self.shape[0]:
            raise ValueError(f"{path}: {count} rows written of {self.shape[0]}")


def write(root: Path, stem: str, n: int, arrays: dict[str, np.ndarray | Streamed], values: pa.Table | None = None,
          rows: tuple[str, pa.RecordBatchReader] | None = None, columns: list[str] | None = None) -> None:
    """One set of files, its manifest last: ``arrays`` as ``.npy``, in their order (a
    :class:`Streamed` one as its rows come); ``values`` as an Arrow IPC file; ``rows``
    (``(columns, reader of one JSON array per row)``) as their JSON text back to back plus
    their offsets, written a chunk at a time (millions of masks are never all in memory).
    ``columns``: the names of the arrays' rows (a trait's columns), for the manifest."""
    names = [*arrays, *(["values"] if values is not None else []), *(["rows", "offsets"] if rows else [])]
    paths = file_paths(root, stem, names)
    for name, array in arrays.items():
        atomic_write(paths[name], array.save if isinstance(array, Streamed) else
                     lambda tmp, array=array: save_array(tmp, array))
    if values is not None:
        def write_values(tmp: str) -> None:
            with ipc.new_file(tmp, values.schema) as writer:
                writer.write_table(values)

        atomic_write(paths["values"], write_values)
    digests: dict[str, str] = {}  # of the files hashed as they are written (the rows: gigabytes at millions)
    if rows is not None:
        ends: list[np.ndarray] = []

        def write_rows(tmp: str) -> None:
            written, digest = 0, hashlib.sha256()
            with open(tmp, "wb") as fh:
                for batch in rows[1]:
                    text = batch.column(0).cast(pa.large_string())
                    _, offsets, data = text.buffers()
                    bounds = np.frombuffer(offsets, np.int64, len(text) + 1, text.offset * 8)
                    if bounds[-1] > bounds[0]:  # a chunk of specimens none of which has the mask has no text
                        chunk = memoryview(data)[bounds[0]:bounds[-1]]
                        fh.write(chunk)
                        digest.update(chunk)
                    ends.append(bounds[1:] - bounds[0] + written)
                    written += int(bounds[-1] - bounds[0])
            digests["rows"] = digest.hexdigest()

        atomic_write(paths["rows"], write_rows)
        offsets = np.concatenate([np.zeros(1, np.int64), *ends])
        atomic_write(paths["offsets"], lambda tmp: save_array(tmp, offsets))
    if rows:
        columns = [c.strip() for c in rows[0].split(",")]
    manifest = {"specimens": n, **({"columns": columns} if columns is not None else {}),
                "files": {name: {"bytes": paths[name].stat().st_size, "sha256": digests.get(name) or sha256_file(paths[name])}
                          for name in names}}
    write_json(paths["manifest"], manifest)


def _manifest(path: Path) -> dict | None:
    manifest = read_json(path)
    return manifest if manifest is not None and isinstance(manifest.get("files"), dict) else None


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
        self._sets: dict[tuple[str, ...], dict | None] = {}

    def _open(self, stem: str, names: list[str], n: int | None,
              shaped: Callable[[dict], dict[str, tuple[int, ...]]] | None = None) -> dict | None:
        """The set's files mapped (``shaped``: from its manifest, the shapes of arrays not of
        one entry per specimen)."""
        with self._lock:
            if (stem, *names) not in self._sets:
                self._sets[(stem, *names)] = self._map(stem, names, n, shaped or (lambda manifest: {}))
            return self._sets[(stem, *names)]

    def _map(self, stem: str, names: list[str], n: int | None,
             shaped: Callable[[dict], dict[str, tuple[int, ...]]]) -> dict | None:
        paths = file_paths(self.root, stem, names)
        manifest = _manifest(paths["manifest"])
        if manifest is None or set(manifest["files"]) != set(names) or _unusable(paths, manifest, n) is not None:
            return None
        size = manifest["specimens"]
        try:
            found = {name: np.load(paths[name], mmap_mode="r") for name in names if name not in SUFFIXES}
            if "values" in names:
                found["values"] = ipc.open_file(pa.memory_map(str(paths["values"]))).read_all()
            shapes = shaped(manifest)
            if any(a.shape != shapes.get(name, (size + 1,) if name == "offsets" else (size,))
                   for name, a in found.items() if name not in SUFFIXES):
                return None
            found["manifest"] = manifest
            if "rows" in names:
                found["rows"] = RowFile(paths["rows"], found.pop("offsets"), manifest.get("columns"))
        except (OSError, ValueError, pa.ArrowException):
            return None
        return found

    def ids(self) -> np.ndarray | None:
        """The snapshot's specimen ids, ascending."""
        found = self._open(SPECIMENS, ["ids", "rows", "offsets"], None)
        return None if found is None else found["ids"]

    def field(self, source: str, column: str, n: int, trait: str | None = None) -> ColumnValues | None:
        """One filter field's column over the ``n`` specimens of :meth:`ids` (a measurement's
        or a confidence's: of ``trait``)."""
        numeric = self._numeric(source, column, n, trait) if trait is not None else None
        if numeric is not None:
            return numeric
        found = self._open(field_stem(source, column, trait), ["codes", "values"], n)
        if found is None or found["codes"].dtype != np.int32:
            return None
        values = found["values"]
        return ColumnValues(values.column("value").combine_chunks(), found["codes"], None,
                            values.column("number").combine_chunks())

    def _numeric(self, source: str, column: str, n: int, trait: str) -> ColumnValues | None:
        """A trait's numeric column, a row of its set (None: not among them, or no usable set)."""

        def shaped(manifest: dict) -> dict[str, tuple[int, ...]]:
            names = manifest.get("columns")
            width = len(names) if isinstance(names, list) else -1  # no list of names: no shape fits
            return {"numbers": (width, n), "valid": (width, (n + 7) // 8)}

        found = self._open(trait_stem(source, trait), ["numbers", "valid"], n, shaped)
        if found is None or column not in (found["manifest"].get("columns") or []):
            return None
        if found["numbers"].dtype != np.float64 or found["valid"].dtype != np.uint8:
            return None
        row = found["manifest"]["columns"].index(column)
        return ColumnValues(pa.Array.from_buffers(pa.float64(), n, [pa.py_buffer(found["valid"][row]),
                                                                     pa.py_buffer(found["numbers"][row])]))

    def rows(self, ids: list[int], trait: str | None = None) -> list[dict] | None:
        """The listing rows (``trait``: the mask rows of that trait) of those of ``ids`` that
        have one, as the catalog holds them; None: no usable files, ask the catalog."""
        found = self._row_file(ids, trait)
        return None if found is None else found[0].take(found[1])

    def ask(self, ids: list[int], traits: list[str | None]) -> None:
        """Ask the disk for the rows :meth:`rows` will read of each of ``traits`` (None: the
        listing), all files at once."""
        for trait in traits:
            found = self._row_file(ids, trait)
            if found is not None:
                found[0].ask(found[1])

    def open_rows(self, traits: Iterable[str | None]) -> None:
        """Open the rows files of each of ``traits`` (None: the listing) as :meth:`rows` does
        (a reader's warm-up: the first search's hits otherwise read their manifests and map
        their offsets)."""
        for trait in traits:
            self._row_file([], trait)

    def _row_file(self, ids: list[int], trait: str | None) -> tuple[RowFile, np.ndarray] | None:
        """The rows file of the listing or of ``trait``'s masks, and the rows of those of
        ``ids`` that are specimens; None: no usable files."""
        specimens = self._open(SPECIMENS, ["ids", "rows", "offsets"], None)
        if specimens is None:
            return None
        file = specimens["rows"]
        if trait is not None:
            masks = self._open(masks_stem(trait), ["rows", "offsets"], len(specimens["ids"]))
            if masks is None:
                return None
            file = masks["rows"]
        found, at = sorted_rows(specimens["ids"], np.asarray(ids, np.int64))
        return file, at[found]


class RowFile:
    """Rows stored as JSON text back to back, a few read at a time: a row is one positional
    read at its offset (7 microseconds), nothing mapped. Sliced out of a memory-mapped
    columnar file instead, each of a row's columns would map its own piece of the file with
    the kernel's fault-around (64 KB each), and a reader would hold the whole file resident
    after a few hundred searches; read with a record batch, a row cost 0.1 ms."""

    def __init__(self, path: Path, offsets: np.ndarray, columns: list[str] | None) -> None:
        if not isinstance(columns, list) or offsets.dtype != np.int64:
            raise ValueError(f"{path.name}: its manifest names no columns")
        self._file = open(path, "rb")  # noqa: SIM115 -- held for the snapshot's lifetime
        # A plain view of the mapped offsets: numpy's memmap subclass costs microseconds per
        # index taken, a fifth of a search's time for its ten hits' rows at 10M specimens.
        self._offsets, self._columns = np.asarray(offsets), columns

    def take(self, rows: np.ndarray) -> list[dict]:
        """The rows (empty ones left out); the disk is asked for all of them at once
        (:meth:`ask`) before they are read, so the hits of a search of a cold file wait about
        one disk read, not one per hit."""
        spans = self.ask(rows)
        fd = self._file.fileno()
        return [dict(zip(self._columns, json.loads(os.pread(fd, size, start)), strict=True)) for start, size in spans]

    def ask(self, rows: np.ndarray) -> list[tuple[int, int]]:
        """Ask the disk for the rows (``POSIX_FADV_WILLNEED``) without reading them; their
        ``(offset, size)`` spans, empty rows left out."""
        rows = np.asarray(rows, np.int64)
        starts, sizes = self._offsets[rows], self._offsets[rows + 1] - self._offsets[rows]
        kept = sizes > 0
        spans = list(zip(starts[kept].tolist(), sizes[kept].tolist(), strict=True))
        will_need(self._file.fileno(), spans)
        return spans


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
