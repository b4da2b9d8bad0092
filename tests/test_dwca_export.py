"""Darwin Core Archives out: an archive read in, indexed and written out again is the same
occurrences and images (every source term verbatim, nothing invented), plus the measurements
linked to their occurrence, image and trait, and eml.xml naming the models and weights."""

from __future__ import annotations

import zipfile

import pytest
from dwca.read import DwCAReader

from indexer.job import run_index
from sst_search.dwca_export import DCTERMS, MOF_MEASUREMENTS, MULTIMEDIA, dwca_zip
from sst_search.store import Store
from sst_search.synthetic import generate_collection, species_traits
from tests.fixtures import random_weights_config

DWC = "http://rs.tdwg.org/dwc/terms/"
MOF = DWC + "MeasurementOrFact"
CORE_TERMS = [DWC + t for t in ("occurrenceID", "catalogNumber", "scientificName", "specificEpithet", "decimalLatitude",
                                "decimalLongitude", "countryCode", "vernacularName")] + [DCTERMS + "license"]
MEDIA_TERMS = [DCTERMS + t for t in ("type", "format", "identifier", "license", "rightsHolder")]


def _archive(folder, core: list[list[str]], media: list[list[str]]):
    def section(tag, row_type, location, id_tag, terms):
        fields = "".join(f'<field index="{i}" term="{t}"/>' for i, t in enumerate(terms, start=1))
        return (f'<{tag} encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
                f'ignoreHeaderLines="1" rowType="{row_type}"><files><location>{location}</location></files>'
                f'<{id_tag} index="0"/>{fields}</{tag}>')

    (folder / "meta.xml").write_text('<archive xmlns="http://rs.tdwg.org/dwc/text/">'
                                     + section("core", DWC + "Occurrence", "occurrence.txt", "id", CORE_TERMS)
                                     + section("extension", MULTIMEDIA, "multimedia.txt", "coreid", MEDIA_TERMS)
                                     + "</archive>")
    for name, terms, rows in (("occurrence.txt", CORE_TERMS, core), ("multimedia.txt", MEDIA_TERMS, media)):
        header = ["id", *(t.rsplit("/", 1)[1] for t in terms)]
        (folder / name).write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    return folder


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    """``(source core rows, source media rows, exported archive path, db)``: three occurrences,
    the first with two images, in a folder archive beside the images, indexed with the
    collection's ground-truth masks."""
    root = tmp_path_factory.mktemp("dwca_out")
    coll = generate_collection(root, species=2, per_species=2, seed=3)
    alba, cyrbia = (sorted((coll.root / "images" / g).glob("*.png")) for g in coll.groups)
    rel = lambda p: p.relative_to(coll.root).as_posix()  # noqa: E731
    core = [["o0", "urn:occ:0", "C-0", "Heliconius synthetica alba", "alba", "-0.98", "-77.81", "EC", "postman", "CC0"],
            ["o1", "urn:occ:1", "C-1", "Heliconius synthetica cyrbia", "cyrbia", "-1.05", "-77.6", "EC", "", "CC0"],
            ["o2", "urn:occ:2", "C-2", "Heliconius synthetica cyrbia", "cyrbia", "", "", "PE", "postman", "CC0"]]
    by = "http://creativecommons.org/licenses/by/4.0/"
    media = [["o0", "StillImage", "image/png", rel(alba[0]), by, "Museum A"],
             ["o0", "StillImage", "image/png", rel(alba[1]), by, "Museum B"],
             ["o1", "StillImage", "image/png", rel(cyrbia[0]), "CC0", "Museum A"],
             ["o2", "StillImage", "image/png", rel(cyrbia[1]), by, "Museum A"]]
    archive = _archive(coll.root, core, media)
    config = random_weights_config()
    db = root / "index.duckdb"
    summary = run_index(archive, coll.references, db, config, group_by="specificEpithet", masks=coll.ground_truth)
    assert summary.counts["indexed"] == 4, summary.failures
    out = root / "out.zip"
    with Store.open(db, read_only=True) as store:
        out.write_bytes(dwca_zip(store))
    return core, media, out, root


def test_archive_in_index_archive_out_keeps_occurrences_and_media_and_adds_measurements(round_trip):
    core, media, out, root = round_trip
    with DwCAReader(str(out)) as dwca:
        rows = {r.id: r for r in dwca}
        assert sorted(rows) == ["urn:occ:0", "urn:occ:1", "urn:occ:2"]  # one row per occurrence, not per image
        for source in core:
            got = rows[source[1]].data
            for term, value in zip(CORE_TERMS, source[1:]):
                assert got.get(term, "") == value, term  # every source term verbatim (empty stays absent)
            assert DWC + "basisOfRecord" not in got and DWC + "associatedMedia" not in got  # nothing invented
            images = [e.data for e in rows[source[1]].extensions if e.rowtype == MULTIMEDIA]
            expected = [m for m in media if core[int(m[0][1])][1] == source[1]]
            assert sorted((i[DCTERMS + "identifier"], i[DCTERMS + "license"], i[DCTERMS + "rightsHolder"],
                           i[DCTERMS + "format"]) for i in images) == sorted((m[3], m[4], m[5], m[2]) for m in expected)
            facts = [e.data for e in rows[source[1]].extensions if e.rowtype == MOF]
            group = source[4]
            traits = {t.name for t in species_traits(group).values()}
            assert len(facts) == len(expected) * len(traits) * len(MOF_MEASUREMENTS)
            for fact in facts:  # each names the image and the trait it was measured on
                assert fact[DCTERMS + "source"] in {m[3] for m in expected}
                trait = fact[DWC + "measurementType"].split(" ", 1)[0]
                assert trait in traits and f"trait {trait} on image {fact[DCTERMS + 'source']}" in fact[DWC + "measurementRemarks"]
            assert len({f[DWC + "measurementID"] for f in facts}) == len(facts)
        methods = " ".join(dwca.metadata.find(".//methods").itertext())
    for said in ("sst-search", "4 provided label mask files", "embedder color-pattern", "arXiv:2501.06749"):
        assert said in methods
    with zipfile.ZipFile(out) as zf:  # never a local absolute path
        assert not [n for n in zf.namelist() if str(root) in zf.read(n).decode()]


def test_a_manifest_collection_names_its_images_relative_to_the_collection(indexed, tmp_path):
    """Images listed by a manifest have no URL: the archive names them by their path relative
    to the collection folder, never by this machine's absolute path, and adds no media term."""
    coll, db = indexed
    with Store.open(db, read_only=True) as store:
        data = dwca_zip(store)
    path = tmp_path / "manifest_out.zip"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as zf:
        assert str(coll.root) not in "".join(zf.read(n).decode() for n in zf.namelist())
    with DwCAReader(str(path)) as dwca:
        rows = list(dwca)
        media = [e.data for r in rows for e in r.extensions if e.rowtype == MULTIMEDIA]
    manifest_paths = {line.split(",")[0] for line in coll.manifest.read_text().splitlines()[1:]}
    assert {m[DCTERMS + "identifier"] for m in media} == manifest_paths
    assert all(set(m) == {DCTERMS + "identifier"} for m in media)  # no licence the manifest did not give
    assert {r.data[DWC + "catalogNumber"] for r in rows} == {r.id for r in rows}  # one row per catalogued specimen
