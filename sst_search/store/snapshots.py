"""Read-only snapshots of a store, so search keeps answering while a re-index runs.

DuckDB lets one process write a file and refuses read-only opens meanwhile, so the search
app cannot read the live store during an indexing run. Instead, the indexer *publishes*
the store at the end of every run: the DuckDB file and its FAISS folder are copied into a
new version folder and a small pointer file is switched to it atomically::

    <db>                       live store (the indexer's)
    <db>.faiss/                its FAISS cache
    <db>.versions/<version>/<db name>          a published copy
    <db>.versions/<version>/<db name>.faiss/   its FAISS cache
    <db>.versions/<version>/<db name>.vectors/ its vectors at rest (float16, memory-mapped by readers)
                                               and filter postings (rows per group and IVF list)
    <db>.current               JSON pointer {"version": ..., "published_at": ...}

Readers resolve the pointer once, when they open, and keep their version for as long as
they live; a later publish never touches a version a reader already has open, it only
moves the pointer.

Nothing damaged is published: the copy is fully verified (:mod:`verify`: every table read
back through DuckDB's block checksums, every FAISS file loaded and compared with the
catalog, the vectors at rest written from the verified catalog and checked against it)
*before* the pointer moves, and marked verified. Only the newest ``keep``
versions are kept, and never the newest verified one, so a run that fails verification
leaves readers, and a repair, a good version to fall back on. Published files get the
ordinary mode under the umask, so a search app running as another user can read them. Pruning an older one while
a reader still uses it is harmless on POSIX: the reader's open DuckDB file stays readable
until it closes, and a FAISS file that is gone is rebuilt in memory from the DuckDB
vectors (see :meth:`SnapshotStore.index`), so the reader still answers from its own version.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from sst_search.store import filter_postings, published_columns, vectors_at_rest
from sst_search.store.errors import StoreDamagedError, StoreError
from sst_search.store.verify import Problem, verify_files
from sst_search.vector_search.indexes import file_mode

log = logging.getLogger(__name__)

DEFAULT_KEEP = 2

#: Marker file in a version folder whose copy passed verification.
VERIFIED = "verified.json"


class SnapshotError(StoreError):
    """No consistent copy of the store can be made or found; the message says why."""


def versions_dir(db_path: str | Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".versions")


def pointer_path(db_path: str | Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".current")


def _faiss_dir(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".faiss")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    for path in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        _fsync_dir(path)


def _write_pointer(db_path: Path, version: str) -> None:
    pointer = pointer_path(db_path)
    payload = {"version": version, "published_at": datetime.now(timezone.utc).isoformat()}
    fd, tmp = tempfile.mkstemp(dir=pointer.parent, prefix=pointer.name + ".", suffix=".tmp")
    os.chmod(tmp, file_mode())
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, pointer)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(pointer.parent)


def current_version(db_path: str | Path) -> str | None:
    """The published version name the pointer names, or None before the first publish."""
    pointer = pointer_path(db_path)
    try:
        version = json.loads(pointer.read_text())["version"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{pointer}: unreadable snapshot pointer ({type(exc).__name__}: {exc}); "
                            "`sst-search verify --repair` publishes a fresh one") from exc
    if not isinstance(version, str) or not version or "/" in version or version.startswith("."):
        raise SnapshotError(f"{pointer}: the snapshot pointer names no version ({version!r}); "
                            "`sst-search verify --repair` publishes a fresh one")
    return version


def pointer_problem(db_path: str | Path) -> str | None:
    """What is wrong with the snapshot pointer (unreadable, or naming a version that is not
    there), or None when it is sound or absent."""
    try:
        version = current_version(db_path)
    except SnapshotError as exc:
        return str(exc)
    if version is None:
        return None
    if not isinstance(version, str) or not (versions_dir(db_path) / version / Path(db_path).name).is_file():
        return f"{pointer_path(db_path)}: names version {version!r}, which is not there"
    return None


def list_versions(db_path: str | Path) -> list[str]:
    """Published versions, oldest first (names sort by publication time)."""
    root = versions_dir(db_path)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _make_readable(root: Path) -> None:
    """Give the copied tree the mode plain files and folders get under the umask."""
    for path in [root, *root.rglob("*")]:
        os.chmod(path, file_mode(directory=path.is_dir()))


def is_verified(db_path: str | Path, version: str) -> bool:
    return (versions_dir(db_path) / version / VERIFIED).is_file()


def last_verified(db_path: str | Path) -> str | None:
    """The newest version whose copy passed verification, or None."""
    verified = [v for v in list_versions(db_path) if is_verified(db_path, v)]
    return verified[-1] if verified else None


def restore_newest_intact(db_path: str | Path) -> tuple[str, Path, list[tuple[str, str]]]:
    """Restore the live store from the newest published version that verifies *now*, trying
    older ones when a newer copy was damaged since it was published.

    Returns the version used, where the damaged files went, and ``(version, why)`` of each
    newer version passed over; :class:`StoreDamagedError` when none verifies.
    """
    db_path = Path(db_path)
    passed_over = []
    for version in reversed([v for v in list_versions(db_path) if is_verified(db_path, v)]):
        problems = verify_files(versions_dir(db_path) / version / db_path.name)
        if not problems:
            return version, restore_snapshot(db_path, version), passed_over
        passed_over.append((version, str(problems[0])))
    raise StoreDamagedError([f"version {v}: {why}" for v, why in passed_over] or [f"{db_path}: no verified snapshot"],
                            "no published version verifies; move the store away and index the collection again")


def publish_snapshot(db_path: str | Path, keep: int = DEFAULT_KEEP) -> Path:
    """Copy the store into a new version, verify the copy, and only then point readers at it;
    returns the copy's DB path.

    Call it after the writer closed the store. The database is opened for writing during
    the copy, which checkpoints it (no WAL left behind) and holds DuckDB's lock so no
    other writer can change the files being copied. A copy that fails verification is
    deleted and :class:`StoreDamagedError` names the damaged live files; the pointer and
    every published version stay as they were.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1: the current version is never pruned")
    db_path = Path(db_path)
    if not db_path.is_file():
        raise SnapshotError(f"{db_path}: no such store to publish")
    root = versions_dir(db_path)
    root.mkdir(parents=True, exist_ok=True)
    version = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}"
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{version}."))
    try:
        try:
            con = duckdb.connect(str(db_path))
        except duckdb.Error as exc:
            raise SnapshotError(
                f"{db_path}: cannot publish while another process writes it ({exc}); "
                "publish after the indexing run has closed the store"
            ) from exc
        try:
            con.execute("CHECKPOINT").fetchall()
            shutil.copy2(db_path, staging / db_path.name)
            faiss_dir = _faiss_dir(db_path)
            if faiss_dir.is_dir():
                shutil.copytree(faiss_dir, staging / faiss_dir.name, ignore=shutil.ignore_patterns("*.tmp"),
                                copy_function=_link_or_copy)
        finally:
            con.close()
        _make_readable(staging)
        # from a verified catalog only: a damaged one is reported, not copied
        problems = verify_files(staging / db_path.name, then=lambda con: _write_for_readers(con, staging / db_path.name))
        if problems:
            live = [str(p).replace(str(staging / db_path.name), str(db_path)) for p in problems]
            good = current_version(db_path)
            raise StoreDamagedError(
                live,
                "nothing was published"
                + (f"; readers keep verified version {good}" if good else "")
                + f". `sst-search verify --db {db_path} --repair` rebuilds damaged FAISS files from the catalog "
                "and restores a damaged database from the last verified snapshot",
            )
        (staging / VERIFIED).write_text(json.dumps({"verified_at": datetime.now(timezone.utc).isoformat()}))
        os.chmod(staging / VERIFIED, file_mode())
        _fsync_tree(staging)
        os.replace(staging, root / version)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_pointer(db_path, version)
    prune_snapshots(db_path, keep)
    return root / version / db_path.name


def _link_or_copy(source: str, target: str) -> None:
    """A published FAISS file shares the live one's blocks: the live files are replaced, never
    rewritten in place (:func:`~sst_search.vector_search.indexes.atomic_write` renames a new
    file over the old name), so a later write leaves the version's link as it was, and a
    FAISS index or a streamed build's vectors at rest (gigabytes at millions of vectors) is
    not stored twice. A copy where the file system cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _write_for_readers(con: duckdb.DuckDBPyConnection, staged: Path) -> list[Problem]:
    """The vectors at rest, the filter postings and the reader columns of the verified copy at
    ``staged``, written from its catalog (the vectors at rest checked against it); the
    problems found."""
    vectors_at_rest.write_snapshot(con, staged)
    problems = vectors_at_rest.check_all(con, staged)
    if not problems:  # the postings' rows are the vectors at rest's
        filter_postings.write_snapshot(con, staged)
        published_columns.write_snapshot(con, staged)
    return problems


def prune_snapshots(db_path: str | Path, keep: int = DEFAULT_KEEP) -> list[str]:
    """Delete all but the newest ``keep`` versions (never the current one, never the newest
    verified one); returns the deleted."""
    db_path = Path(db_path)
    current = current_version(db_path)
    versions = list_versions(db_path)
    spared = {current, last_verified(db_path)}
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in spared]
    for version in doomed:
        shutil.rmtree(versions_dir(db_path) / version, ignore_errors=True)
    # Staging folders of publishes that died mid-copy.
    root = versions_dir(db_path)
    if root.is_dir():
        for leftover in root.glob(".*"):
            if leftover.is_dir() and leftover.name[1:].split(".")[0] < (current or ""):
                shutil.rmtree(leftover, ignore_errors=True)
    return doomed


def resolve_snapshot(db_path: str | Path) -> Path:
    """The DB file a reader should open: the current published version, else the live store.

    The live store is returned only when nothing was published yet; if a writer holds it,
    reading is impossible and the error says so rather than failing later inside DuckDB.
    """
    db_path = Path(db_path)
    version = current_version(db_path)
    if version is not None:
        snapshot = versions_dir(db_path) / version / db_path.name
        if not snapshot.is_file():
            raise SnapshotError(f"{pointer_path(db_path)} names version {version!r}, but {snapshot} is missing")
        return snapshot
    if not db_path.is_file():
        raise SnapshotError(f"{db_path}: no such store")
    try:
        duckdb.connect(str(db_path), read_only=True).close()
    except duckdb.Error as exc:
        raise SnapshotError(
            f"{db_path}: the store is being written and no snapshot has been published yet ({exc}); "
            "wait for the indexing run to finish"
        ) from exc
    return db_path


def restore_snapshot(db_path: str | Path, version: str) -> Path:
    """Replace the live store by a published version; the damaged files are kept aside.

    Returns where the damaged database went (``<db>.damaged-<time>``). Work committed after
    that version is gone from the restored store; the next indexing run redoes it.
    """
    db_path = Path(db_path)
    source = versions_dir(db_path) / version / db_path.name
    if not source.is_file():
        raise StoreDamagedError([f"{source}: missing"], f"version {version} cannot be restored")
    aside = db_path.with_name(f"{db_path.name}.damaged-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}")
    aside.mkdir()
    live_faiss = _faiss_dir(db_path)
    for path in (db_path, db_path.with_name(db_path.name + ".wal"), live_faiss):
        if path.exists():
            os.replace(path, aside / path.name)
    shutil.copy2(source, db_path)
    if _faiss_dir(source).is_dir():
        shutil.copytree(_faiss_dir(source), live_faiss)
    _fsync_dir(db_path.parent)
    return aside
