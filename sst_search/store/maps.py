"""The 2-D maps of the store's trait vectors: reading and writing ``trait_maps`` and ``trait_map_points``.

A map is computed once by a writer (``sst-search map``, the app's Map page, an index run
keeping it current) and kept in the catalog beside the vectors it was computed from, so
every published snapshot carries it and every reader draws the same picture without
recomputing it. What a map means and how it is fitted is :mod:`sst_search.pattern_map`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import duckdb
import numpy as np
import pyarrow as pa

#: Columns of ``trait_map_points`` a writer supplies, in order.
POINT_COLUMNS = ("specimen_id", "x", "y", "fitted", "signature")


@dataclass
class MapState:
    """One map's header row: how it was made and which index generation it is current with."""

    embedder: str
    trait_name: str
    method: str
    seed: int
    generation: int
    fit_count: int
    added_since_fit: int
    params: dict = field(default_factory=dict)
    model: bytes | None = None
    fitted_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass
class MapPoints:
    """A map's points, sorted by specimen id (``fitted``: in the sample the map was fitted on)."""

    ids: np.ndarray
    xy: np.ndarray
    fitted: np.ndarray
    signature: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def index_generation(store, embedder: str, trait_name: str) -> int | None:
    """The generation of one index's vectors (None when the store has no such index)."""
    rows = store.con.execute("SELECT generation FROM index_state WHERE embedder = ? AND trait_name = ?",
                             [embedder, trait_name]).fetchall()
    return int(rows[0][0]) if rows else None


def map_state(store, embedder: str, trait_name: str) -> MapState | None:
    """The map's header, or None when there is no map (or the store predates maps)."""
    try:
        rows = store.con.execute(
            "SELECT method, seed, generation, fit_count, added_since_fit, params, model, fitted_at, updated_at "
            "FROM trait_maps WHERE embedder = ? AND trait_name = ?", [embedder, trait_name]).fetchall()
    except duckdb.CatalogException:  # a read-only snapshot written before maps existed
        return None
    if not rows:
        return None
    method, seed, generation, fit_count, added, params, model, fitted_at, updated_at = rows[0]
    return MapState(embedder, trait_name, method, int(seed), int(generation), int(fit_count), int(added),
                    json.loads(params) if params else {}, bytes(model) if model is not None else None,
                    fitted_at, updated_at)


def map_keys(store) -> list[tuple[str, str]]:
    """``(embedder, trait)`` of every stored map."""
    try:
        return [(e, t) for e, t in store.con.execute(
            "SELECT embedder, trait_name FROM trait_maps ORDER BY 1, 2").fetchall()]
    except duckdb.CatalogException:
        return []


def map_points(store, embedder: str, trait_name: str) -> MapPoints:
    """Every point of one map, by specimen id (empty without a map)."""
    try:
        table = store.con.sql(
            f"SELECT {', '.join(POINT_COLUMNS)} FROM trait_map_points WHERE embedder = ? AND trait_name = ? "
            "ORDER BY specimen_id", params=[embedder, trait_name]).to_arrow_table()
    except duckdb.CatalogException:
        table = pa.table({c: pa.array([], pa.float64()) for c in POINT_COLUMNS})
    return MapPoints(
        ids=table.column("specimen_id").to_numpy().astype(np.int64),
        xy=np.stack([table.column("x").to_numpy(), table.column("y").to_numpy()], axis=1).astype(np.float64)
        if len(table) else np.zeros((0, 2)),
        fitted=table.column("fitted").to_numpy(zero_copy_only=False).astype(bool),
        signature=table.column("signature").to_numpy().astype(np.float64),
    )


def _points_table(points: MapPoints) -> pa.Table:
    return pa.table({
        "specimen_id": pa.array(points.ids, pa.int64()), "x": pa.array(points.xy[:, 0], pa.float64()),
        "y": pa.array(points.xy[:, 1], pa.float64()), "fitted": pa.array(points.fitted, pa.bool_()),
        "signature": pa.array(points.signature, pa.float64()),
    })


def write_map(store, state: MapState, points: MapPoints, removed: np.ndarray | None = None,
              replace: bool = True) -> None:
    """Store a map in one transaction: ``replace`` writes a fresh fit (every old point goes);
    otherwise ``points`` are added to the map (an update) after deleting ``removed`` ids."""
    store.require_writer()
    now = _now()
    key = [state.embedder, state.trait_name]
    with store.connection.transaction({"_map_points": _points_table(points)}):
        if replace:
            store.connection.execute("DELETE FROM trait_map_points WHERE embedder = ? AND trait_name = ?", key)
        else:
            ids = [int(i) for i in (removed if removed is not None else [])] + [int(i) for i in points.ids]
            store.connection.execute("DELETE FROM trait_map_points WHERE embedder = ? AND trait_name = ? "
                        "AND specimen_id IN (SELECT unnest(?::BIGINT[]))", [*key, ids])
        store.connection.execute(f"INSERT INTO trait_map_points (embedder, trait_name, {', '.join(POINT_COLUMNS)}) "
                    f"SELECT ?, ?, {', '.join(POINT_COLUMNS)} FROM _map_points", key)
        store.connection.execute(
            "INSERT OR REPLACE INTO trait_maps (embedder, trait_name, method, seed, generation, fit_count, "
            "added_since_fit, params, model, fitted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [*key, state.method, state.seed, state.generation, state.fit_count, state.added_since_fit,
             json.dumps(state.params), state.model, state.fitted_at if not replace else now, now])


def drop_map(store, embedder: str, trait_name: str) -> None:
    store.require_writer()
    with store.connection.transaction({}):
        store.connection.execute("DELETE FROM trait_map_points WHERE embedder = ? AND trait_name = ?", [embedder, trait_name])
        store.connection.execute("DELETE FROM trait_maps WHERE embedder = ? AND trait_name = ?", [embedder, trait_name])


def trait_measurement(store, trait_name: str, field_name: str) -> dict[int, float]:
    """``{specimen_id: value}`` of one measurement of one trait (what a map is coloured by)."""
    from sst_search.measure import FIELD_NAMES

    if field_name not in FIELD_NAMES:
        raise ValueError(f"{field_name!r} is not a measurement (measurements: {', '.join(FIELD_NAMES)})")
    rows = store.con.execute(
        f'SELECT specimen_id, "{field_name}" FROM trait_measurements WHERE trait_name = ? AND "{field_name}" IS NOT NULL',
        [trait_name]).fetchall()
    return {int(sid): value for sid, value in rows}
