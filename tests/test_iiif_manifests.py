"""IIIF Presentation manifests (API 2 and 3) and collections in, served by a real HTTP server:
every canvas image an item, the manifest's label, metadata and rights kept."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from indexer.collection import CollectionError, load_collection
from sst_search.cli import app as cli
from sst_search.sources.fetch import Fetcher, ImageCache
from sst_search.sources.naming import item_name
from sst_search.store import Store, specimen_id
from sst_search.synthetic import generate_collection
from tests.fixtures import TEST_IMAGE_SIZE
from tests.image_server import ImageServer

CC_BY = "http://creativecommons.org/licenses/by/4.0/"


def _v3(server, name, images, species):
    base = f"{server.url}/p/{name}"
    canvases = []
    for n, image in enumerate(images, start=1):
        body = {"id": f"{server.url}/img/{image}", "type": "Image", "format": "image/png"}
        if n == 1:  # the first through its image service, the second as a plain image
            body = {"id": f"{server.url}/iiif/{image}/full/max/0/default.jpg", "type": "Image",
                    "service": [{"id": f"{server.url}/iiif/{image}", "type": "ImageService3"}]}
        canvases.append({"id": f"{base}/canvas/{n}", "type": "Canvas", "label": {"none": [f"view {n}"]},
                         "items": [{"id": f"{base}/page/{n}", "type": "AnnotationPage", "items": [
                             {"id": f"{base}/anno/{n}", "type": "Annotation", "motivation": "painting",
                              "body": body, "target": f"{base}/canvas/{n}"}]}]})
    return {"@context": "http://iiif.io/api/presentation/3/context.json", "id": f"{base}/manifest", "type": "Manifest",
            "label": {"en": [f"Specimen {name}"]}, "rights": CC_BY,
            "requiredStatement": {"label": {"en": ["Attribution"]}, "value": {"en": ["Museum A"]}},
            "metadata": [{"label": {"en": ["scientificName"]}, "value": {"en": [species]}},
                         {"label": {"en": ["catalogNumber"]}, "value": {"en": [f"CAT-{name}"]}}],
            "items": canvases}


def _v2(server, name, image, species):
    base = f"{server.url}/p/{name}"
    return {"@context": "http://iiif.io/api/presentation/2/context.json", "@id": f"{base}/manifest.json",
            "@type": "sc:Manifest", "label": f"Specimen {name}", "license": "CC0", "attribution": "Museum B",
            "metadata": [{"label": "scientificName", "value": species}],
            "sequences": [{"@type": "sc:Sequence", "canvases": [
                {"@id": f"{base}/canvas/1", "@type": "sc:Canvas", "label": "dorsal", "images": [
                    {"@type": "oa:Annotation", "motivation": "sc:painting", "resource": {
                        "@id": f"{server.url}/iiif/{image}/full/full/0/default.jpg", "@type": "dctypes:Image",
                        "service": {"@context": "http://iiif.io/api/image/2/context.json",
                                    "@id": f"{server.url}/iiif/{image}"}}}]}]}]}


@pytest.fixture
def served(tmp_path):
    coll = generate_collection(tmp_path / "coll", species=1, per_species=3, seed=6)
    images = sorted((coll.root / "images").rglob("*.png"))
    server = ImageServer({p.stem: p for p in images})
    names, species = [p.stem for p in images], coll.groups[0]
    server.documents = {
        "/p/a/manifest": _v3(server, "a", names[:2], species),
        "/p/b/manifest.json": _v2(server, "b", names[2], species),
        "/p/all": {"@context": "http://iiif.io/api/presentation/2/context.json", "@id": f"{server.url}/p/all",
                   "@type": "sc:Collection", "manifests": [
                       {"@id": f"{server.url}/p/a/manifest", "@type": "sc:Manifest"},
                       {"@id": f"{server.url}/p/b/manifest.json", "@type": "sc:Manifest"},
                       {"@id": f"{server.url}/p/gone/manifest", "@type": "sc:Manifest"}]},
    }
    yield coll, server
    server.close()


def test_manifests_and_collections_become_items_with_their_metadata(served, tmp_path):
    coll, server = served
    with Fetcher(ImageCache(tmp_path / "cache")) as fetcher:
        items = load_collection(f"{server.url}/p/all", fetch_json=fetcher.json, group_by="specificEpithet")
        assert [i.key for i in items] == [f"{server.url}/p/a/canvas/1", f"{server.url}/p/a/canvas/2",
                                          f"{server.url}/p/b/canvas/1", f"{server.url}/p/gone/manifest"]
        a1, a2, b1, gone = items
        assert a1.source == f"{server.url}/iiif/{a1.source.split('/')[-2]}/info.json"  # the service: size-aware
        assert a2.source.startswith(f"{server.url}/img/") and b1.source.endswith("/info.json")
        assert a1.metadata["label"] == "Specimen a" and a1.metadata["catalogNumber"] == "CAT-a"
        assert a1.metadata["canvas_label"] == "view 1" and a1.metadata["manifest"] == f"{server.url}/p/a/manifest"
        assert (a1.license, a1.rights_holder, b1.license, b1.rights_holder) == (CC_BY, "Museum A", "CC0", "Museum B")
        assert gone.error and "HTTP 404" in gone.error and "gone/manifest" in gone.error
        by_name = load_collection(f"{server.url}/p/b/manifest.json", fetch_json=fetcher.json)
        assert by_name[0].group == coll.groups[0]  # --group-by scientificName, from the manifest's metadata

        # A manifest CSV whose media point at a manifest: one item per canvas, the row's columns kept.
        manifest = tmp_path / "manifest.csv"
        with open(manifest, "w", newline="") as fh:
            csv.writer(fh).writerows([["path", "group", "catalogNumber"], [f"{server.url}/p/a/manifest", "x", "ROW-1"]])
        rows = load_collection(manifest, fetch_json=fetcher.json)
        assert [i.key for i in rows] == [f"{server.url}/p/a/manifest#{server.url}/p/a/canvas/{n}" for n in (1, 2)]
        assert all(i.group == "x" and i.metadata["catalogNumber"] == "ROW-1" and i.origin == f"{manifest}:2" for i in rows)


@pytest.mark.parametrize("doc, needle", [
    ("{not json", "not a readable IIIF manifest"),
    ([1, 2], "not an object"),
    ({"type": "Annotation"}, "not a IIIF Presentation manifest or collection"),
    ({"type": "Manifest", "id": "m", "items": []}, "manifest has no canvases"),
    ({"type": "Manifest", "id": "m", "items": [{"type": "Canvas"}]}, "canvas 1: canvas without an id"),
])
def test_malformed_manifests_are_refused_naming_the_file(tmp_path, doc, needle):
    path = tmp_path / "bad.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(CollectionError, match=rf"bad\.json.*{needle}"):
        load_collection(path)


def test_index_takes_a_manifest_url(served, tmp_path):
    coll, server = served
    db = tmp_path / "index.duckdb"
    # A group without references: every image is fetched and recorded, nothing needs SAM 2.
    result = CliRunner().invoke(cli, [
        "index", f"{server.url}/p/all", "--references", str(coll.references), "--db", str(db), "--quiet",
        "--weights", "random", "--image-size", str(TEST_IMAGE_SIZE), "--embedder", "color-pattern",
        "--group-by", "specificEpithet", "--default-group", "unreferenced"])
    assert result.exit_code == 1, result.output  # some items failed or have no references
    with Store.open(db, read_only=True) as store:
        statuses = [store.get_specimen(specimen_id(k))["status"] for k in (
            f"{server.url}/p/a/canvas/1", f"{server.url}/p/a/canvas/2", f"{server.url}/p/b/canvas/1",
            f"{server.url}/p/gone/manifest")]
    assert statuses == ["no_reference"] * 3 + ["failed"], statuses
    assert sorted(server.sizes) == [f"!{TEST_IMAGE_SIZE},{TEST_IMAGE_SIZE}"] * 2  # services at the model's size
    with Store.open(db, read_only=True) as store:
        row = store.get_specimen(specimen_id(f"{server.url}/p/a/canvas/1"))
        assert row["license"] == CC_BY and row["metadata"]["label"] == "Specimen a" and row["fetched_at"]
        assert row["full_source"].endswith("/full/full/0/default.jpg")  # the test server speaks Image API 2


def test_url_items_are_named_by_their_record_not_their_cache_file():
    cached = "/cache/blobs/ab/ab12.jpg"
    assert item_name("/data/images/alba-001.png", None, {}) == "alba-001"
    assert item_name(cached, "https://x.org/iiif/2/abc/full/!1024,1024/0/default.jpg", {}) == "abc"
    assert item_name(cached, "https://x.org/iiif/2/abc%20d/info.json", {}) == "abc d"
    assert item_name(cached, "https://x.org/photos/moth-17.jpg", {}) == "moth-17.jpg"
    assert item_name(cached, "https://x.org/photos/moth-17.jpg", {"occurrenceID": "urn:M:17"}) == "urn:M:17 · moth-17.jpg"
    assert item_name(cached, "https://x.org/iiif/abc/info.json", {"label": "Specimen a"}) == "Specimen a · abc"
