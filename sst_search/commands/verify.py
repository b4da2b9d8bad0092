"""``sst-search verify``: the full integrity check of a store, and its repair."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from .. import Store, StoreError
from ..mask_review import remeasure_stale
from ..store.review_tables import salvage_decisions
from ..store.snapshots import (
    current_version,
    list_versions,
    pointer_path,
    pointer_problem,
    publish_snapshot,
    restore_newest_intact,
    versions_dir,
)
from ..store.verify import Problem, verify_files
from .errors import STORAGE_FAULT, console, exit_codes
from .options import db_option


def verify(
    db: Path = db_option("checked, and repaired with --repair"),
    repair: bool = typer.Option(False, "--repair", help="Rebuild damaged FAISS files from the catalog; restore a "
                                "damaged or missing database from the newest snapshot that still verifies (the "
                                "damaged files are kept aside); publish a fresh snapshot and pointer."),
) -> None:
    """Read every table (DuckDB checks each block's checksum) and check every FAISS file
    (loads, checksum, count, ids, a sample of vectors against the catalog), for the live
    store and the published snapshot readers use; check that the snapshot pointer names a
    version that exists, and that the live database exists when versions were published.

    Exit status: 0 intact (or repaired), 2 no such store, 3 damage found (or not repairable).
    """
    with exit_codes(StoreError):
        if not db.is_file() and not pointer_path(db).exists() and not list_versions(db):
            raise FileNotFoundError(f"{db}: no such store")
        live, published = _check(db)
        if not live and not published:
            console.print(f"{escape(str(db))}: intact (database, FAISS files and the published snapshot)")
            return
        if not repair:
            console.print("run again with --repair to fix what can be fixed")
            raise typer.Exit(STORAGE_FAULT)
        salvage: list[Path] = []
        if any(p.kind == "database" for p in live):
            version, aside, passed_over = restore_newest_intact(db)
            for newer, why in passed_over:
                console.print(f"passed over version {newer}: {escape(why)}")
            console.print(f"restored {escape(str(db))} from verified snapshot {version}; damaged files kept in "
                          f"{escape(str(aside))}; the next `sst-search index` redoes the work done since")
            salvage = [aside / db.name, *(versions_dir(db) / newer / db.name for newer, _ in passed_over)]
        with Store.open(db) as store:
            recovered = sum(salvage_decisions(store, source) for source in salvage if source.is_file())
            if recovered:
                console.print(f"recovered {recovered} review decisions newer than the snapshot from the damaged copies; "
                              "the next `sst-search index` embeds the corrected specimens again")
            remeasured = remeasure_stale(store)
            if remeasured:
                console.print(f"measured again {remeasured} specimens whose corrected masks were newer than their "
                              "measurements")
            rebuilt = store.repair_indexes(deep=True)
        for embedder, trait in rebuilt:
            console.print(f"rebuilt {escape(embedder)}/{escape(trait)} from the catalog")
        publish_snapshot(db)
        live, published = _check(db)
        if live or published:
            raise typer.Exit(STORAGE_FAULT)
        console.print(f"{escape(str(db))}: repaired and verified; published a fresh snapshot")


def _check(db: Path) -> tuple[list[Problem], list[Problem]]:
    """Problems of the live store and of what readers are pointed at, printed as found."""
    if db.is_file():
        live = verify_files(db, corrections=True)
    elif list_versions(db):  # deleted by hand: an index now would start an empty store
        live = [Problem(str(db), "the live database is missing (published versions exist)", "database")]
    else:
        live = []
    pointer = pointer_problem(db)
    if pointer is not None:
        published = [Problem(str(pointer_path(db)), pointer.split(": ", 1)[-1], "database")]
    else:
        version = current_version(db)
        published = verify_files(versions_dir(db) / version / db.name) if version else []
    for p in live:
        console.print(f"[red]damaged:[/red] {escape(str(p))}")
    for p in published:
        console.print(f"[red]damaged (what readers open):[/red] {escape(str(p))}")
    return live, published
