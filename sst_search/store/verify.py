"""Integrity checks: is every file a reader will touch intact and in agreement with the catalog?

Two kinds of damage, repaired differently:

- **database**: DuckDB keeps a checksum per block and checks it whenever it reads one, so
  reading every row of every table finds any damaged block a query could hit. The database
  is the truth; a damaged one is restored from the last verified snapshot.
- **index**: a FAISS file must load, hold the manifest's checksum and count, the catalog's
  ids, and the catalog's *vectors*: a sample of them is reconstructed and compared, which
  catches a valid file of another trait with the same ids (ids alone would pass). FAISS
  files are a cache and are rebuilt from the catalog's vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb
import faiss
import numpy as np

from sst_search.errors import first_line
from sst_search.store import vector_column
from sst_search.store.catalog import duckdb_memory_limit
from sst_search.store.errors import StoreError, is_lock_conflict
from sst_search.vector_search import indexes
from sst_search.weights import sha256_file

#: Vectors compared per index: enough to catch a swapped or garbled file, cheap for any size.
SAMPLE = 32


@dataclass(frozen=True)
class Problem:
    """One damaged file and what is wrong with it."""

    path: str
    what: str
    kind: Literal["database", "index", "review"]
    key: tuple[str, str] | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def check_database(con: duckdb.DuckDBPyConnection, db_path: Path) -> list[Problem]:
    """Read every row of every table (DuckDB checks each block's checksum on the way)."""
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND NOT temporary"
        ).fetchall()]
        for table in tables:
            reader = con.sql('SELECT * FROM "{}"'.format(table.replace('"', '""'))).to_arrow_reader(65_536)
            for _ in reader:
                pass
    except duckdb.Error as exc:
        return [Problem(str(db_path), f"database is damaged ({first_line(exc)})", "database")]
    return []


def index_states(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int, int]]:
    """``(embedder, trait, generation, dim)`` of every index the catalog knows."""
    return con.execute("SELECT embedder, trait_name, generation, dim FROM index_state ORDER BY 1, 2").fetchall()


def reconstruct(index: faiss.Index, ids: Iterable[int], own: bool = False) -> np.ndarray:
    """The stored vectors of ``ids``, as the index would score them; ``own``: the index is the
    caller's to change (one it loaded to check), else it is left as it was. A RuntimeError
    where the index cannot give its vectors back."""
    if indexes.is_fast_scan(index):
        raise RuntimeError("fast-scan codes cannot be reconstructed")
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIVF):
        # IVF lists hold ids, not positions: look them up through a hash table, on a copy
        # unless the index is the caller's own (maybe it serves searches). A copy of a
        # 10-million-vector index is gigabytes, so verify, which loads (maps) its own, skips it.
        if not own:
            clone = faiss.clone_index(inner)  # owns the copy: keep it referenced while in use
            inner = faiss.downcast_index(clone)
        inner.set_direct_map_type(faiss.DirectMap.Hashtable)
    ids = [int(i) for i in ids]
    if not ids:
        return np.zeros((0, index.d), np.float32)
    return np.stack([inner.reconstruct(i) for i in ids]).astype(np.float32)


def _mismatches(index: faiss.Index, ids: np.ndarray, expected: np.ndarray, own: bool) -> int:
    """How many of ``ids`` the index does not hold as ``expected``. Exact indexes must give the
    vectors back to float precision; compressed codes (SQ/PQ) only close to them (cosine >= 0.5,
    while another trait's vector scores near 0); indexes that cannot reconstruct must find each
    vector's own id, with such a score, among the sample's ids alone (in the whole index, a
    coarse code may rank the vector's near-twins above it)."""
    ivf = indexes.ivf_of(index)
    lossy = ivf is not None and ivf.code_size < 4 * index.d
    try:
        got = reconstruct(index, ids, own)
    except RuntimeError:  # IVF codes only (RaBitQ, fast-scan): flat and HNSW indexes give vectors back
        params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBatch(np.asarray(ids, np.int64)), nprobe=ivf.nprobe)
        scores, labels = index.search(expected, min(10, len(ids)), params=params)
        floor = 0.5 if lossy else 0.999
        return sum(1 for i, sid in enumerate(ids) if not (scores[i][labels[i] == sid] >= floor).any())
    if lossy:
        return int(((got * expected).sum(axis=1) < 0.5).sum())
    return int((~np.isclose(got, expected, atol=1e-4).all(axis=1)).sum())


def check_index(
    con: duckdb.DuckDBPyConnection,
    faiss_dir: Path,
    key: tuple[str, str],
    generation: int,
    dim: int,
    index: faiss.Index | None = None,
    sample: int = SAMPLE,
) -> list[Problem]:
    """Problems of one (embedder, trait) index; ``index`` given: check that in-memory copy instead of the file."""
    index_path, _ = indexes.index_paths(faiss_dir, *key)
    where = str(index_path)

    def problem(what: str) -> list[Problem]:
        return [Problem(where, what, "index", key)]

    manifest, own = None, index is None
    if index is None:
        manifest = indexes.read_manifest(faiss_dir, *key)
        if manifest is None:
            return problem("FAISS file missing (or its manifest is)")
        if manifest.get("generation") != generation:
            return problem(f"FAISS file is stale (generation {manifest.get('generation')}, catalog {generation})")
        if manifest.get("bytes") is not None and index_path.stat().st_size != manifest["bytes"]:
            return problem(f"FAISS file is {index_path.stat().st_size} bytes, its manifest says {manifest['bytes']}")
        if manifest.get("sha256") and sha256_file(index_path) != manifest["sha256"]:
            return problem("FAISS file does not match its manifest's checksum")
        if (wrong := indexes.lists_problem(faiss_dir, *key, manifest, checksum=True)) is not None:
            return problem(wrong)
        try:  # mapped: the checksum has just read the file, and a second copy in memory is gigabytes
            index = indexes.load_index(faiss_dir, *key, mapped=True, manifest=manifest)
        except RuntimeError as exc:
            return problem(f"FAISS file does not load ({first_line(exc)})")
    ids = con.execute(
        "SELECT specimen_id FROM vectors WHERE embedder = ? AND trait_name = ? ORDER BY specimen_id", list(key)
    ).fetchnumpy()["specimen_id"].astype(np.int64)
    if index.d != dim:
        return problem(f"FAISS index has dimension {index.d}, catalog {dim}")
    if manifest is not None and manifest.get("count") != index.ntotal:
        return problem(f"FAISS index holds {index.ntotal} vectors, its manifest says {manifest.get('count')}")
    faiss_ids = indexes.index_ids(index)
    if len(faiss_ids) != len(ids) or not np.array_equal(faiss_ids, ids):
        missing = np.setdiff1d(ids, faiss_ids).size
        extra = np.setdiff1d(faiss_ids, ids).size
        return problem(f"FAISS has {len(faiss_ids)} ids, catalog {len(ids)} "
                       f"({missing} missing from FAISS, {extra} not in catalog)")
    if not len(ids):
        return []
    picks = ids[np.unique(np.linspace(0, len(ids) - 1, min(sample, len(ids))).astype(np.int64))]
    found, expected = catalog_vectors(con, key, picks)
    wrong = _mismatches(index, found, expected, own)
    if wrong:
        return problem(f"{wrong} of {len(found)} sampled vectors differ from the catalog's (a file of another index?)")
    return []


def catalog_vectors(con: duckdb.DuckDBPyConnection, key: tuple[str, str], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, matrix)`` of the catalog's vectors of ``ids`` in index ``key``, in id order (a sample to compare with)."""
    table = con.sql(
        "SELECT specimen_id, vector FROM vectors WHERE embedder = ? AND trait_name = ? "
        "AND specimen_id IN (SELECT unnest(?::BIGINT[])) ORDER BY specimen_id",
        params=[*key, [int(i) for i in ids]],
    ).to_arrow_table()
    return table.column(0).to_numpy().astype(np.int64), vector_column.decode(table.column(1), len(table))


def check_indexes(con: duckdb.DuckDBPyConnection, faiss_dir: Path, sample: int = SAMPLE) -> list[Problem]:
    problems = []
    for embedder, trait, generation, dim in index_states(con):
        problems += check_index(con, faiss_dir, (embedder, trait), generation, dim, sample=sample)
    return problems


def check_corrections(con: duckdb.DuckDBPyConnection, db_path: Path) -> list[Problem]:
    """Corrected masks whose measurements are older than the correction (a correction killed
    half-way before corrections were written in one transaction)."""
    from sst_search.store.review_tables import stale_measurements

    return [Problem(str(db_path), f"specimen {sid}: the measurements of {trait!r} predate its corrected mask "
                                  f"(`sst-search measure --db {db_path}` measures the stored masks again)", "review")
            for sid, trait in stale_measurements(con)]


def open_read_only(db_path: Path) -> duckdb.DuckDBPyConnection:
    """Read-only, with the store's memory limit (sorting a large vectors table by id spills to
    disk past it) and no progress bar on the checking or publishing process's terminal."""
    con = duckdb.connect(str(db_path), read_only=True, config={"memory_limit": duckdb_memory_limit()})
    con.execute("SET enable_progress_bar = false").fetchall()
    return con


def check_beside(con: duckdb.DuckDBPyConnection, db_path: Path, faiss_dir: Path, sample: int = SAMPLE) -> list[Problem]:
    """Problems of the files beside the catalog, each kind checked once those it builds on are
    sound: the FAISS files, the vectors at rest, the filter postings, the reader columns."""
    from sst_search.store import filter_postings, published_columns, vectors_at_rest  # they build on this module

    return (check_indexes(con, faiss_dir, sample) or vectors_at_rest.check_all(con, db_path, sample)
            or filter_postings.check_all(con, db_path) or published_columns.check_all(con, db_path))


def verify_files(db_path: str | Path, sample: int = SAMPLE, corrections: bool = False,
                 then: Callable[[duckdb.DuckDBPyConnection], list[Problem]] | None = None) -> list[Problem]:
    """Full check of the store at ``db_path`` (database, FAISS files, vectors at rest, and with
    ``corrections`` the freshness of corrected masks' measurements), without changing anything.

    ``then`` runs on the same connection when nothing is wrong, and its problems are returned:
    a publish writes the files readers map from the copy it has just verified, without opening
    the copy again (an open costs more than verifying a small store's catalog)."""
    db_path = Path(db_path)
    if not db_path.is_file():
        return [Problem(str(db_path), "no such database file", "database")]
    try:
        con = open_read_only(db_path)
    except duckdb.Error as exc:
        if is_lock_conflict(exc):
            raise StoreError(f"{db_path}: cannot verify while another process writes it ({first_line(exc)})") from exc
        return [Problem(str(db_path), f"database does not open ({first_line(exc)})", "database")]
    try:
        problems = check_database(con, db_path)
        if not problems:
            try:
                problems = check_beside(con, db_path, db_path.with_name(db_path.name + ".faiss"), sample)
                if corrections:
                    problems += check_corrections(con, db_path)
                if not problems and then is not None:
                    problems = then(con)
            except duckdb.Error as exc:
                problems = [Problem(str(db_path), f"database is damaged ({first_line(exc)})", "database")]
        return problems
    finally:
        con.close()
