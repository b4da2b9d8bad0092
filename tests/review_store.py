"""A small store whose review queue is known: six specimens of one group, real image files,
one low-quality mask, one unusually large mask and one missing trait."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sst_search.images import save_image
from sst_search.store import SpecimenRecord, Store, masks_from_label_map, specimen_id
from sst_search.store.snapshots import publish_snapshot

TRAITS = {1: "band", 2: "spot"}
#: band widths (10 rows each): specimen 4's area is an outlier; specimen 5 has no spot
WIDTHS = [9, 10, 11, 10, 40, 10]
LOW_QUALITY = 1
H, W = 20, 48


def sid(i: int) -> int:
    return specimen_id(f"s{i}.png")


def label_map(i: int) -> np.ndarray:
    lm = np.zeros((H, W), np.uint8)
    lm[2:12, 2 : 2 + WIDTHS[i]] = 1
    if i != 5:
        lm[15:18, 44:47] = 2
    return lm


def records(folder: Path, content: str = "v1") -> list[SpecimenRecord]:
    out = []
    for i in range(6):
        quality = {1: 0.2 if i == LOW_QUALITY else 0.9, 2: 0.9}
        out.append(SpecimenRecord(
            specimen_id=sid(i), path=str(folder / f"s{i}.png"), status="indexed", group_name="g",
            content_hash=f"{content}-{i}", width=W, height=H,
            masks=masks_from_label_map(label_map(i), TRAITS, quality),
        ))
    return out


def build_review_store(folder: Path, publish: bool = False) -> Path:
    """The store at ``folder/review.duckdb`` (images beside it); ``publish`` makes a snapshot for the app."""
    for i in range(6):
        save_image(folder / f"s{i}.png", np.full((H, W, 3), 40 * i, np.uint8))
    db = folder / "review.duckdb"
    with Store.open(db) as store:
        run = store.begin_run({})
        store.write_batch(records(folder))
        store.finish_run(run)
    if publish:
        publish_snapshot(db)
    return db
