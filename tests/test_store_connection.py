"""The store's public transaction and its two kinds of opened store, on a real DuckDB file."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from sst_search.store import SnapshotStore, SpecimenRecord, Store, specimen_id


def _runs(store) -> int:
    return store.con.execute("SELECT count(*) FROM runs").fetchall()[0][0]


def test_a_transaction_commits_its_block_rolls_back_on_error_and_unregisters_its_tables(tmp_path):
    with Store.open(tmp_path / "t.duckdb") as store:
        ids = pa.table({"run_id": pa.array(["a", "b"]), "started_at": pa.array([0, 1], pa.timestamp("s"))})
        with store.connection.transaction({"_new_runs": ids}):
            store.connection.execute("INSERT INTO runs (run_id, started_at) SELECT run_id, started_at FROM _new_runs")
        assert _runs(store) == 2
        with pytest.raises(ZeroDivisionError), store.connection.transaction({"_new_runs": ids}):
            store.connection.execute("DELETE FROM runs")
            assert _runs(store) == 0  # seen inside the transaction
            1 / 0
        assert _runs(store) == 2  # rolled back
        with pytest.raises(duckdb.CatalogException):
            store.con.execute("SELECT * FROM _new_runs").fetchall()


def test_a_statement_that_fails_inside_registered_tables_is_the_error_raised(tmp_path):
    """DuckDB aborts the transaction when a statement fails, and then refuses to unregister
    the statement's tables: the constraint that failed is what the caller is told, not that
    the transaction is aborted, and the store writes on afterwards."""
    with Store.open(tmp_path / "t.duckdb") as store:
        runs = pa.table({"run_id": pa.array(["a", None]), "started_at": pa.array([0, 1], pa.timestamp("s"))})
        insert = "INSERT INTO runs (run_id, started_at) SELECT run_id, started_at FROM _new_runs"
        with pytest.raises(duckdb.ConstraintException, match="NOT NULL"), store.connection.transaction():
            with store.connection.registered({"_new_runs": runs}):
                store.connection.execute(insert)
        with store.connection.transaction({"_new_runs": runs.slice(0, 1)}):
            store.connection.execute(insert)
        assert _runs(store) == 1


def test_a_read_only_opening_is_a_snapshot_store_that_reads_and_refuses_to_write(tmp_path):
    db = tmp_path / "s.duckdb"
    record = SpecimenRecord(specimen_id=specimen_id("a.png"), path="/x/a.png", status="failed", error="bad")
    with Store.open(db) as store:
        store.write_batch([record])
    with Store.open(db, read_only=True) as snapshot:
        assert isinstance(snapshot, SnapshotStore) and not isinstance(snapshot, Store)
        assert snapshot.get_specimen(record.specimen_id)["error"] == "bad"
        assert snapshot.generations() is snapshot.generations()  # a snapshot remembers what it read
        for write in (lambda: snapshot.write_batch([record]), lambda: snapshot.relocate("/x", "/y"),
                      snapshot.require_writer):
            with pytest.raises(RuntimeError, match="read-only"):
                write()
        with pytest.raises(AttributeError):
            snapshot.no_such_method()
