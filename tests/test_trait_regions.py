"""Trait regions out: Audubon Core regions of interest for every mask, and IIIF Presentation 3
annotation pages whose selectors land on the known mask in the canvas's full-resolution pixels."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sst_search.cli import app
from sst_search.store import SpecimenRecord, Store, masks_from_label_map, specimen_id
from sst_search.store.snapshots import publish_snapshot

CANVAS = "https://museum.example/iiif/MCZ-1/canvas/1"
FULL = "https://museum.example/iiif/MCZ-1/full/max/0/default.jpg"
SMALL = "https://museum.example/iiif/MCZ-1/full/!64,64/0/default.jpg"
#: The known masks, in the 64 x 48 pixels the IIIF image was segmented at (full size 256 x 192).
BAND = (np.s_[10:20, 8:40], "forewing_band")  # rows 10..19, columns 8..39
SPOT = (np.s_[30:40, 50:60], "hindwing_spot")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("regions")
    label_map = np.zeros((48, 64), np.uint8)
    label_map[BAND[0]] = 1
    label_map[SPOT[0]] = 2
    names = {1: BAND[1], 2: SPOT[1]}
    iiif = SpecimenRecord(specimen_id("iiif"), str(root / "cache" / ("ab" * 32 + ".jpg")), "indexed", group_name="alba",
                          width=64, height=48, metadata={"occurrenceID": "urn:occ:1", "canvas": CANVAS},
                          masks=masks_from_label_map(label_map, names), item_key=f"{CANVAS}", source=SMALL,
                          full_source=FULL, original_width=256, original_height=192, license="CC0")
    local = SpecimenRecord(specimen_id("local"), str(root / "images" / "alba-7.png"), "indexed", group_name="alba",
                           width=64, height=48, masks=masks_from_label_map(label_map, names), item_key="images/alba-7.png")
    path = root / "db.duckdb"
    with Store.open(path) as store:
        store.write_batch([iiif, local])
    publish_snapshot(path)
    return path


def test_export_annotations_writes_audubon_regions_and_iiif_annotation_pages(db, tmp_path):
    out = tmp_path / "ann"
    result = CliRunner().invoke(app, ["export", "annotations", "--db", str(db), "--out", str(out),
                                      "--base-url", "https://museum.example/annotations"])
    assert result.exit_code == 0, result.output

    regions = pd.read_csv(out / "regions.csv")
    assert len(regions) == 4  # every trait mask of both specimens
    band = regions[(regions["specimen_id"] == specimen_id("local")) & (regions["ac:subjectPart"] == "forewing_band")].iloc[0]
    assert band["dcterms:identifier"] == "images/alba-7.png" and band["coreid"] == "images/alba-7.png"
    assert (band["ac:xFrac"], band["ac:yFrac"], band["ac:widthFrac"], band["ac:heightFrac"]) == pytest.approx(
        (8 / 64, 10 / 48, 32 / 64, 10 / 48), abs=1e-6)  # precise enough to round back to the pixel
    iiif_band = regions[(regions["specimen_id"] == specimen_id("iiif")) & (regions["ac:subjectPart"] == "forewing_band")]
    assert iiif_band.iloc[0]["dcterms:identifier"] == FULL and iiif_band.iloc[0]["coreid"] == "urn:occ:1"

    pages = sorted((out / "iiif").rglob("*.json"))
    assert [p.relative_to(out / "iiif").as_posix() for p in pages] == ["alba/MCZ-1.json"]  # only the IIIF image
    page = json.loads(pages[0].read_text())
    assert page["@context"] == "http://iiif.io/api/presentation/3/context.json" and page["type"] == "AnnotationPage"
    assert page["id"].startswith("https://museum.example/annotations/")
    assert len({a["id"] for a in page["items"]}) == 2
    by_trait = {a["body"]["value"]: a for a in page["items"]}
    assert set(by_trait) == {"forewing_band", "hindwing_spot"}
    for (rows_cols, trait), (x, y, w, h) in ((BAND, (32, 40, 128, 40)), (SPOT, (200, 120, 40, 40))):
        annotation = by_trait[trait]
        assert annotation["type"] == "Annotation" and annotation["motivation"] == "tagging"
        assert annotation["body"]["type"] == "TextualBody" and annotation["body"]["purpose"] == "tagging"
        target = annotation["target"]
        assert target["type"] == "SpecificResource" and target["source"] == {"id": CANVAS, "type": "Canvas"}
        fragment, svg = target["selector"]
        assert fragment["type"] == "FragmentSelector" and fragment["conformsTo"] == "http://www.w3.org/TR/media-frags/"
        assert fragment["value"] == f"xywh={x},{y},{w},{h}"  # mask box x4: the canvas's full-resolution pixels
        assert svg["type"] == "SvgSelector"
        path = ET.fromstring(svg["value"]).find("{http://www.w3.org/2000/svg}path")
        points = np.array([[float(v) for v in p.split(",")] for p in re.findall(r"-?[\d.]+,-?[\d.]+", path.get("d"))])
        # The outline runs through the boundary pixels' centres: the box's corners, one scaled pixel in.
        assert points.min(axis=0).tolist() == [x, y] and points.max(axis=0).tolist() == [x + w - 4, y + h - 4]
