"""``sst-search verify``: the full integrity check of a store, and its repair."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from ..store import Store
from ..store.errors import StoreError
from ..store.snapshots import current_version, last_verified, publish_snapshot, restore_snapshot, versions_dir
from ..store.verify import verify_files
from .errors import STORAGE_FAULT, console, exit_codes
from .options import db_option


def verify(
    db: Path = db_option("checked, and repaired with --repair"),
    repair: bool = typer.Option(False, "--repair", help="Rebuild damaged FAISS files from the catalog; restore a "
                                "damaged database from the last verified snapshot (the damaged files are kept aside)."),
) -> None:
    """Read every table (DuckDB checks each block's checksum) and check every FAISS file
    (loads, checksum, count, ids, a sample of vectors against the catalog), for the live
    store and the published snapshot readers use.

    Exit status: 0 intact (or repaired), 2 no such store, 3 damage found (or not repairable).
    """
    with exit_codes(StoreError):
        if not db.is_file() and current_version(db) is None:
            raise FileNotFoundError(f"{db}: no such store")
        live, published = _check(db)
        if not live and not published:
            console.print(f"{escape(str(db))}: intact (database, FAISS files and the published snapshot)")
            return
        if not repair:
            console.print("run again with --repair to fix what can be fixed")
            raise typer.Exit(STORAGE_FAULT)
        if any(p.kind == "database" for p in live):
            version = last_verified(db)
            if version is None:
                raise StoreError(f"{db}: the database is damaged and no verified snapshot exists to restore it from; "
                                 "move the file away and index the collection again")
            aside = restore_snapshot(db, version)
            console.print(f"restored {escape(str(db))} from verified snapshot {version}; damaged files kept in "
                          f"{escape(str(aside))}; the next `sst-search index` redoes the work done since")
        with Store.open(db) as store:
            rebuilt = store.repair_indexes(deep=True)
        for embedder, trait in rebuilt:
            console.print(f"rebuilt {escape(embedder)}/{escape(trait)} from the catalog")
        if live or published:
            publish_snapshot(db)
        live, published = _check(db)
        if live or published:
            raise typer.Exit(STORAGE_FAULT)
        console.print(f"{escape(str(db))}: repaired and verified; published a fresh snapshot")


def _check(db: Path) -> tuple[list, list]:
    """Problems of the live store and of the snapshot the pointer names, printed as found."""
    live = verify_files(db) if db.is_file() else []
    version = current_version(db)
    published = verify_files(versions_dir(db) / version / db.name) if version else []
    for p in live:
        console.print(f"[red]damaged:[/red] {escape(str(p))}")
    for p in published:
        console.print(f"[red]damaged (published version {version}):[/red] {escape(str(p))}")
    return live, published
