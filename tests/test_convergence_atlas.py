"""Convergence, the pattern atlas and the `map` / `convergence` commands on a synthetic collection
with a mimic pair: melpomene painted with erato's hindwing bar, alba's left as it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sst_search.cli import app
from sst_search.convergence import convergence
from sst_search.pattern_atlas import atlas_cells, atlas_image
from sst_search.pattern_map import load_map
from sst_search.store import Store
from sst_search.store.snapshots import resolve_snapshot
from tests.fixtures import index_synthetic

TRAIT = "hindwing_bar"  # on alba, erato and melpomene (the first 8 synthetic species)
MIMIC, MODEL = "melpomene", "erato"
runner = CliRunner()


@pytest.fixture(scope="module")
def mimic_db(tmp_path_factory):
    _, db = index_synthetic(tmp_path_factory.mktemp("mimics"), 8, 3, 5, size=(96, 128), mimics={MIMIC: MODEL})
    return db


def test_convergence_ranks_the_mimic_pair_first(mimic_db):
    with Store.open(resolve_snapshot(mimic_db), read_only=True) as store:
        result = convergence(store, "color-pattern", TRAIT)
        groups = store.group_labels()
    ranked = result.ranked()
    assert {ranked.loc[0, "group_a"], ranked.loc[0, "group_b"]} == {MIMIC, MODEL}
    assert ranked.loc[0, "similarity"] > ranked.loc[1, "similarity"] + 0.2
    assert set(result.mean.index) == {"alba", MIMIC, MODEL}
    order = list(result.mean.index)  # clustered: the mimic pair sits side by side
    assert abs(order.index(MIMIC) - order.index(MODEL)) == 1
    top = result.pairs.iloc[0]
    assert {top.group_a, top.group_b} == {MIMIC, MODEL}
    assert groups[int(top.specimen_a)] == top.group_a and groups[int(top.specimen_b)] == top.group_b
    assert (result.pairs["group_a"] != result.pairs["group_b"]).all()
    assert result.pairs["similarity"].is_monotonic_decreasing


def test_map_command_writes_map_atlas_and_convergence_csv(mimic_db, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outputs and reads do not depend on the working directory
    result = runner.invoke(app, ["map", "--db", str(mimic_db), "--trait", TRAIT, "--method", "pca", "--out",
                                 "m.parquet", "--atlas", "atlas.png", "--grid", "3", "--color-by", "area_mm2"])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "m.parquet")
    with Store.open(resolve_snapshot(mimic_db), read_only=True) as store:  # the published snapshot holds the map
        tmap = load_map(store, "color-pattern", TRAIT)
        assert tmap is not None and tmap.method == "pca"
        assert set(table["specimen_id"]) == set(tmap.ids.tolist()) == set(store.population("color-pattern", TRAIT).tolist())
        assert table["area_mm2"].notna().all() and set(table["group"]) == {"alba", MIMIC, MODEL}
        cells = atlas_cells(tmap, 3, 3)
        picture = atlas_image(store, TRAIT, cells, tile=32)
    filled = [c for c in cells if c.specimen_id is not None]
    assert sum(c.count for c in cells) == len(tmap) and filled
    for cell in filled:  # each cell shows a real specimen of its own region, the one nearest its centre
        inside = (tmap.xy[:, 0] >= cell.x0 - 1e-9) & (tmap.xy[:, 0] <= cell.x1 + 1e-9) & \
                 (tmap.xy[:, 1] >= cell.y0 - 1e-9) & (tmap.xy[:, 1] <= cell.y1 + 1e-9)
        assert cell.specimen_id in tmap.ids[inside]
        centre = np.array([(cell.x0 + cell.x1) / 2, (cell.y0 + cell.y1) / 2])
        own = tmap.xy[tmap.ids == cell.specimen_id][0]
        assert np.linalg.norm(own - centre) <= np.linalg.norm(tmap.xy[inside] - centre, axis=1).min() + 1e-9
    tiles = picture[2:, 2:].reshape(3, 34, 3, 34, 3)[:, :32, :, :32]
    assert sum(not (tiles[c.row, :, c.col] == 235).all() for c in cells) == len(filled)  # filled cells drawn
    assert (tmp_path / "atlas.png").stat().st_size > 1000

    result = runner.invoke(app, ["convergence", "--db", str(mimic_db), "--trait", TRAIT, "--out", "c.csv"])
    assert result.exit_code == 0, result.output
    csv = pd.read_csv(tmp_path / "c.csv")
    assert len(csv) == 9 and set(csv.columns) >= {"group", "other_group", "mean_best_similarity", "std_best_similarity"}
    assert len(pd.read_csv(tmp_path / "c.pairs.csv")) > 0
    bad = runner.invoke(app, ["convergence", "--db", str(mimic_db), "--trait", TRAIT, "--by", "nosuchcolumn"])
    assert bad.exit_code == 2 and "nosuchcolumn" in bad.output


def test_map_page_shows_a_search_result_on_the_map(mimic_db, monkeypatch):
    """The Search page's last result on the map of its trait: the query as a disc, its hits ringed;
    the points are sent once per session, not on every rerun."""
    from streamlit.testing.v1 import AppTest

    from sst_search.pattern_map import build_map
    from sst_search.query import SearchEngine
    from sst_search.store.snapshots import publish_snapshot

    with Store.open(mimic_db) as store:
        build_map(store, "color-pattern", TRAIT, "pca")
    publish_snapshot(mimic_db)
    with SearchEngine.open(mimic_db) as engine:
        query = int(engine.store.population("color-pattern", TRAIT)[0])
        results = engine.search(TRAIT, 3, specimen_id=query)
        tmap = load_map(engine.store, "color-pattern", TRAIT)
    monkeypatch.setenv("SST_SEARCH_DB", str(mimic_db))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "ui" / "app.py"), default_timeout=120)
    for key, value in {"page": "Map", "results": results, "query_mode": "Specimen", "query_specimen": query}.items():
        at.session_state[key] = value
    at.run()
    at.selectbox(key="map_trait").set_value(TRAIT).run()
    assert not at.exception, at.exception
    scatter = at.get("component_instance")[0].proto
    args, binary = json.loads(scatter.json_args), {a.key: a.bytes for a in scatter.special_args}
    # every map point as float32 pairs, in the map's (id) order; the result's hits and query as map rows
    assert np.array_equal(np.frombuffer(binary["xy"], np.float32).reshape(-1, 2), tmap.xy.astype(np.float32))
    assert len(binary["codes"]) == len(tmap)
    assert sorted(tmap.ids[args["hits"]]) == sorted(r.specimen_id for r in results)
    assert tmap.ids[args["query"]] == query
    at.run()  # a rerun of the same map and colouring: the browser holds the points, none are sent again
    again = at.get("component_instance")[0].proto
    assert not again.special_args and json.loads(again.json_args)["hits"] == args["hits"]
