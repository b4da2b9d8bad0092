"""Review decisions and the review queue: which masks a curator should look at, and what they decided.

A mask is queued when a confidence column of ``trait_masks`` is below its threshold, when
its area is far from its group's distribution for that trait (robust z-score of the log
area: median and MAD, so the outliers themselves do not hide in a widened spread), or when
a trait that most of the group shows is missing. Decisions live in ``review_decisions``
(see :mod:`sst_search.store.schema`); a correction is also written into ``trait_masks``
with ``source = corrected`` and re-applied whenever the specimen is re-indexed with the
same image content (:data:`REAPPLY_CORRECTIONS`, run inside :func:`~sst_search.store.writer.write_columns`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from sst_search.store import vector_column, writer
from sst_search.store.generations import apply_committed, bump
from sst_search.store.records import TraitMask
from sst_search.store.rle import decode_mask
from sst_search.store.schema import DECISIONS, SPECIMEN_TRAIT

#: Confidence columns the queue understands, and the value below which a mask is queued.
#: Only the columns that exist in the store's ``trait_masks`` are used.
CONFIDENCE_THRESHOLDS = {
    "quality": 0.5,  # cycle-consistency IoU
    "cycle_iou": 0.5,
    "predicted_iou": 0.5,
    "object_score": 0.0,  # SAM 2's object-presence logit; below 0 SAM 2 itself says "absent"
}

#: Re-applies corrections to the specimens of a batch being written (``_new_specimens``).
REAPPLY_CORRECTIONS = """
INSERT OR REPLACE INTO trait_masks
    (specimen_id, trait_id, trait_name, area, bbox_x0, bbox_y0, bbox_x1, bbox_y1, rle, quality, source)
SELECT d.specimen_id, d.trait_id, d.trait_name, d.area, d.bbox_x0, d.bbox_y0, d.bbox_x1, d.bbox_y1, d.rle, NULL, 'corrected'
FROM review_decisions d JOIN _new_specimens s ON s.specimen_id = d.specimen_id
WHERE d.decision = 'correct' AND s.status = 'indexed' AND d.content_hash IS NOT DISTINCT FROM s.content_hash
"""


@dataclass
class ReviewItem:
    """One (specimen, trait) to check; ``area`` is None for a missing trait."""

    specimen_id: int
    group_name: str | None
    trait_id: int
    trait_name: str
    reasons: list[str]
    area: int | None = None
    area_z: float | None = None
    confidence: dict[str, float | None] = field(default_factory=dict)
    decision: str | None = None
    reviewer: str | None = None


def confidence_columns(store) -> list[str]:
    cols = {name for (name,) in store.con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = 'trait_masks'").fetchall()}
    return [c for c in CONFIDENCE_THRESHOLDS if c in cols]


def trait_id_of(store, specimen_id: int, trait_name: str) -> int:
    """The id ``trait_name`` has on the specimen, or in its group when the specimen lacks it."""
    row = store.get_specimen(specimen_id)
    if row is None:
        raise KeyError(f"no specimen {specimen_id} in {store.db_path}")
    known = {m.trait_name: m.trait_id for m in store.trait_masks(specimen_id)}
    known |= dict(store.con.execute(
        "SELECT t.trait_name, any_value(t.trait_id) FROM trait_masks t JOIN specimens s USING (specimen_id) "
        "WHERE s.group_name IS NOT DISTINCT FROM ? GROUP BY 1", [row["group_name"]]).fetchall())
    if trait_name not in known:
        raise KeyError(f"specimen {specimen_id} ({row['path']}): trait {trait_name!r} is unknown in its group "
                       f"(known: {sorted(known)})")
    return known[trait_name]


def record_decision(
    store,
    specimen_id: int,
    trait_name: str,
    decision: str,
    reviewer: str | None,
    trait_id: int | None = None,
    mask: np.ndarray | None = None,
    note: str | None = None,
    measurements: list[dict] | None = None,
    vectors: dict[tuple[str, str], np.ndarray] | None = None,
) -> None:
    """Store a decision (replacing an earlier one on the same trait); ``correct`` needs ``mask``
    (boolean, the image's size) and writes it into ``trait_masks``, with the specimen's
    ``measurements`` and ``vectors`` recomputed from it, all in one transaction: a kill leaves
    the old mask with its old numbers or the new one with the new, never a mix."""
    store.require_writer()
    if decision not in DECISIONS:
        raise ValueError(f"decision {decision!r} is not one of {DECISIONS}")
    row = store.get_specimen(specimen_id)
    if row is None:
        raise KeyError(f"no specimen {specimen_id} in {store.db_path}")
    if trait_id is None and decision != "promote":
        trait_id = trait_id_of(store, specimen_id, trait_name)
    corrected = None
    if decision == "correct":
        if mask is None:
            raise ValueError("a correction needs the corrected mask")
        mask = np.asarray(mask, dtype=bool)
        if row["height"] is not None and mask.shape != (row["height"], row["width"]):
            raise ValueError(f"{row['path']}: corrected mask is {mask.shape[1]}x{mask.shape[0]}, "
                             f"the image {row['width']}x{row['height']}")
        if not mask.any():
            raise ValueError(f"{row['path']}: corrected mask of {trait_name!r} is empty; reject the mask instead")
        corrected = TraitMask.from_mask(trait_id, trait_name, mask, source="corrected")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    sid = int(specimen_id)
    # the values the catalog keeps, so the cached indexes updated below equal ones rebuilt from it
    vectors = {key: vector_column.rounded(np.asarray(vec)[None])[0] for key, vec in (vectors or {}).items()}
    known = store.generations()
    for key in vectors:
        if key in known:
            store.index(*key)  # in memory, for the incremental update
    tables = writer.measurement_tables({sid: measurements}, now) if measurements is not None else {}
    with store.connection.transaction(tables):
        store.connection.execute(
            "INSERT OR REPLACE INTO review_decisions (specimen_id, trait_name, trait_id, decision, reviewer, decided_at, "
            "content_hash, rle, area, bbox_x0, bbox_y0, bbox_x1, bbox_y1, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [sid, trait_name, trait_id, decision, reviewer, now, row["content_hash"],
             *((corrected.rle, corrected.area, *corrected.bbox) if corrected else (None,) * 6), note],
        )
        if corrected is not None:
            store.connection.execute(
                "INSERT OR REPLACE INTO trait_masks (specimen_id, trait_id, trait_name, area, bbox_x0, bbox_y0, bbox_x1, "
                "bbox_y1, rle, quality, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                [sid, trait_id, trait_name, corrected.area, *corrected.bbox, corrected.rle, corrected.source],
            )
        if measurements is not None:
            writer.write_measurements(store.connection, {sid: measurements})
        committed = _write_vectors(store, sid, vectors)
    _apply_vectors(store, sid, vectors, committed)


def _write_vectors(store, sid: int, vectors: dict[tuple[str, str], np.ndarray]) -> dict:
    """Inside a transaction: the specimen's rows of ``vectors``, and the indexes' new generations."""
    if not vectors:
        return {}
    for (embedder, trait), vec in vectors.items():
        store.connection.execute("DELETE FROM vectors WHERE embedder = ? AND trait_name = ? AND specimen_id = ?", [embedder, trait, sid])
        store.connection.execute("INSERT INTO vectors (embedder, trait_name, specimen_id, faiss_id, vector) VALUES (?, ?, ?, ?, ?)",
                    [embedder, trait, sid, sid, vector_column.parameter(vec)])
    return bump(store, vectors, {k: len(v) for k, v in vectors.items()})


def _apply_vectors(store, sid: int, vectors: dict[tuple[str, str], np.ndarray], committed: dict) -> None:
    """After the commit: the cached FAISS indexes follow the new vectors."""
    if vectors:
        added = {k: (np.array([sid], np.int64), np.asarray(v, np.float32)[None]) for k, v in vectors.items()}
        apply_committed(store, vectors, [sid], added, committed)


def stale_measurements(con) -> list[tuple[int, str]]:
    """``(specimen_id, trait_name)`` of corrected masks whose specimen was last measured before
    the correction: what a correction interrupted before this was one transaction left."""
    return con.execute(
        "SELECT d.specimen_id, d.trait_name FROM review_decisions d JOIN trait_measurements m "
        "ON m.specimen_id = d.specimen_id AND m.trait_id = d.trait_id "
        "WHERE d.decision = 'correct' AND m.measured_at < d.decided_at ORDER BY 1, 2").fetchall()


def salvage_decisions(store, source) -> int:
    """Copy into ``store`` the review decisions still readable in ``source`` (a damaged or
    passed-over copy of it) that the store lacks or holds in an older form, and re-apply the
    corrections among them to the masks of unchanged images; returns how many were copied.

    A repair restores the newest snapshot that verifies, which may predate the last
    decisions; a damaged file often still reads where they are, so they are not lost. The
    corrected specimens are left for the next index run to embed again.
    Best effort: a copy whose decisions cannot be read gives none."""
    import duckdb

    store.require_writer()
    try:
        with duckdb.connect(str(source), read_only=True) as con:
            salvaged = con.sql("SELECT * FROM review_decisions").to_arrow_table()
    except (duckdb.Error, OSError):
        return 0
    if not salvaged.num_rows:
        return 0
    columns = [f'"{c}"' for c in salvaged.column_names]
    newer = ("FROM _salvaged s LEFT JOIN review_decisions d USING (specimen_id, trait_name) "
             "WHERE d.decided_at IS NULL OR s.decided_at > d.decided_at")
    with store.connection.transaction({"_salvaged": salvaged}):  # decisions and the masks they correct at once
        count, ids = store.con.execute(f"SELECT count(*), list(DISTINCT s.specimen_id) {newer}").fetchall()[0]
        store.connection.execute(f"INSERT OR REPLACE INTO review_decisions ({', '.join(columns)}) "
                    f"SELECT {', '.join('s.' + c for c in columns)} {newer}")
        if count:
            changed = store.con.sql(
                "SELECT specimen_id, status, content_hash FROM specimens WHERE specimen_id IN (SELECT unnest(?::BIGINT[]))",
                params=[ids]).to_arrow_table()
            with store.connection.registered({"_new_specimens": changed}):
                store.connection.execute(REAPPLY_CORRECTIONS)
            # Their vectors still describe the masks before the correction: forgetting the
            # fingerprint makes the next index run embed (and measure) them again.
            store.connection.execute("UPDATE specimens SET fingerprint = NULL WHERE specimen_id IN (SELECT unnest(?::BIGINT[])) "
                        "AND specimen_id IN (SELECT specimen_id FROM review_decisions WHERE decision = 'correct')", [ids])
    return int(count)


def corrections(store) -> dict[int, tuple[str | None, dict[int, str]]]:
    """``specimen_id -> (content_hash, {trait_id: RLE})`` of every correction: what a re-index
    applies over SST's output (when the image is unchanged) before embedding and measuring."""
    out: dict[int, tuple[str | None, dict[int, str]]] = {}
    for sid, content, tid, rle in store.con.execute(
        "SELECT specimen_id, content_hash, trait_id, rle FROM review_decisions WHERE decision = 'correct'"
    ).fetchall():
        out.setdefault(sid, (content, {}))[1][tid] = rle
    return out


def apply_corrections(label_map: np.ndarray, corrected: dict[int, str]) -> np.ndarray:
    """``label_map`` with each corrected trait replaced by the curator's mask (same size only)."""
    out = label_map.copy()
    for tid, rle in sorted(corrected.items()):
        mask = decode_mask(rle)
        if mask.shape == out.shape:
            out[out == tid] = 0
            out[mask] = tid
    return out


def decisions(store, specimen_id: int | None = None) -> list[dict]:
    """Decisions, newest first (without the mask itself)."""
    sql = ("SELECT specimen_id, trait_name, trait_id, decision, reviewer, decided_at, content_hash, area, note "
           "FROM review_decisions")
    params: list = []
    if specimen_id is not None:
        sql += " WHERE specimen_id = ?"
        params.append(int(specimen_id))
    return store.query_dicts(sql + " ORDER BY decided_at DESC, specimen_id, trait_name", params)


def review_queue(
    store,
    group: str | None = None,
    area_z: float = 3.0,
    min_group: int = 4,
    include_decided: bool = False,
    thresholds: dict[str, float] | None = None,
) -> list[ReviewItem]:
    """Masks to check, worst first: most reasons, then lowest confidence, then largest area deviation.

    ``area_z``: robust z-score beyond which an area is an outlier (groups of at least
    ``min_group`` masks of that trait). A trait is *missing* when at least half of the
    group's indexed specimens show it and this one does not.
    """
    limits = {c: (thresholds or {}).get(c, CONFIDENCE_THRESHOLDS[c]) for c in confidence_columns(store)}
    conf_sql = "".join(f', t."{c}"' for c in limits)
    where, params = "s.status = 'indexed'", []
    if group is not None:
        where += " AND s.group_name = ?"
        params.append(group)
    masks = store.con.execute(
        f"""
        WITH m AS (
            SELECT t.specimen_id, s.group_name, t.trait_id, t.trait_name, t.area{conf_sql}
            FROM trait_masks t JOIN specimens s USING (specimen_id) WHERE {where}
        ), st AS (
            SELECT group_name, trait_name, median(ln(area)) AS med, mad(ln(area)) AS mad, count(*) AS n
            FROM m WHERE area > 0 GROUP BY 1, 2
        )
        SELECT m.*, CASE WHEN st.n >= ? AND st.mad > 0 THEN (ln(m.area) - st.med) / (1.4826 * st.mad) END AS z,
               d.decision, d.reviewer
        FROM m LEFT JOIN st ON st.group_name IS NOT DISTINCT FROM m.group_name AND st.trait_name = m.trait_name
        LEFT JOIN review_decisions d ON d.specimen_id = m.specimen_id AND d.trait_name = m.trait_name
        """,
        [*params, min_group],
    ).fetchall()
    missing = store.con.execute(
        f"""
        WITH idx AS (SELECT specimen_id, group_name FROM specimens s WHERE {where}),
        usual AS (
            SELECT i.group_name, t.trait_name, any_value(t.trait_id) AS trait_id, count(DISTINCT t.specimen_id) AS n
            FROM trait_masks t JOIN idx i USING (specimen_id) GROUP BY 1, 2
        ), size AS (SELECT group_name, count(*) AS n FROM idx GROUP BY 1)
        SELECT i.specimen_id, i.group_name, u.trait_id, u.trait_name, d.decision, d.reviewer
        FROM idx i JOIN usual u ON u.group_name IS NOT DISTINCT FROM i.group_name
        JOIN size z ON z.group_name IS NOT DISTINCT FROM i.group_name
        LEFT JOIN review_decisions d ON d.specimen_id = i.specimen_id AND d.trait_name = u.trait_name
        WHERE 2 * u.n >= z.n AND NOT EXISTS (
            SELECT 1 FROM trait_masks t WHERE t.specimen_id = i.specimen_id AND t.trait_name = u.trait_name)
        """,
        params,
    ).fetchall()
    items = []
    for row in masks:
        sid, grp, tid, name, area, *rest = row
        conf = dict(zip(limits, rest[: len(limits)]))
        z, decision, reviewer = rest[len(limits):]
        reasons = [f"low {c} ({v:.2f} < {limits[c]:g})" for c, v in conf.items() if v is not None and v < limits[c]]
        if z is not None and abs(z) > area_z:
            reasons.append(f"area {'large' if z > 0 else 'small'} for its group (z = {z:+.1f})")
        if reasons:
            items.append(ReviewItem(sid, grp, tid, name, reasons, area, z, conf, decision, reviewer))
    for sid, grp, tid, name, decision, reviewer in missing:
        items.append(ReviewItem(sid, grp, tid, name, ["trait missing (most of its group shows it)"],
                                decision=decision, reviewer=reviewer))
    if not include_decided:
        items = [i for i in items if i.decision is None]

    def badness(item: ReviewItem) -> tuple:
        worst = min(((v - limits[c]) for c, v in item.confidence.items() if v is not None), default=math.inf)
        return (-len(item.reasons), item.area is not None, worst, -abs(item.area_z or 0.0), item.specimen_id, item.trait_id)

    return sorted(items, key=badness)


__all__ = ["CONFIDENCE_THRESHOLDS", "DECISIONS", "REAPPLY_CORRECTIONS", "SPECIMEN_TRAIT", "ReviewItem",
           "apply_corrections", "confidence_columns", "corrections", "decisions", "record_decision", "review_queue", "salvage_decisions", "stale_measurements", "trait_id_of"]
