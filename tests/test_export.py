"""Exports round-trip: CSV/Parquet read back, PNG label maps and COCO RLE decode to the stored masks."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools.coco import COCO

from sst_search import dwca_export, export
from sst_search.images import load_image, load_mask
from sst_search.measure import measure_label_map, resolve_scale
from sst_search.store import SpecimenRecord, Store, masks_from_label_map, specimen_id
from sst_search.store.snapshots import publish_snapshot
from sst_search.synthetic import PIXELS_PER_MM, generate_collection, species_traits


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real catalog holding the synthetic ground-truth masks (as provided masks) and one failed item."""
    root = tmp_path_factory.mktemp("export")
    coll = generate_collection(root / "syn", species=2, per_species=3, seed=5)
    records = []
    with open(coll.manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            path, group = coll.root / row["path"], row["group"]
            label_map = load_mask(coll.ground_truth / group / f"{path.stem}.png")
            names = {tid: t.name for tid, t in species_traits(group).items()}
            metadata = {k: v for k, v in row.items() if k not in ("path", "group")}
            scale = resolve_scale(metadata)
            records.append(SpecimenRecord(
                specimen_id(str(path)), str(path), "indexed", group_name=group, width=label_map.shape[1],
                height=label_map.shape[0], metadata=metadata,
                fingerprint={"mask": {"source": "provided", "sha256": "f00d"}, "references": "ref-fp"},
                masks=masks_from_label_map(label_map, names, quality={1: 0.75}, source="provided"),
                measurements=measure_label_map(label_map, load_image(path), names, scale),
            ))
    records.append(SpecimenRecord(specimen_id("broken.png"), "broken.png", "failed", group_name=coll.groups[0],
                                  error="broken.png: corrupt or truncated image data"))
    db = root / "db.duckdb"
    with Store.open(db) as writer:
        writer.write_batch(records)
    publish_snapshot(db)  # what the export command reads
    with Store.open(db, read_only=True) as reader:
        yield reader


DWC = "http://rs.tdwg.org/dwc/terms/"


def _stored(store: Store) -> dict[int, dict[int, np.ndarray]]:
    ids = store.filter_specimens()
    return {sid: {m.trait_id: m.mask() for m in store.trait_masks(sid)} for sid in ids}


def test_measurements_table_round_trips_through_csv_and_parquet(store):
    df = export.measurements_table(store)
    stored = _stored(store)
    assert len(df) == sum(len(m) for m in stored.values())
    assert set(df["specimen_id"]) == set(stored)  # the failed item has no measurements
    assert list(df.columns[:8]) == ["specimen_id", "path", "group", "catalogNumber", "scientificName",
                                    "institutionCode", "eventDate", "locality"]
    for row in df.itertuples():
        mask = stored[row.specimen_id][row.trait_id]
        assert row.area == row.area_px == mask.sum()
        assert row.area_mm2 == pytest.approx(mask.sum() / PIXELS_PER_MM**2) and row.unit == "mm"
        ys, xs = np.nonzero(mask)
        assert (row.bbox_x0, row.bbox_y0, row.bbox_x1, row.bbox_y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert row.source == "provided"
    assert df.loc[df.trait_id == 1, "quality"].eq(0.75).all() and df.loc[df.trait_id != 1, "quality"].isna().all()

    from_parquet = pd.read_parquet(io.BytesIO(export.to_parquet_bytes(df)))
    pd.testing.assert_frame_equal(from_parquet, df)
    from_csv = pd.read_csv(io.BytesIO(export.to_csv_bytes(df)), dtype={"catalogNumber": str, "eventDate": str, "pixelsPerMM": str})
    pd.testing.assert_frame_equal(from_csv, df, check_dtype=False)
    # Free-text localities (quotes, commas, semicolons) survive CSV quoting.
    assert from_csv["locality"].tolist() == df["locality"].tolist()


def test_measurements_scope_by_group_and_ids(store):
    group = min(store.groups())
    by_group = export.measurements_table(store, groups=[group])
    assert set(by_group["group"]) == {group} and len(by_group) > 0
    one = int(by_group["specimen_id"].iloc[0])
    assert set(export.measurements_table(store, specimen_ids=[one])["specimen_id"]) == {one}
    assert export.measurements_table(store, groups=["no-such-group"]).empty


def test_masks_zip_holds_one_label_map_per_specimen(store):
    stored = _stored(store)
    with zipfile.ZipFile(io.BytesIO(export.masks_zip(store))) as zf:
        names = set(zf.namelist())
        rows = {sid: store.get_specimen(sid) for sid in stored}
        expected_names = {sid: f"{r['group_name']}/{Path(r['path']).stem}.png" for sid, r in rows.items()}
        assert names == {"labels.csv"} | set(expected_names.values())
        for sid, masks in stored.items():
            png = zf.read(expected_names[sid])
            label_map = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            assert label_map.ndim == 2 and label_map.dtype == np.uint8
            expected = np.zeros(label_map.shape, np.uint8)
            for tid, m in masks.items():
                expected[m] = tid
            np.testing.assert_array_equal(label_map, expected)
        labels = pd.read_csv(io.BytesIO(zf.read("labels.csv")))
    assert len(labels) == sum(len(m) for m in stored.values())
    assert set(labels["trait"]) == {m.trait_name for sid in stored for m in store.trait_masks(sid)}


def test_exported_masks_are_scored_by_eval_seg_with_trait_names(store, tmp_path):
    """The export's file names are what eval-seg matches: the masks are the ground truth, so IoU 1."""
    from typer.testing import CliRunner

    from sst_search.cli import app

    with zipfile.ZipFile(io.BytesIO(export.masks_zip(store))) as zf:
        zf.extractall(tmp_path / "pred")
    root = Path(store.get_specimen(store.filter_specimens()[0])["path"]).parents[2]
    csv_out = tmp_path / "scores.csv"
    result = CliRunner().invoke(app, ["eval-seg", str(tmp_path / "pred"), str(root / "ground_truth"),
                                      "--references", str(root / "references"), "--csv", str(csv_out)])
    assert result.exit_code == 0, result.output
    assert "missing" not in result.output.split("overall mIoU")[1] and "1.0000" in result.output
    scores = pd.read_csv(csv_out)
    assert scores["miou"].eq(1.0).all() and "forewing_band" in set(scores["trait"])
    assert "forewing_band" in result.output  # tables name traits, not ids
    # A partial run: with --predicted-only the items without a prediction are left out, not scored 0.
    first = sorted((tmp_path / "pred").rglob("*.png"))[0]
    first.unlink()
    partial = CliRunner().invoke(app, ["eval-seg", str(tmp_path / "pred"), str(root / "ground_truth"), "--predicted-only"])
    assert partial.exit_code == 0 and "1 ground-truth items without a prediction were not scored" in partial.output
    assert "overall mIoU" in partial.output and "1.0000" in partial.output
    full = CliRunner().invoke(app, ["eval-seg", str(tmp_path / "pred"), str(root / "ground_truth")])
    assert "1 missing predictions" in full.output


def test_coco_rle_decodes_to_the_stored_masks(store, tmp_path):
    stored = _stored(store)
    path = tmp_path / "coco.json"
    path.write_bytes(export.to_json_bytes(export.coco_dataset(store)))
    coco = COCO(str(path))
    assert set(coco.getImgIds()) == set(stored)
    categories = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    trait_names = {m.trait_name for sid in stored for m in store.trait_masks(sid)}
    assert sorted(categories.values()) == sorted(trait_names)  # one category per trait name
    assert len(coco.getAnnIds()) == sum(len(m) for m in stored.values())
    for sid, masks in stored.items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[sid]))
        names = {m.trait_id: m.trait_name for m in store.trait_masks(sid)}
        assert {a["trait_id"] for a in anns} == set(masks)
        for ann in anns:
            decoded = coco.annToMask(ann).astype(bool)
            np.testing.assert_array_equal(decoded, masks[ann["trait_id"]])
            assert categories[ann["category_id"]] == names[ann["trait_id"]]
            assert ann["area"] == decoded.sum()
    json.loads(path.read_text())  # plain JSON, no numpy types


def test_failures_table_lists_reasons(store):
    failures = export.failures_table(store)
    assert failures[["path", "status"]].values.tolist() == [["broken.png", "failed"]]
    assert "corrupt" in failures["error"].iloc[0]


def test_dwca_round_trips_through_a_dwca_reader_with_every_row(store, tmp_path):
    from dwca.read import DwCAReader

    table = export.measurements_table(store)
    archive = tmp_path / "dwca.zip"
    archive.write_bytes(dwca_export.dwca_zip(store))
    per_trait = len(dwca_export.MOF_MEASUREMENTS)
    with DwCAReader(str(archive)) as dwca:
        cores = list(dwca)
        assert len(cores) == table["specimen_id"].nunique()
        facts = [f for core in cores for f in core.extensions if f.rowtype == DWC + "MeasurementOrFact"]
        assert len(facts) == len(table) * per_trait  # every trait, every measurement
        by_catalog = {core.data[DWC + "catalogNumber"]: core for core in cores}
        row = table.iloc[0]
        core = by_catalog[row["catalogNumber"]]
        assert core.data[DWC + "scientificName"] == row["scientificName"]
        area = next(f.data for f in core.extensions if f.data.get(DWC + "measurementType") == f"{row['trait']} area")
    assert float(area[DWC + "measurementValue"]) == pytest.approx(row["area_px"] / PIXELS_PER_MM**2, rel=1e-5)
    assert area[DWC + "measurementUnit"] == "mm²"
    method = area[DWC + "measurementMethod"]
    assert "provided label mask (sha256" in method and "regionprops" in method and "references" in method


def test_sst_measurement_method_names_model_weights_and_references():
    method = dwca_export.measurement_method({"mask": {"source": "sst", "model": "sam2.1-hiera-tiny", "weights_sha256": "ab12",
                                                  "image_size": 1024, "mode": "pairwise"}, "references": "r9"})
    assert "SAM 2 sam2.1-hiera-tiny" in method and "weights sha256 ab12" in method and "references r9" in method


@pytest.mark.parametrize("background", ["transparent", "black"])
def test_crops_alpha_equals_the_mask(store, background):
    stored = _stored(store)
    crops = dict(export.iter_crops(store, trait="forewing_band", background=background))
    assert crops
    for sid, masks in stored.items():
        path = store.get_specimen(sid)["path"]
        tid = next(m.trait_id for m in store.trait_masks(sid) if m.trait_name == "forewing_band")
        mask = masks[tid]
        ys, xs = np.nonzero(mask)
        box = np.s_[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
        crop = crops[f"{Path(path).stem}_forewing_band_{sid}.png"]
        decoded = np.asarray(Image.open(io.BytesIO(export.png_bytes(crop))))
        image = load_image(path)[box]
        if background == "transparent":
            np.testing.assert_array_equal(decoded[..., 3] == 255, mask[box])
            np.testing.assert_array_equal(decoded[..., 3][~mask[box]], 0)
            np.testing.assert_array_equal(decoded[..., :3], image)
        else:
            np.testing.assert_array_equal(decoded, np.where(mask[box][..., None], image, 0))


def test_export_commands_write_filtered_files(store, tmp_path):
    from typer.testing import CliRunner

    from sst_search.cli import app

    table = export.measurements_table(store)
    band = table[table["trait"] == "forewing_band"]
    threshold = float(band["area_mm2"].median())
    db = str(store.db_path)
    out = tmp_path / "m.csv"
    result = CliRunner().invoke(app, ["export", "measurements", "--db", db, "--out", str(out),
                                      "--where", f"forewing_band.area_mm2 > {threshold}"])
    assert result.exit_code == 0, result.output
    got = pd.read_csv(out)
    assert set(got["specimen_id"]) == set(band.loc[band["area_mm2"] > threshold, "specimen_id"])
    assert CliRunner().invoke(app, ["export", "dwca", "--db", db, "--out", str(tmp_path / "a.zip")]).exit_code == 0
    assert zipfile.ZipFile(tmp_path / "a.zip").namelist() == ["meta.xml", "eml.xml", "occurrence.txt", "multimedia.txt",
                                                              "measurementorfact.txt"]
    result = CliRunner().invoke(app, ["export", "crops", "--db", db, "--out", str(tmp_path / "crops")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "crops").glob("*.png"))) == table["specimen_id"].nunique()
    bad = CliRunner().invoke(app, ["export", "measurements", "--db", db, "--out", str(out), "--where", "nosuch.area_px > 1"])
    assert bad.exit_code == 2 and "nosuch" in bad.output
