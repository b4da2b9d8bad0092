"""Relocation: specimens removed, re-pointed to new ids or paths, or a whole collection moved.

Each change is one transaction over every table that names the specimens (a table added
later with a ``specimen_id`` column included), with the generations of the indexes whose
ids it changes bumped in it (:mod:`sst_search.store.generations`), so an index never keeps a
removed specimen or a re-keyed one under its old id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import pyarrow as pa

from sst_search.store.generations import apply_committed, bump, keys_of_registered_ids
from sst_search.store.writer import delete_children

if TYPE_CHECKING:
    from sst_search.store.core import Store


def remove_specimens(store: Store, ids: Iterable[int]) -> int:
    """Delete specimens everywhere (catalog, masks, metadata, vectors, indexes); returns how many existed."""
    ids = [int(i) for i in ids]
    if not ids:
        return 0
    with store.connection.transaction({"_ids": pa.table({"specimen_id": pa.array(ids, pa.int64())})}):
        touched = keys_of_registered_ids(store.con)
    for key in touched:
        store.index(*key)
    with store.connection.transaction({"_ids": pa.table({"specimen_id": pa.array(ids, pa.int64())})}):
        existed = store.con.execute(
            "SELECT count(*) FROM specimens WHERE specimen_id IN (SELECT specimen_id FROM _ids)"
        ).fetchall()[0][0]
        delete_children(store.connection)
        store.connection.execute("DELETE FROM specimens WHERE specimen_id IN (SELECT specimen_id FROM _ids)")
        generations = bump(store, touched, {})
    apply_committed(store, touched, ids, {}, generations)
    return int(existed)


def move_specimens(store: Store, moves: Mapping[int, tuple[int, str, str | None]]) -> int:
    """Re-point specimens without re-processing them: ``old_id -> (new_id, path, item_key)``.

    For an item whose file moved (same bytes) or a row written before ids came from item
    keys. Every table with a ``specimen_id`` column follows the new id (tables added later
    included), and the FAISS indexes of re-keyed specimens are rebuilt at a new
    generation; all in one transaction. Returns how many rows moved.
    """
    if not moves:
        return 0
    rows = [(int(old), int(new), path, key) for old, (new, path, key) in moves.items()]
    rekeyed = [old for old, new, _, _ in rows if old != new]
    clash = store.con.execute(
        "SELECT specimen_id FROM specimens WHERE specimen_id IN (SELECT unnest(?::BIGINT[]))",
        [[new for old, new, _, _ in rows if old != new]],
    ).fetchall()
    if clash:
        raise ValueError(f"cannot move specimens onto ids that are in use: {[c[0] for c in clash][:5]}")
    touched = {(e, t) for e, t in store.con.execute(
        "SELECT DISTINCT embedder, trait_name FROM vectors WHERE specimen_id IN (SELECT unnest(?::BIGINT[]))", [rekeyed]
    ).fetchall()}
    tables = [t for (t,) in store.con.execute(
        "SELECT DISTINCT c.table_name FROM duckdb_columns() c JOIN duckdb_tables() t "
        "ON t.table_oid = c.table_oid WHERE c.column_name = 'specimen_id' AND NOT t.temporary"
    ).fetchall()]
    table = pa.table({
        "old_id": pa.array([r[0] for r in rows], pa.int64()), "new_id": pa.array([r[1] for r in rows], pa.int64()),
        "path": pa.array([r[2] for r in rows], pa.string()), "item_key": pa.array([r[3] for r in rows], pa.string()),
    })
    with store.connection.transaction({"_moves": table}):
        store.connection.execute("UPDATE specimens SET path = m.path, item_key = m.item_key "
                   "FROM _moves m WHERE specimens.specimen_id = m.old_id")
        if rekeyed:
            for name in tables:
                extra = ", faiss_id = m.new_id" if name == "vectors" else ""
                store.connection.execute(f'UPDATE "{name}" SET specimen_id = m.new_id{extra} FROM _moves m '
                           f'WHERE "{name}".specimen_id = m.old_id AND m.old_id <> m.new_id')
        generations = bump(store, touched, {})
    for key in touched:
        store.index_cache.forget(key)  # ids changed: rebuilt from the vectors table below
    apply_committed(store, touched, [], {}, generations)
    return len(rows)


def relocate(store: Store, old_prefix: str, new_prefix: str) -> int:
    """Rewrite the prefix of every stored image path (and of the references and image
    cache folders the runs recorded, and of the support images ``promote`` decisions
    note) in one transaction: the collection was moved or mounted elsewhere. Matches
    whole path components only. Returns how many specimens were re-pointed."""
    old, new = old_prefix.rstrip("/") or "/", new_prefix.rstrip("/") or "/"
    relative = store.con.execute(
        "SELECT count(*) FROM specimens WHERE path NOT LIKE '/%' AND status = 'indexed'").fetchall()[0][0]
    if relative:
        raise ValueError(f"{store.db_path}: {relative} specimens have paths relative to the folder an older version "
                         "was run from; re-run `sst-search index` with the collection at its current place to "
                         "store absolute paths, then relocate")
    match = "(path = ? OR starts_with(path, ? || '/'))"
    with store.connection.transaction({}):
        count = store.con.execute(f"SELECT count(*) FROM specimens WHERE {match}", [old, old]).fetchall()[0][0]
        store.connection.execute(f"UPDATE specimens SET path = ? || substr(path, ?) WHERE {match}",
                   [new, len(old) + 1, old, old])
        store.connection.execute(f"UPDATE review_decisions SET note = ? || substr(note, ?) "
                   f"WHERE decision = 'promote' AND {match.replace('path', 'note')}", [new, len(old) + 1, old, old])
        for run_id, fingerprint in store.con.execute("SELECT run_id, fingerprint FROM runs").fetchall():
            fp = json.loads(fingerprint) if fingerprint else {}
            moved = {k: new + v[len(old):] for k in ("references_dir", "image_cache")
                     if isinstance(v := fp.get(k), str) and (v == old or v.startswith(old + "/"))}
            if moved:
                store.connection.execute("UPDATE runs SET fingerprint = ? WHERE run_id = ?", [json.dumps({**fp, **moved}), run_id])
    return int(count)

