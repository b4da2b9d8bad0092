"""A Darwin Core occurrence table (what a collection database or a spreadsheet exports first)
is a collection: images from associatedMedia / accessURI / identifier, groups from a term
without the authorship, keys from the occurrence; repeated keys, image-less tables and
files that are no collection at all are refused before any model is loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.collection import CollectionError, load_collection
from indexer.job import run_index
from sst_search.cli import app
from sst_search.sources.occurrences import name_without_authorship, split_media
from sst_search.store import Store, specimen_id
from tests.fixtures import random_weights_config

ROOT = Path(__file__).resolve().parents[1]
IIIF = "https://iiif.example.org/iiif/3/sp-1/full/!512,512/0/default.jpg"


def test_occurrence_csv_is_indexed_with_groups_matched_without_authorship(synthetic, tracker, tmp_path):
    group = synthetic.groups[0]
    images = sorted((synthetic.root / "images" / group).glob("*.png"))[:2]
    (tmp_path / "img").mkdir()
    shutil.copy(images[0], tmp_path / "img" / images[0].name)
    table = tmp_path / "occ.csv"
    table.write_text(
        "occurrenceID,scientificName,catalogNumber,associatedMedia\n"
        f'urn:1,"{group} (White, 1845)",C-1,img/{images[0].name} | {images[1]}\n'
    )
    config = random_weights_config()
    db = tmp_path / "index.duckdb"
    summary = run_index(table, synthetic.references, db, config, tracker=tracker)
    assert summary.counts["indexed"] == 2, summary.failures
    with Store.open(db, read_only=True) as store:
        first, second = store.get_specimen(specimen_id("urn:1|1")), store.get_specimen(specimen_id("urn:1|2"))
        assert first["path"] == str(tmp_path / "img" / images[0].name) and second["path"] == str(images[1])
        assert first["group_name"] == second["group_name"] == group  # REFS/<group> found without the authorship
        assert first["metadata"]["scientificName"] == f"{group} (White, 1845)"  # kept verbatim
        assert second["metadata"]["catalogNumber"] == "C-1"


def test_table_forms_media_and_keys(tmp_path):
    tsv = tmp_path / "uris.tsv"  # full term URIs, tab separated, images as Audubon Core access URIs
    dwc, ac = "http://rs.tdwg.org/dwc/terms/", "http://rs.tdwg.org/ac/terms/"
    tsv.write_text(f"{dwc}catalogNumber\t{dwc}scientificName\t{ac}accessURI\n"
                   "C-9\tPapilio machaon Linnaeus, 1758\thttps://example.org/a.jpg\n"
                   "\tPapilio machaon\thttps://example.org/b.jpg\n")
    items = load_collection(tsv)
    assert [(i.key, i.source, i.group) for i in items] == [
        ("C-9", "https://example.org/a.jpg", "Papilio machaon"), ("row 2", "https://example.org/b.jpg", "Papilio machaon")]

    semi = tmp_path / "semi.csv"  # ';' between columns, ';' between images, a IIIF URL with a comma kept whole
    semi.write_text("dwc:occurrenceID;dwc:genus;dwc:associatedMedia;dcterms:identifier\n"
                    "o1;Aus;https://example.org/1.jpg, https://example.org/2.jpg;x\n"
                    f"o2;Aus;{IIIF};y\n"
                    "o3;Bus;;https://example.org/record-page\n"
                    "o4;Bus;;https://example.org/photo.tif\n")
    items = load_collection(semi, group_by="genus")
    assert [(i.key, i.source, i.group) for i in items if not i.error] == [
        ("o1|1", "https://example.org/1.jpg", "Aus"), ("o1|2", "https://example.org/2.jpg", "Aus"),
        ("o2", IIIF, "Aus"), ("o4", "https://example.org/photo.tif", "Bus")]
    assert [i.key for i in items if i.error] == ["o3"]  # a record page is no image: the occurrence fails alone

    grouped = tmp_path / "grouped.csv"  # a 'group' column wins over --group-by
    grouped.write_text("catalogNumber,scientificName,group,associatedMedia\nC-1,Aus bus,beta,https://example.org/x.png\n")
    assert [i.group for i in load_collection(grouped)] == ["beta"]
    with pytest.raises(CollectionError, match=r"occ\.csv: --group-by 'county' is not a column"):
        (tmp_path / "occ.csv").write_text("occurrenceID,associatedMedia\nu,https://example.org/x.png\n")
        load_collection(tmp_path / "occ.csv", group_by="county")


@pytest.mark.parametrize(("name", "authorship", "expected"), [
    ("Lycorma delicatula (White, 1845)", None, "Lycorma delicatula"),
    ("Quercus robur L.", None, "Quercus robur"),
    ("Aus bus de Geer, 1774", None, "Aus bus"),
    ("Abies alba subsp. apennina Brullo et al.", None, "Abies alba subsp. apennina"),
    ("Aus bus Smith & Jones", "Smith & Jones", "Aus bus"),
    ("Papilionidae", None, "Papilionidae"),
    ("Papilio (Achillides) maackii Ménétriés, 1859", None, "Papilio maackii"),
])
def test_name_without_authorship(name, authorship, expected):
    assert name_without_authorship(name, authorship) == expected


def test_associated_media_is_split_only_when_unambiguous():
    assert split_media("a.jpg | b.jpg") == ["a.jpg", "b.jpg"]
    assert split_media("a.jpg; b.png") == ["a.jpg", "b.png"]
    assert split_media(IIIF) == [IIIF]
    assert split_media("https://x.org/a.jpg,https://x.org/b.jpg") == ["https://x.org/a.jpg", "https://x.org/b.jpg"]
    assert split_media("photos/Smith, J. 1901.jpg") == ["photos/Smith, J. 1901.jpg"]


def test_duplicate_keys_are_refused_naming_the_rows(tmp_path):
    table = tmp_path / "dup.csv"
    table.write_text("occurrenceID,scientificName,associatedMedia\n"
                     "u1,Aus bus,https://example.org/1.jpg\nu2,Aus bus,https://example.org/2.jpg\n"
                     "u1,Aus cus,https://example.org/3.jpg\n")
    db = tmp_path / "db.duckdb"
    result = CliRunner().invoke(app, ["index", str(table), "--references", str(tmp_path), "--db", str(db)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "dup.csv: 1 occurrence keys" in text and "'u1' on rows 1, 3" in text, result.output
    assert not db.exists()


def test_unrecognised_files_are_refused_with_the_kinds_of_collection(tmp_path):
    image = tmp_path / "photo.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(CollectionError, match=r"photo\.png: not a collection .* a Darwin Core table .* a IIIF manifest"):
        load_collection(image)
    empty = tmp_path / "empty.csv"
    empty.write_text("occurrenceID,scientificName,associatedMedia\n")
    with pytest.raises(CollectionError, match=r"empty\.csv: holds no occurrences"):
        load_collection(empty)
    notes = tmp_path / "notes.csv"
    notes.write_text("colour,size\nred,3\n")
    with pytest.raises(CollectionError, match=r"notes\.csv: manifest needs a 'path' column, or Darwin Core headers"):
        load_collection(notes)


def test_a_table_without_images_is_refused_before_any_model_is_imported(tmp_path):
    table = tmp_path / "gbif-occurrence.csv"
    table.write_text("gbifID\toccurrenceID\tscientificName\tcountryCode\n1\tu1\tAus bus (L.)\tBE\n2\tu2\tAus bus\tFR\n")
    db = tmp_path / "index.duckdb"
    script = textwrap.dedent(f"""
        import json, sys, time
        from sst_search.cli import app
        started = time.perf_counter()
        try:
            app(args=["index", {str(table)!r}, "--references", {str(tmp_path)!r}, "--db", {str(db)!r}])
        except SystemExit as exc:
            code = exc.code
        print(json.dumps({{"exit": code, "seconds": time.perf_counter() - started,
                           "models": [m for m in ("torch", "sam2", "open_clip") if m in sys.modules]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "400"})
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["exit"] == 2 and report["models"] == [], (report, proc.stderr)
    message = " ".join(proc.stderr.split())
    assert "gbif-occurrence.csv: no images are referenced" in message and "with multimedia" in message, proc.stderr
    assert "Traceback" not in proc.stderr and not db.exists()
