"""Which specimen to label: the medoid first, then the specimens least covered by earlier picks;
failed images are never suggested."""

from __future__ import annotations

import csv

import numpy as np
from typer.testing import CliRunner

from sst_search.cli import app
from sst_search.store import Store
from sst_search.suggest import representatives, suggest_from_store
from tests.ui_index import BROKEN


def test_medoid_first_then_farthest_first():
    eye = np.eye(5)
    centre = eye[0]
    # variants of the typical specimen, symmetric around it, and two odd ones
    cluster = [centre + 0.1 * eye[3], centre - 0.1 * eye[3], centre, centre + 0.1 * eye[4], centre - 0.1 * eye[4]]
    outliers = [eye[1], eye[2] + 0.2 * eye[1]]
    picks = representatives(np.vstack(cluster + outliers), n=3)
    assert picks[0][0] == 2
    assert sorted(i for i, _ in picks[1:]) == [5, 6]
    assert picks[0][1] == 0.0 and all(cov > 0.5 for _, cov in picks[1:])
    # asking for more supports than distinct specimens stops at the duplicates
    assert len(representatives(np.vstack([centre, centre, outliers[0]]), n=3)) == 2


def _broken_group(ui_db) -> str:
    with open(ui_db.parent / "collection" / "manifest.csv", newline="") as fh:
        return next(r["group"] for r in csv.DictReader(fh) if r["path"] == BROKEN)


def test_suggestions_from_the_index_skip_failed_specimens(ui_db):
    group = _broken_group(ui_db)
    with Store.open(ui_db, read_only=True) as store:
        indexed = set(store.filter_specimens(group=group))
        failed = set(store.filter_specimens(group=group, status="failed"))
        suggestions = suggest_from_store(store, group, n=10)
    assert failed and len(indexed) == 3
    assert [s.rank for s in suggestions] == list(range(1, len(suggestions) + 1))
    assert {s.key for s in suggestions} <= indexed and len(suggestions) >= 2
    assert suggestions[0].reason == "medoid" and suggestions[0].centrality == max(s.centrality for s in suggestions)


def test_cli_suggests_from_a_collection_without_references(ui_db):
    group = _broken_group(ui_db)
    result = CliRunner().invoke(app, ["refs", "suggest", "--group", group, "--n", "2",
                                      "--collection", str(ui_db.parent / "collection" / "manifest.csv")])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "2"] and [r[3] for r in rows] == ["medoid", "k-center"]
    assert all("broken" not in r[2] for r in rows)
    assert f"skipped {BROKEN}: " in result.output and "broken.png: corrupt or truncated" in result.output
