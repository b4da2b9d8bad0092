"""Darwin Core Archives in: GBIF Simple Multimedia and Audubon Core, images on a local IIIF-style
server and beside the archive, bad archives refused with the file named."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from indexer.collection import CollectionError, load_collection
from indexer.job import run_index
from sst_search.store import Store, specimen_id
from sst_search.synthetic import generate_collection
from tests.fixtures import TEST_IMAGE_SIZE, random_weights_config
from tests.image_server import ImageServer

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"
DWC, DC, AC, XMP = ("http://rs.tdwg.org/dwc/terms/", "http://purl.org/dc/terms/", "http://rs.tdwg.org/ac/terms/",
                    "http://ns.adobe.com/xap/1.0/rights/")
CORE_TERMS = [DWC + t for t in ("occurrenceID", "catalogNumber", "scientificName", "specificEpithet", "locality")]
GBIF_MEDIA = ("http://rs.gbif.org/terms/1.0/Multimedia", [DC + "type", DC + "format", DC + "identifier", DC + "license",
                                                          DC + "rightsHolder"])
AUDUBON_MEDIA = ("http://rs.tdwg.org/ac/terms/Multimedia", [DC + "identifier", AC + "accessURI", XMP + "UsageTerms",
                                                            XMP + "Owner"])
CC_BY = "http://creativecommons.org/licenses/by/4.0/"


def _section(tag: str, row_type: str, location: str, id_tag: str, terms: list[str]) -> str:
    fields = "".join(f'<field index="{i}" term="{t}"/>' for i, t in enumerate(terms, start=1))
    return (f'<{tag} encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
            f'ignoreHeaderLines="1" rowType="{row_type}"><files><location>{location}</location></files>'
            f'<{id_tag} index="0"/>{fields}</{tag}>')


def write_archive(folder: Path, core: list[list[str]], media: list[list[str]], media_type=GBIF_MEDIA,
                  core_type: str = DWC + "Occurrence", zip_to: Path | None = None) -> Path:
    """An archive (folder, or zip when ``zip_to``): meta.xml, occurrence.txt, multimedia.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = ('<archive xmlns="http://rs.tdwg.org/dwc/text/">'
            + _section("core", core_type, "occurrence.txt", "id", CORE_TERMS)
            + _section("extension", media_type[0], "multimedia.txt", "coreid", media_type[1]) + "</archive>")
    files = {
        "meta.xml": meta,
        "occurrence.txt": "\n".join("\t".join(r) for r in [["id", *(t.rsplit("/", 1)[1] for t in CORE_TERMS)], *core]) + "\n",
        "multimedia.txt": "\n".join("\t".join(r) for r in [["coreid", *(t.rsplit("/", 1)[1] for t in media_type[1])],
                                                           *media]) + "\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    if zip_to is None:
        return folder
    with zipfile.ZipFile(zip_to, "w") as zf:
        for name in files:
            zf.write(folder / name, name)
    return zip_to


@pytest.fixture
def served(tmp_path):
    coll = generate_collection(tmp_path / "coll", species=1, per_species=4, seed=9)
    images = sorted((coll.root / "images").rglob("*.png"))
    server = ImageServer({p.stem: p for p in images})
    yield coll, images, server
    server.close()


def test_dwca_with_iiif_images_is_indexed_with_provenance_and_shown_anywhere(served, tmp_path, monkeypatch):
    coll, images, server = served
    group = coll.groups[0]
    local = images[3].relative_to(coll.root).as_posix()  # beside the archive, by relative path
    core = [[f"o{i}", f"urn:occ:{i}", f"SYN-{i}", f"Synthia {group}", group, "Cerro Azul"] for i in range(4)]
    iiif = f"{server.url}/iiif/{images[0].stem}/full/full/0/default.jpg"
    media = [
        ["o0", "StillImage", "image/jpeg", iiif, CC_BY, "Museum A"],
        ["o0", "StillImage", "image/jpeg", f"{server.url}/iiif/{images[1].stem}/info.json", CC_BY, "Museum A"],
        ["o0", "Sound", "audio/mpeg", f"{server.url}/call.mp3", CC_BY, "Museum A"],  # not an image: skipped
        ["o1", "StillImage", "image/png", local, "CC0", "Museum B"],
        ["o2", "StillImage", "image/jpeg", f"{server.url}/gone.jpg", CC_BY, "Museum A"],
        # o3 has no image at all
    ]
    archive = write_archive(tmp_path / "dwca", core, media, zip_to=coll.root / "export.zip")
    config = random_weights_config()
    db = tmp_path / "index.duckdb"
    summary = run_index(archive, coll.references, db, config, group_by="specificEpithet")
    assert summary.counts["indexed"] == 3 and summary.counts["failed"] == 2, summary.failures
    reasons = " | ".join(r for _, r in summary.failures)
    assert "HTTP 404" in reasons and "'urn:occ:3' has no image" in reasons
    size = f"!{TEST_IMAGE_SIZE},{TEST_IMAGE_SIZE}"
    assert server.sizes == [size, size]  # IIIF at the model's input size, never full

    key = f"urn:occ:0|{iiif}"
    with Store.open(db, read_only=True) as store:
        row = store.get_specimen(specimen_id(key))
        assert row["status"] == "indexed" and row["group_name"] == group and row["item_key"] == key
        assert row["source"] == iiif and row["fetched_at"] and row["license"] == CC_BY and row["rights_holder"] == "Museum A"
        assert row["content_hash"] == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()
        assert Path(row["path"]).is_relative_to(db.with_name("index.duckdb.images"))
        md = row["metadata"]
        assert md["catalogNumber"] == "SYN-0" and md["scientificName"] == f"Synthia {group}" and md["locality"] == "Cerro Azul"
        assert md["identifier"] == iiif and md["license"] == CC_BY
        beside = store.get_specimen(specimen_id(f"urn:occ:1|{local}"))
        assert beside["path"] == str(coll.root / local) and beside["source"] is None and beside["license"] == "CC0"

    before = sum(server.requests.values())
    again = run_index(archive, coll.references, db, config, group_by="specificEpithet")
    assert again.counts["unchanged"] == 3 and again.counts["indexed"] == 0
    assert sum(server.requests.values()) - before == server.requests["/gone.jpg"] - 1  # only the failure is retried

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SST_SEARCH_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run(timeout=60)
    at.sidebar.radio(key="page").set_value("Specimen").run(timeout=60)
    at.selectbox(key="specimen_id").set_value(specimen_id(key)).run(timeout=60)
    assert not at.exception, at.exception
    assert not [w.value for w in at.warning if "unavailable" in w.value]
    assert any(CC_BY in t.value and "Museum A" in t.value for t in at.text)
    links = [b for b in at.get("link_button")]
    assert any(b.proto.url == iiif for b in links) and any(b.proto.url == CC_BY for b in links)


def test_audubon_core_folder_archive_and_bad_archives(tmp_path):
    core = [["o1", "urn:1", "C-1", "Synthia alba", "alba", "x"]]
    media = [["o1", "img-1", "https://example.org/iiif/1/full/full/0/default.jpg", "CC-BY", "Museum C"],
             ["o1", "img-2", "https://example.org/2.jpg", "CC0", "Museum C"]]
    folder = write_archive(tmp_path / "ac", core, media, media_type=AUDUBON_MEDIA)
    items = load_collection(folder)  # default --group-by scientificName
    assert [i.source for i in items] == [media[0][2], media[1][2]]
    assert {i.group for i in items} == {"Synthia alba"} and items[0].license == "CC-BY" and items[0].rights_holder == "Museum C"
    assert items[1].metadata["identifier"] == "img-2" and items[1].metadata["catalogNumber"] == "C-1"

    with pytest.raises(CollectionError, match="no-such-term"):
        load_collection(folder, group_by="no-such-term")
    taxon = write_archive(tmp_path / "taxon", core, media, core_type=DWC + "Taxon")
    with pytest.raises(CollectionError, match=r"taxon.*core row type.*Taxon"):
        load_collection(taxon)
    garbage = tmp_path / "broken.zip"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(CollectionError, match=r"broken\.zip: not a readable Darwin Core Archive \(named or starting like a zip"):
        load_collection(garbage)
    no_meta = tmp_path / "nometa.zip"
    with zipfile.ZipFile(no_meta, "w") as zf:
        zf.writestr("occurrence.txt", "id\tscientificName\n1\tx\n")
        zf.writestr("notes.txt", "hello")
    with pytest.raises(CollectionError, match="nometa.zip"):
        load_collection(no_meta)


def test_a_latin1_file_declared_utf8_is_refused_naming_the_file_and_the_byte(tmp_path):
    core = [["o0", "urn:occ:0", "SYN-0", "Synthia alba", "alba", "Muséum"]]
    archive = write_archive(tmp_path / "dwca", core, [["o0", "StillImage", "image/png", "x.png", CC_BY, "Muséum"]])
    occurrence = archive / "occurrence.txt"
    occurrence.write_bytes(occurrence.read_text().encode("latin-1"))  # meta.xml still says UTF-8
    with pytest.raises(CollectionError, match=r"occurrence\.txt is not UTF-8 as meta\.xml declares \(byte b'\\xe9' at"):
        load_collection(archive)
    # declared as what it is, the same file reads without a replacement character
    meta = archive / "meta.xml"
    meta.write_text(meta.read_text().replace('<core encoding="UTF-8"', '<core encoding="ISO-8859-1"', 1))
    (item,) = load_collection(archive)
    assert item.metadata["locality"] == "Muséum"
