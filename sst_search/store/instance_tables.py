"""Photos split into instances, and the instances cut from them (tables ``instance_sources``
and ``instances``, see :mod:`sst_search.store.schema`).

A photo's instances are replaced as a whole, in one transaction, whenever the photo is
split again; the instance items themselves are ordinary ``specimens`` rows written by the
indexer, linked here through their crop path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from sst_search.store.core import Store

SOURCE_STATUSES = ("split", "failed")

_SOURCE_COLUMNS = ("source_path", "source_key", "group_name", "metadata", "content_hash", "fingerprint", "status",
                   "error", "width", "height", "instance_count", "candidates", "updated_at")
_INSTANCE_COLUMNS = ("source_path", "number", "item_key", "crop_path", "box_x0", "box_y0", "box_x1", "box_y1",
                     "crop_x0", "crop_y0", "crop_x1", "crop_y1", "rle", "area", "score", "cycle_iou", "forward_iou",
                     "origin")


@dataclass
class InstanceRow:
    """One instance of a photo as stored; ``specimen_id`` is its item's, when indexed."""

    number: int
    item_key: str
    crop_path: str
    box: tuple[int, int, int, int]
    crop_box: tuple[int, int, int, int]
    rle: str
    area: int
    score: float | None = None
    cycle_iou: float | None = None
    forward_iou: float | None = None
    origin: str | None = None
    specimen_id: int | None = None


@dataclass
class InstanceSource:
    """A photo and the instances found in it (none when it holds none, or failed)."""

    source_path: str
    source_key: str
    content_hash: str | None
    fingerprint: dict | None
    status: str
    group_name: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    width: int | None = None
    height: int | None = None
    candidates: int | None = None
    instances: list[InstanceRow] = field(default_factory=list)


def write_instance_source(store: Store, source: InstanceSource) -> None:
    """Replace what is stored about ``source`` (its row and all its instances) in one transaction."""
    store.require_writer()
    if source.status not in SOURCE_STATUSES:
        raise ValueError(f"{source.source_path}: status {source.status!r} is not one of {SOURCE_STATUSES}")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    src = pa.Table.from_pylist([{
        "source_path": source.source_path, "source_key": source.source_key, "group_name": source.group_name,
        "metadata": json.dumps(source.metadata), "content_hash": source.content_hash,
        "fingerprint": json.dumps(source.fingerprint) if source.fingerprint is not None else None,
        "status": source.status, "error": source.error, "width": source.width, "height": source.height,
        "instance_count": len(source.instances), "candidates": source.candidates, "updated_at": now,
    }])
    rows = pa.Table.from_pylist(
        [
            {
                "source_path": source.source_path, "number": r.number, "item_key": r.item_key, "crop_path": r.crop_path,
                **dict(zip(("box_x0", "box_y0", "box_x1", "box_y1"), r.box)),
                **dict(zip(("crop_x0", "crop_y0", "crop_x1", "crop_y1"), r.crop_box)),
                "rle": r.rle, "area": r.area, "score": r.score, "cycle_iou": r.cycle_iou,
                "forward_iou": r.forward_iou, "origin": r.origin,
            }
            for r in source.instances
        ],
        schema=pa.schema([(c, pa.string() if c in ("source_path", "item_key", "crop_path", "rle", "origin")
                           else pa.float64() if c in ("score", "cycle_iou", "forward_iou") else pa.int64())
                          for c in _INSTANCE_COLUMNS]),
    )
    with store.connection.transaction({"_new_source": src, "_new_instances": rows}):
        store.connection.execute("DELETE FROM instances WHERE source_path = ?", [source.source_path])
        store.connection.insert_select("instance_sources", "_new_source", _SOURCE_COLUMNS, replace=True)
        store.connection.insert_select("instances", "_new_instances", _INSTANCE_COLUMNS)


def instance_source_states(store: Store) -> dict[str, tuple[str | None, str | None, str]]:
    """``source_path -> (content_hash, fingerprint JSON, status)``: what re-splitting compares."""
    rows = store.con.execute("SELECT source_path, content_hash, fingerprint, status FROM instance_sources").fetchall()
    return {p: (h, fp, st) for p, h, fp, st in rows}


def remove_instance_sources(store: Store, source_paths: Iterable[str]) -> int:
    """Forget photos that left the collection (their items leave ``specimens`` with the plan)."""
    paths = list(source_paths)
    for path in paths:
        store.connection.execute("DELETE FROM instances WHERE source_path = ?", [path])
        store.connection.execute("DELETE FROM instance_sources WHERE source_path = ?", [path])
    return len(paths)


def instance_sources(store: Store, source_paths: Iterable[str] | None = None) -> list[InstanceSource]:
    """Stored photos with their instances (each with its item's specimen id when indexed)."""
    sql = "SELECT * FROM instance_sources"
    params: list = []
    if source_paths is not None:
        params = list(source_paths)
        if not params:
            return []
        sql += f" WHERE source_path IN ({', '.join('?' * len(params))})"
    sources = []
    for row in store.query_dicts(sql + " ORDER BY source_path", params):
        sources.append(InstanceSource(
            source_path=row["source_path"], source_key=row["source_key"], content_hash=row["content_hash"],
            fingerprint=json.loads(row["fingerprint"]) if row["fingerprint"] else None, status=row["status"],
            group_name=row["group_name"], metadata=json.loads(row["metadata"] or "{}"), error=row["error"],
            width=row["width"], height=row["height"], candidates=row["candidates"],
            instances=_instances(store, row["source_path"]),
        ))
    return sources


def source_of_item(store: Store, item_path: str) -> tuple[InstanceSource, int] | None:
    """The photo an instance item was cut from, and the item's number there (None for a
    specimen that is not an instance)."""
    row = store.con.execute("SELECT source_path, number FROM instances WHERE crop_path = ?", [item_path]).fetchone()
    if row is None:
        return None
    (source,) = instance_sources(store, [row[0]])
    return source, int(row[1])


def _instances(store: Store, source_path: str) -> list[InstanceRow]:
    rows = store.query_dicts(
        "SELECT i.*, s.specimen_id FROM instances i LEFT JOIN specimens s ON s.path = i.crop_path "
        "WHERE i.source_path = ? ORDER BY i.number",
        [source_path],
    )
    return [
        InstanceRow(
            number=r["number"], item_key=r["item_key"], crop_path=r["crop_path"],
            box=(r["box_x0"], r["box_y0"], r["box_x1"], r["box_y1"]),
            crop_box=(r["crop_x0"], r["crop_y0"], r["crop_x1"], r["crop_y1"]),
            rle=r["rle"], area=r["area"], score=r["score"], cycle_iou=r["cycle_iou"], forward_iou=r["forward_iou"],
            origin=r["origin"], specimen_id=r["specimen_id"],
        )
        for r in rows
    ]
