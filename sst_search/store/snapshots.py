"""Published snapshots: what readers open while a writer re-indexes.

DuckDB gives one process the write lock and refuses read-only opens meanwhile, and a
half-finished run is not something a curator should search anyway. So at the end of every
run the indexer publishes a copy of the catalog and its FAISS files as a new version and
swaps a one-line pointer file atomically (write, fsync, ``os.replace``). Readers resolve
the pointer once and keep their version for as long as they have it open; the two newest
versions are kept so a reader that just resolved the previous one still finds it.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

KEEP = 2


def versions_dir(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".versions")


def pointer_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".current")


def publish_snapshot(db_path: str | Path) -> Path:
    """Copy a closed store (DuckDB file + FAISS dir) into a new version and point readers at it."""
    db_path = Path(db_path)
    version = versions_dir(db_path) / time.strftime("%Y%m%dT%H%M%S") / f"{time.time_ns() % 1_000_000_000:09d}"
    version.mkdir(parents=True)
    target = version / db_path.name
    shutil.copy2(db_path, target)
    faiss_dir = db_path.with_name(db_path.name + ".faiss")
    if faiss_dir.is_dir():
        shutil.copytree(faiss_dir, target.with_name(target.name + ".faiss"))
    pointer = pointer_path(db_path)
    tmp = pointer.with_name(pointer.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(str(target.relative_to(db_path.parent)))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, pointer)
    _prune(db_path, keep=KEEP)
    return target


def resolve_snapshot(db_path: str | Path) -> Path:
    """The catalog file a reader should open: the published version, else the live file."""
    db_path = Path(db_path)
    pointer = pointer_path(db_path)
    if pointer.is_file():
        target = db_path.parent / pointer.read_text().strip()
        if target.is_file():
            return target
    if not db_path.is_file():
        raise FileNotFoundError(f"{db_path}: no such index (run `sst-search index` first)")
    return db_path


def _prune(db_path: Path, keep: int) -> None:
    leaves = sorted(p.parent for p in versions_dir(db_path).glob(f"*/*/{db_path.name}"))
    for old in leaves[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
        if not any(old.parent.iterdir()):
            old.parent.rmdir()
