"""``index --instances``: every instance of a drawer photo becomes an indexed item, linked to
its photo; re-indexing is incremental per photo (random SAM 2 weights: plumbing only)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from indexer.job import run_index
from sst_search.cli import app
from sst_search.dwca_export import dwca_zip
from sst_search.images import load_image
from sst_search.masks import bbox
from sst_search.store import Store, decode_mask
from sst_search.store.instance_tables import instance_sources, source_of_item
from sst_search.synthetic import generate_drawers
from tests.fixtures import random_weights_config
from tests.ui_index import IMAGE_SIZE

CONFIG = random_weights_config(
    segmentation={"image_size": IMAGE_SIZE},
    instances={"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "min_area": 0.0,
               "max_area": 1.0, "min_score": 0.0, "max_candidates": 1},
)


def _app(db, monkeypatch) -> AppTest:
    monkeypatch.setenv("SST_SEARCH_DB", str(db))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "ui" / "app.py"), default_timeout=60)
    at.run(timeout=60)
    assert not at.exception, at.exception
    return at


def test_instances_become_items_linked_to_their_photo_and_reindex_per_photo(tmp_path, monkeypatch):
    drawers = generate_drawers(tmp_path / "d", counts=(2, 1), size=(128, 160), reference_count=1)
    db = tmp_path / "db.duckdb"
    first = run_index(drawers.manifest, drawers.references, db, CONFIG, instance_references=drawers.instance_references)
    assert first.split.split == 2 and first.split.failed == 0 and first.split.instances >= 2
    assert first.counts["indexed"] == first.split.instances and first.exit_code == 0

    with Store.open(db, read_only=True) as store:
        sources = instance_sources(store)
        assert [s.source_key for s in sources] == ["images/drawer-000.png", "images/drawer-001.png"]
        for source in sources:
            photo = load_image(source.source_path)
            assert (source.height, source.width) == photo.shape[:2] and source.status == "split"
            assert [r.number for r in source.instances] == list(range(1, len(source.instances) + 1))
            for row in source.instances:
                specimen = store.get_specimen(row.specimen_id)
                assert specimen["status"] == "indexed" and specimen["group_name"] == "alba"
                assert specimen["metadata"]["sourcePath"] == source.source_key
                assert specimen["metadata"]["instanceNumber"] == str(row.number)
                assert specimen["metadata"]["catalogNumber"] == source.metadata["catalogNumber"]
                x0, y0, x1, y1 = row.crop_box
                assert np.array_equal(load_image(row.crop_path), photo[y0:y1, x0:x1])
                assert bbox(decode_mask(row.rle)) == row.box and decode_mask(row.rle).shape == photo.shape[:2]
                linked, number = source_of_item(store, specimen["path"])
                assert linked.source_path == source.source_path and number == row.number
        total = len(store.specimen_states())
    assert total == first.split.instances

    # export instances: per photo a COCO file and one cut-out per instance, as stored.
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", "instances", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for source in sources:
        stem = source.source_key.split("/")[-1].removesuffix(".png")  # <stem>, as README says
        coco = json.loads((out / f"{stem}.coco.json").read_text())
        assert [a["id"] for a in coco["annotations"]] == [r.number for r in source.instances]
        assert coco["images"][0]["file_name"] == source.source_key
        cutouts = sorted((out / stem).iterdir())
        assert [p.name for p in cutouts] == [f"{r.number:03d}.png" for r in source.instances]
        assert all(load_image(p).shape[:2] == (r.crop_box[3] - r.crop_box[1], r.crop_box[2] - r.crop_box[0])
                   for p, r in zip(cutouts, source.instances))

    # A Darwin Core Archive: every specimen found in a drawer is an occurrence of its own,
    # though they share the drawer's catalogNumber.
    with Store.open(db, read_only=True) as store:
        with zipfile.ZipFile(io.BytesIO(dwca_zip(store))) as zf:
            core = zf.read("occurrence.txt").decode().splitlines()
    assert len(core) - 1 == total == len({line.split("\t")[0] for line in core[1:]})

    # The app's Photos page: the photo with numbered outlines, each number opening its specimen.
    at = _app(db, monkeypatch)
    at.sidebar.radio(key="page").set_value("Photos").run(timeout=60)
    assert not at.exception, at.exception
    assert at.selectbox(key="photo_key").value == sources[0].source_key
    buttons = [b for b in at.button if b.key and b.key.startswith("instance-")]
    assert [b.key for b in buttons] == [f"instance-{r.number}" for r in sources[0].instances]
    buttons[-1].click().run(timeout=60)
    assert at.session_state["page"] == "Specimen"
    assert at.session_state["specimen_id"] == sources[0].instances[-1].specimen_id
    back = next(b for b in at.button if b.key == "open-photo")
    back.click().run(timeout=60)
    assert at.session_state["page"] == "Photos" and at.session_state["photo_key"] == sources[0].source_key

    # Drop the second photo: the first is neither split nor segmented again, the second's
    # instances leave the catalog with it.
    with open(drawers.manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(drawers.manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerow(rows[0])
    # Half the items leave with that photo: more than the removal guard lets through unasked.
    second = run_index(drawers.manifest, drawers.references, db, CONFIG,
                       instance_references=drawers.instance_references, allow_mass_removal=True)
    kept = len(sources[0].instances)
    assert (second.split.unchanged, second.split.split, second.split.removed) == (1, 0, 1)
    assert second.counts["unchanged"] == kept and second.counts["indexed"] == 0
    assert second.counts["removed"] == total - kept
    with Store.open(db, read_only=True) as store:
        assert [s.source_key for s in instance_sources(store)] == ["images/drawer-000.png"]
        assert len(store.specimen_states()) == kept
