"""Full resolution only when needed: IIIF images are indexed at the model's size, measured in
the original's millimetres without fetching it, and cropped from the original fetched once."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from indexer.job import image_cache, run_index
from sst_search.cli import app as cli
from sst_search.images import load_mask
from sst_search.remeasuring import remeasure
from sst_search.sources import Item
from sst_search.sources.fetch import fetch_items, original_of
from sst_search.store import Store, specimen_id
from sst_search.synthetic import generate_collection
from tests.fixtures import random_weights_config
from tests.image_server import ImageServer

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"
SIZE = 128  # the model's input size: IIIF images are fetched to fit in it
PPM = 20.0  # pixels per mm of the original photographs


def test_full_size_requests_follow_the_image_api_version_and_region():
    base = "https://iiif.example.org/iiif/abc"
    info2 = {"@context": "http://iiif.io/api/image/2/context.json", "width": 4000, "height": 3000}
    info3 = {"@context": "http://iiif.io/api/image/3/context.json", "type": "ImageService3", "width": 4000, "height": 3000}
    assert original_of(f"{base}/full/!1024,1024/0/default.jpg", info2).url == f"{base}/full/full/0/default.jpg"
    assert original_of(f"{base}/info.json", info3).url == f"{base}/full/max/0/default.jpg"
    assert original_of(f"{base}/full/full/0/default.jpg", info3).size == (4000, 3000)
    assert original_of(f"{base}/100,200,1000,5000/full/90/gray.png", info2).size == (2800, 1000)
    assert original_of(f"{base}/square/full/0/default.jpg", None).size is None


def test_iiif_items_are_indexed_small_measured_in_original_mm_and_cropped_full_once(tmp_path, monkeypatch):
    coll = generate_collection(tmp_path / "coll", species=1, per_species=2, seed=3, size=(300, 400))
    group = coll.groups[0]
    images = sorted((coll.root / "images").rglob("*.png"))
    server = ImageServer({p.stem: p for p in images})
    server.iiif_version = 3
    try:
        urls = [f"{server.url}/iiif/{p.stem}/full/max/0/default.jpg" for p in images]
        manifest = tmp_path / "manifest.csv"
        with open(manifest, "w", newline="") as fh:
            csv.writer(fh).writerows([["path", "group", "pixelsPerMM"], *([u, group, PPM] for u in urls)])
        config = random_weights_config(segmentation={"image_size": SIZE})
        db = tmp_path / "index.duckdb"
        # Masks stand in for SAM 2: the ground truth at the fetched size, named like the cached file.
        fetched = fetch_items([Item(u, None, group, source=u) for u in urls], image_cache(config, db), config.fetch, SIZE)
        masks = tmp_path / "masks"
        masks.mkdir()
        truth = [load_mask(coll.ground_truth / group / f"{p.name}") for p in images]
        for item, gt in zip(fetched, truth):
            w, h = Image.open(item.path).size
            Image.fromarray(cv2.resize(gt, (w, h), interpolation=cv2.INTER_NEAREST)).save(masks / f"{item.path.stem}.png")

        summary = run_index(manifest, coll.references, db, config, masks=masks)
        assert summary.counts["indexed"] == 2, summary.failures
        assert server.sizes and all(s == f"!{SIZE},{SIZE}" for s in server.sizes)  # indexing never fetched full size
        with Store.open(db, read_only=True) as store:
            row = store.get_specimen(specimen_id(urls[0]))
            assert row["full_source"] == urls[0] and row["source"] == urls[0]
            assert (row["original_width"], row["original_height"], row["width"], row["height"]) == (400, 300, SIZE, 96)
            table = store.measurements_frame(specimen_ids=[specimen_id(urls[0])])
        # Millimetres refer to the original's pixels, converted without fetching the original.
        full_area_mm2 = (truth[0] > 0).sum() / PPM**2
        specimen_area = table.groupby("specimen_id")["area_mm2"].sum().iloc[0]
        assert abs(specimen_area - full_area_mm2) < 0.08 * full_area_mm2, (specimen_area, full_area_mm2)
        assert table["scale_source"].str.contains("original 400 px wide").all()
        with Store.open(db) as store:  # `sst-search measure` converts the same way, from the catalog
            assert remeasure(store)[0] == 2
            again = store.measurements_frame(specimen_ids=[specimen_id(urls[0])])
        assert np.allclose(again["area_mm2"], table["area_mm2"]) and again["scale_source"].str.contains("400 px").all()

        def full_requests() -> int:
            return sum(n for path, n in server.requests.items() if "/full/max/" in path)

        assert full_requests() == 0
        # The specimen page says so and links the original, without fetching it.
        at = AppTest.from_file(str(APP), default_timeout=60)
        at.session_state["specimen_id"] = specimen_id(urls[0])
        with monkeypatch.context() as m:
            m.setenv("SST_SEARCH_DB", str(db))
            at.run(timeout=60)
            at.sidebar.radio(key="page").set_value("Specimen").run(timeout=60)
        assert not at.exception, at.exception
        assert any(f"Indexed at {SIZE}x96 px; the original (400x300 px)" in t.value for t in at.text)
        assert any(b.proto.url == urls[0] and "Full-resolution" in b.proto.label for b in at.get("link_button"))
        assert full_requests() == 0
        for attempt in range(2):  # a second export fetches nothing again
            out = tmp_path / f"crops{attempt}"
            result = CliRunner().invoke(cli, ["export", "crops", "--db", str(db), "--out", str(out)])
            assert result.exit_code == 0, result.output
            assert full_requests() == 2
        archive = tmp_path / "export.zip"
        assert CliRunner().invoke(cli, ["export", "dwca", "--db", str(db), "--out", str(archive)]).exit_code == 0
        occurrences = zipfile.ZipFile(archive).read("occurrence.txt").decode()
        assert all(u in occurrences for u in urls) and "index.duckdb.images" not in occurrences  # media: the URL
        assert full_requests() == 2  # the archive needs no pixels
        crops = {p.name: np.asarray(Image.open(p)) for p in out.glob("*.png")}
        assert len(crops) == 2
        ys, xs = np.nonzero(truth[0])
        crop = next(c for name, c in crops.items() if name.endswith(f"_{specimen_id(urls[0])}.png"))
        # Cut from the 400x300 original, not the 128x96 copy: the box of the full-size mask.
        assert abs(crop.shape[0] - (ys.max() - ys.min() + 1)) <= 4 and abs(crop.shape[1] - (xs.max() - xs.min() + 1)) <= 4
    finally:
        server.close()
