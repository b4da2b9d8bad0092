"""Maps, atlases and convergence of items that are not plain local files: images fetched from
URLs (the server gone by the time they are drawn), specimens cut from drawer photos; and the
commands run from another working directory with relative paths. The commands warn of random
weights when the index was built with them (random SAM 2 splitting the drawers), and only then."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from indexer.job import run_index
from sst_search.cli import app
from sst_search.convergence import convergence
from sst_search.map_view import map_figure, map_table
from sst_search.pattern_atlas import atlas_cells, atlas_image
from sst_search.pattern_map import build_map
from sst_search.store import Store
from sst_search.store.snapshots import resolve_snapshot
from sst_search.thumbnails import trait_thumbnails
from tests.fixtures import random_weights_config
from tests.image_server import ImageServer

EMBEDDER = "color-pattern"
runner = CliRunner()


def _trait(store: Store) -> str:
    """The trait with the most vectors (a real trait, not the whole specimen)."""
    return max((t for e, t in store.index_keys() if e == EMBEDDER and t != "__specimen__"),
               key=lambda t: (len(store.population(EMBEDDER, t)), t))


@pytest.fixture(scope="module")
def url_db(indexed, tmp_path_factory):
    """The session collection's first two species served over HTTP and indexed from their URLs (their
    ground-truth masks named by the served bytes' sha256 stand in for SAM 2); the server is closed
    before anything is drawn, so every picture must come from the fetched copies."""
    coll, _ = indexed
    root = tmp_path_factory.mktemp("url-items")
    images = {p: group for group in coll.groups[:2] for p in sorted((coll.root / "images" / group).glob("*.png"))[:4]}
    server = ImageServer({p.stem: p for p in images})
    try:
        (root / "manifest.csv").write_text(
            "path,group,catalogNumber\n" + "".join(f"{server.url}/img/{p.stem},{g},URL-{p.stem}\n" for p, g in images.items()))
        masks = root / "masks"
        masks.mkdir()
        for p, group in images.items():
            shutil.copy(coll.ground_truth / group / p.name, masks / f"{hashlib.sha256(p.read_bytes()).hexdigest()}.png")
        db = root / "db.duckdb"
        summary = run_index(root / "manifest.csv", coll.references, db, random_weights_config(), masks=masks)
        assert summary.counts["indexed"] == len(images), summary.failures
    finally:
        server.close()
    return db, len(images)


def test_url_items_map_atlas_and_convergence_from_their_fetched_copies(url_db):
    db, n = url_db
    with Store.open(db) as store:
        trait = _trait(store)
        tmap = build_map(store, EMBEDDER, trait, "pca")
        population = store.population(EMBEDDER, trait)
        assert sorted(tmap.ids.tolist()) == sorted(population.tolist()) and len(population) >= n - 1
        table = map_table(store, tmap)
        assert table["catalogNumber"].str.startswith("URL-").all() and table["group"].nunique() == 2
        pictures = trait_thumbnails(store, tmap.ids.tolist(), trait, 32)
        assert all(p is not None and p.shape == (32, 32, 3) and (p < 250).any() for p in pictures.values())
        cells = atlas_cells(tmap, 2, 2)
        atlas = atlas_image(store, trait, cells, tile=32)
        filled = [c for c in cells if c.specimen_id is not None]
        for cell in filled:  # each filled cell shows its specimen's trait crop (above the count written on it)
            y, x = 2 + cell.row * 34, 2 + cell.col * 34
            assert (atlas[y:y + 18, x:x + 32] == pictures[cell.specimen_id][:18]).all()
        result = convergence(store, EMBEDDER, trait, "group")
        assert result.mean.shape == (2, 2) and np.isfinite(result.mean.to_numpy()).all()
        assert sum(len(t.x) for t in map_figure(table).data) == len(tmap)


def test_map_and_convergence_commands_from_another_directory_with_relative_paths(url_db, tmp_path, monkeypatch):
    db, _ = url_db
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    relative = db.relative_to(db.parents[1])
    shutil.copytree(db.parent, work / relative.parent)  # the index and its snapshots, reached by a relative path
    with Store.open(resolve_snapshot(relative), read_only=True) as store:
        trait = _trait(store)
    result = runner.invoke(app, ["map", "--db", str(relative), "--trait", trait, "--method", "pca",
                                 "--out", "out/map.png", "--atlas", "out/atlas.png", "--grid", "2"])
    assert result.exit_code == 0, result.output
    assert "RANDOM" not in result.output  # masks provided, a weight-free embedder: no random weights to warn of
    assert (work / "out" / "map.png").stat().st_size > 1000 and (work / "out" / "atlas.png").stat().st_size > 500
    result = runner.invoke(app, ["convergence", "--db", str(relative), "--trait", trait, "--out", "out/c.csv"])
    assert result.exit_code == 0, result.output
    assert (work / "out" / "c.csv").read_text().count("\n") == 5  # header + 2 x 2 groups


@pytest.mark.slow
def test_instance_items_cut_from_drawer_photos_are_mapped_with_their_crops(tmp_path):
    """Instances split from drawer photos (random SAM 2) are items of their own: each is on the map,
    and its thumbnail is cut from its own crop."""
    from sst_search.store.instance_tables import instance_sources
    from sst_search.synthetic import generate_drawers
    from tests.test_instances_index import CONFIG

    drawers = generate_drawers(tmp_path / "d", counts=(2, 1), size=(128, 160), reference_count=1)
    db = tmp_path / "db.duckdb"
    summary = run_index(drawers.manifest, drawers.references, db, CONFIG, instance_references=drawers.instance_references)
    assert summary.split.instances >= 2 and summary.counts["indexed"] == summary.split.instances
    with Store.open(db) as store:
        items = {row.specimen_id for source in instance_sources(store) for row in source.instances}
        trait = _trait(store)
        tmap = build_map(store, EMBEDDER, trait, "pca")
        assert set(tmap.ids.tolist()) <= items and len(tmap) >= 2
        pictures = trait_thumbnails(store, tmap.ids.tolist(), trait, 32)
        assert all(p is not None and (p < 250).any() for p in pictures.values())
        cells = atlas_cells(tmap, 2, 2)
        assert {c.specimen_id for c in cells if c.specimen_id is not None} <= items
    result = runner.invoke(app, ["map", "--db", str(db), "--trait", trait, "--method", "pca", "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 0 and "RANDOM weights" in result.output, result.output


def test_a_gallery_page_reads_only_its_own_rows_and_masks_from_a_snapshot(url_db):
    """Thumbnails of a few specimens leave the other specimens' rows and the trait's other masks
    unread (a lasso's first gallery page on a million-specimen snapshot): the snapshot loads
    none of its columns for them."""
    db, _ = url_db
    with Store.open(resolve_snapshot(db), read_only=True) as store:
        trait = _trait(store)
        ids = store.population(EMBEDDER, trait)[:2].tolist()
        pictures = trait_thumbnails(store, ids, trait, 32)
        assert all(p is not None for p in pictures.values())
        assert store.loaded_columns() is None
        assert sorted(store.trait_mask_of(trait, ids)) == sorted(store.listing(ids)) == sorted(ids)
