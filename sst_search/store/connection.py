"""The store's DuckDB file opened: one cursor per thread, statements, and transactions.

Opening is where a store's troubles first show (another process holds the file, the folder
is read-only, the file is damaged, or the live file is gone while snapshots of it remain);
:meth:`Connection.open` turns each into one message that says what to do. After that every
module of the store writes through :meth:`Connection.execute` and
:meth:`Connection.transaction` (DuckDB's ``begin``/``commit``/``rollback``), with the Arrow
tables a statement reads registered for exactly as long as the transaction lasts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import pyarrow as pa

from sst_search.store import verify as vf
from sst_search.store.catalog import duckdb_memory_limit
from sst_search.store.errors import StoreDamagedError, StoreError, is_lock_conflict


#: Write-ahead log a bulk write lets pile up before DuckDB checkpoints. Inserting 2M rows of
#: 768 SMALLINTs in transactions of 100,000 into a keyed table, 1 GiB cut the commits (and the
#: last checkpoint) from 37.5 to 31.3 s and the inserts from 31.6 to 27.2 s; 8 GiB saved no more.
BULK_CHECKPOINT_THRESHOLD = "1GiB"


def repair_hint(db_path: Path) -> str:
    return (f"`sst-search verify --db {db_path} --repair` rebuilds damaged FAISS files from the catalog "
            "and restores a damaged database from the last verified snapshot")


def _published_versions(db_path: Path) -> bool:
    versions = db_path.with_name(db_path.name + ".versions")
    return versions.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in versions.iterdir())


def _writable(db_path: Path) -> bool:
    """Whether this process may write the store's file and folder (False on a read-only mount)."""
    target = db_path if db_path.exists() else db_path.parent
    return os.access(target, os.W_OK) and os.access(db_path.parent, os.W_OK)


class Connection:
    """One process's connection to a store file, handing each thread its own cursor."""

    def __init__(self, db_path: Path, con: duckdb.DuckDBPyConnection) -> None:
        self.db_path = db_path
        self._connection = con
        self._local = threading.local()

    @classmethod
    def open(cls, db_path: Path, read_only: bool) -> Connection:
        """Connect to ``db_path`` (created when writable), or raise a :class:`StoreError` that
        says why not and what to do."""
        if read_only and not db_path.is_file():
            raise FileNotFoundError(f"{db_path}: no such store")
        if not read_only and not db_path.exists() and _published_versions(db_path):
            raise StoreDamagedError(
                [vf.Problem(str(db_path), "the live database is missing, but versions of it were published", "database")],
                "nothing was written (a new store would lose every review decision); " + repair_hint(db_path))
        if not read_only:  # a new store in a new folder: DuckDB would blame a lock instead
            db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = duckdb.connect(str(db_path), read_only=read_only, config={"memory_limit": duckdb_memory_limit()})
        except duckdb.Error as exc:
            if is_lock_conflict(exc):
                mode = "read-only" if read_only else "for writing"
                raise StoreError(
                    f"{db_path}: cannot open {mode}: {exc}. Only one process may write a store at a time, "
                    "and none may read it meanwhile"
                ) from exc
            if not read_only and not _writable(db_path):
                raise StoreError(f"{db_path}: cannot be written: its folder or file system is read-only "
                                 "(the store itself is not damaged; `sst-search verify` reads it)") from exc
            raise StoreDamagedError([vf.Problem(str(db_path), f"database does not open ({exc})", "database")],
                                    repair_hint(db_path)) from exc
        return cls(db_path, con)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """This thread's cursor on the database.

        A DuckDB connection must not be used by two threads at once; a cursor per thread
        lets the app's sessions query in parallel (one session segmenting an upload never
        holds up another's search) without a lock around the whole store.
        """
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self._connection.cursor()
        return cursor

    def execute(self, sql: str, params: list | None = None) -> None:
        """Run a statement whose result nobody reads (DuckDB refuses new work on a cursor while
        a result is unread, so it is drained here)."""
        self.con.execute(sql, params or []).fetchall()

    def insert_select(self, table: str, source: str, columns: Sequence[str], replace: bool = False) -> None:
        """``INSERT [OR REPLACE] INTO table (columns) SELECT columns FROM source``."""
        cols = ", ".join(columns)
        self.execute(f"INSERT {'OR REPLACE ' if replace else ''}INTO {table} ({cols}) SELECT {cols} FROM {source}")

    @contextmanager
    def registered(self, tables: Mapping[str, pa.Table]) -> Iterator[duckdb.DuckDBPyConnection]:
        """Arrow ``tables`` visible to this thread's statements under their names, while the block runs."""
        con = self.con
        for name, table in tables.items():
            con.register(name, table)
        try:
            yield con
        except BaseException:
            for name in tables:  # a transaction the error aborted refuses this; the error itself is what to tell
                with suppress(duckdb.Error):
                    con.unregister(name)
            raise
        for name in tables:
            con.unregister(name)

    @contextmanager
    def transaction(self, tables: Mapping[str, pa.Table] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction on this thread's cursor, committed when the block ends and rolled
        back when it raises; ``tables`` (Arrow) are registered for its statements to read."""
        with self.registered(tables or {}) as con:
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()

    @contextmanager
    def few_checkpoints(self, threshold: str = BULK_CHECKPOINT_THRESHOLD) -> Iterator[None]:
        """DuckDB checkpoints when ``threshold`` of write-ahead log has piled up, not DuckDB's
        16 MiB, while the block runs, and once when it ends: a bulk write of many transactions
        (:func:`~sst_search.store.writer.write_chunks`) otherwise checkpoints after each of
        them, and each checkpoint costs more as the tables and their keys grow (at 10M x 768,
        commits took 296 s of the build, 1.8 s a chunk at first and 3.9 s at the end). Every
        commit is still in the log, so a crash loses no committed transaction."""
        previous = self.con.execute("SELECT current_setting('checkpoint_threshold')").fetchone()[0]
        self.execute(f"SET checkpoint_threshold = '{threshold}'")
        try:
            yield
        finally:
            self.execute(f"SET checkpoint_threshold = '{previous}'")
        self.execute("CHECKPOINT")

    def close(self) -> None:
        self._connection.close()
