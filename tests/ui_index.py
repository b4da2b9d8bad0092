"""The index the app tests browse: a synthetic collection (plus one corrupt image) segmented by
SAM 2 hiera-t with random weights and embedded by the colour-pattern embedder."""

from __future__ import annotations

import csv
from pathlib import Path

from indexer.job import run_index
from sst_search.synthetic import generate_collection
from tests.fixtures import random_weights_config

#: SAM 2 input size: with random weights the masks mean nothing anyway, and 96 keeps it quick.
IMAGE_SIZE = 96
BROKEN = "images/broken.png"
# auto orientation: the catalog then records how each specimen was turned
UI_CONFIG = random_weights_config(segmentation={"image_size": IMAGE_SIZE, "orientation": "auto"})


def build_ui_index(folder: Path) -> Path:
    """Build it in ``folder`` (the ``ui_db`` fixture builds it once per run); returns the DB path."""
    db = folder / "index.duckdb"
    coll = generate_collection(folder / "collection", species=2, per_species=3, seed=11)
    (coll.root / BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with open(coll.manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(coll.manifest, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(rows[0])).writerow({**rows[0], "path": BROKEN, "catalogNumber": "SYN-BROKEN"})
    summary = run_index(coll.manifest, coll.references, db, UI_CONFIG)
    assert summary.counts["indexed"] == 6 and summary.counts["failed"] == 1, summary.counts
    return db
