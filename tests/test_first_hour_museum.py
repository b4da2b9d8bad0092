"""First-hour frictions met taking a museum's collection through: reports on stdout, quiet runs
that stay quiet, failures named by URL and record, names without authorship, readable file names."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from sst_search.cli import app
from sst_search.sources.naming import image_stem, unique_stems
from sst_search.synthetic import generate_collection
from tests.image_server import ImageServer


@pytest.fixture
def server():
    s = ImageServer({})
    yield s
    s.close()


def test_quiet_index_of_url_images_reports_failures_by_url_and_record_on_stdout(server, tmp_path, caplog):
    coll = generate_collection(tmp_path / "coll", species=1, per_species=1, seed=2)
    group = coll.groups[0]
    broken, gone = f"{server.url}/fail/huge", f"{server.url}/gone.jpg"  # an image/png of zeros; a 404
    manifest = tmp_path / "urls.csv"
    manifest.write_text(f"path,group,catalogNumber\n{broken},{group},MZ-9\n{gone},{group},MZ-10\n")
    db = tmp_path / "index.duckdb"
    caplog.set_level(logging.INFO)
    result = CliRunner().invoke(app, ["index", str(manifest), "--references", str(coll.references), "--db", str(db),
                                      "--weights", "random", "--image-size", "128", "--embedder", "color-pattern",
                                      "--quiet"])
    assert result.exit_code == 1, result.output
    assert not [r for r in caplog.records if r.name.startswith("httpx")]  # no "HTTP Request: GET ..." per image
    lines = [line for line in result.stdout.splitlines() if line.startswith("failed ")]
    assert len(lines) == 2 and "failed" in result.stdout.split("status")[1]  # the summary table is on stdout too
    assert any(line.startswith(f"failed {broken}: ") and "(record MZ-9)" in line for line in lines), lines
    assert any(line.startswith(f"failed {gone}: ") and "HTTP 404" in line and "(record MZ-10)" in line for line in lines)
    assert ".images" not in result.stdout  # never the cached blob
    assert "failed " not in result.stderr

    status = CliRunner().invoke(app, ["status", "--db", str(db)])
    assert sorted(line for line in status.stdout.splitlines() if line.startswith("failed ")) == sorted(lines)
    assert "group and status" in status.stdout and not status.stderr.strip()


def test_files_made_from_url_images_are_named_after_the_url_not_the_cache():
    blob = "/cache/ab/" + "ab" * 32 + ".jpg"
    assert image_stem(blob, "https://m.example/iiif/MCZ%3AENT%3A1/full/!512,512/0/default.jpg") == "MCZ_ENT_1"
    assert image_stem(blob, "https://m.example/iiif/MCZ-2/info.json") == "MCZ-2"
    assert image_stem(blob, "https://m.example/media/photo-7.jpeg?size=large") == "photo-7"
    assert image_stem("/data/images/alba/alba-003.png", None) == "alba-003"
    assert unique_stems([("/a/x.png", None), ("/b/x.png", None), ("/c/y.png", None)]) == ["x", "x-2", "y"]


def test_a_name_with_authorship_says_which_name_and_term_would_match(tmp_path):
    from sst_search.references import name_without_authorship

    assert name_without_authorship("Lycorma delicatula (White, 1845)") == "Lycorma delicatula"
    assert name_without_authorship("Papilio machaon Linnaeus, 1758") == "Papilio machaon"
    assert name_without_authorship("Heliconius erato var. cyrbia") is None
    coll = generate_collection(tmp_path / "coll", species=1, per_species=1, seed=2)
    (coll.references / coll.groups[0]).rename(coll.references / "Synthia alba")
    image = next((coll.root / "images").rglob("*.png"))
    manifest = tmp_path / "gbif.csv"
    manifest.write_text(f"path,group,species\n{image},Synthia alba (White 1845),Synthia alba\n"
                        f"{image.with_name('x.png')},Synthia cyrbia (White 1845),\n")
    result = CliRunner().invoke(app, ["index", str(manifest), "--references", str(coll.references), "--db",
                                      str(tmp_path / "db.duckdb"), "--embedder", "color-pattern", "--quiet"])
    assert result.exit_code == 1, result.output
    assert "its species 'Synthia alba' has a references folder" in result.stdout and "--group-by species" in result.stdout
    assert "without its authorship the name is 'Synthia cyrbia'" in result.stdout


def test_pixels_per_mm_on_an_existing_store_remeasures_every_specimen(tmp_path):
    from sst_search import export
    from sst_search.store import Store

    coll = generate_collection(tmp_path / "coll", species=1, per_species=2, seed=4)
    db = tmp_path / "db.duckdb"
    base = ["index", str(coll.manifest), "--references", str(coll.references), "--db", str(db), "--masks",
            str(coll.ground_truth), "--embedder", "color-pattern", "--scale-column", "noScaleHere", "--quiet"]
    assert CliRunner().invoke(app, base).exit_code == 0
    with Store.open(db, read_only=True) as store:
        before = export.measurements_table(store)
    assert set(before["unit"]) == {"px"}

    again = CliRunner().invoke(app, [*base, "--pixels-per-mm", "10"])
    assert again.exit_code == 0, again.output
    assert "re-measured all 2 indexed specimens" in again.stdout
    with Store.open(db, read_only=True) as store:
        after = export.measurements_table(store)
    assert set(after["unit"]) == {"mm"} and set(after["pixels_per_mm"]) == {10.0}
    assert after["area_mm2"].tolist() == pytest.approx((before["area_px"] / 100).tolist())
    unchanged = CliRunner().invoke(app, [*base, "--pixels-per-mm", "10"])
    assert "re-measured" not in unchanged.stdout  # the same scale again: nothing to redo
