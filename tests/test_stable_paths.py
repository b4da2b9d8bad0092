"""Stable paths and ids: a catalog works from any working directory, survives moving the
collection (re-index or ``relocate``) and re-keys rows of stores written before item keys."""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import replace
from pathlib import Path

from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from indexer.job import run_index
from sst_search.cli import app as cli
from sst_search.images import load_image
from sst_search.mask_review import promote
from sst_search.query import SearchEngine
from sst_search.store import Store, specimen_id
from sst_search.store.review_tables import decisions
from sst_search.synthetic import generate_collection
from tests.fixtures import random_weights_config

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"
#: Provided masks (the ground truth) stand in for SAM 2: segmentation is not under test here.
CONFIG = random_weights_config()


def _index(manifest, coll, db, masks=None):
    return run_index(Path(manifest), coll.references, db, CONFIG, masks=masks or coll.ground_truth)


def _catalog(db) -> dict[int, tuple[str, str]]:
    with Store.open(db, read_only=True) as store:
        assert store.check_consistency() == []
        return {sid: (path, key) for sid, (path, key) in store.specimen_locations().items()}


def _rewrite(manifest: Path, fn) -> list[dict]:
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = [fn(dict(r)) for r in rows]
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_index_from_one_folder_search_and_view_from_another(tmp_path, monkeypatch):
    coll = generate_collection(tmp_path / "data" / "coll", species=1, per_species=3, seed=5)
    # Paths written the untidy ways manifests write them: ./x, a/../x.
    rows = _rewrite(coll.manifest, lambda r: {**r, "path": "./images/../" + r["path"]})
    keys = [r["path"].replace("./images/../", "") for r in rows]
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    db = Path("out/index.duckdb")  # relative to where the run starts, like a user would type it
    db.parent.mkdir()
    summary = _index(os.path.relpath(coll.manifest), coll, db)
    assert summary.counts["indexed"] == 3, summary.failures
    db = db.resolve()
    catalog = _catalog(db)
    assert {sid for sid in catalog} == {specimen_id(k) for k in keys}
    for sid, (path, key) in catalog.items():
        assert Path(path).is_absolute() and path == os.path.normpath(path) and ".." not in path
        assert path == str(coll.root.resolve() / key)

    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    sid = specimen_id(keys[0])
    engine = SearchEngine.open(db)
    try:
        hits = engine.search("__specimen__", 3, specimen_id=sid)  # the query itself is left out
        assert {h.specimen_id for h in hits} == {specimen_id(k) for k in keys[1:]}
        assert load_image(hits[0].path).shape[:2] == (192, 256)
    finally:
        engine.close()
    monkeypatch.setenv("SST_SEARCH_DB", str(db))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.query_params["page"] = "Specimen"
    at.query_params["specimen"] = str(sid)
    at.run(timeout=60)
    at.sidebar.radio(key="page").set_value("Specimen").run(timeout=60)
    assert not at.exception, at.exception
    assert not [w.value for w in at.warning if "unavailable" in w.value]
    assert at.selectbox(key="specimen_id").value == sid and len(at.image) >= 1


def test_moved_collection_keeps_ids_and_is_not_reprocessed(tmp_path):
    coll = generate_collection(tmp_path / "a" / "coll", species=1, per_species=3, seed=6)
    db = tmp_path / "index.duckdb"
    assert _index(coll.manifest, coll, db).counts["indexed"] == 3
    before = _catalog(db)

    # The whole collection moves: same keys, same ids, only paths change; nothing re-done.
    moved_root = tmp_path / "b" / "coll"
    moved_root.parent.mkdir()
    shutil.move(coll.root, moved_root)
    moved = replace(coll, root=moved_root, manifest=moved_root / "manifest.csv",
                    references=moved_root / "references", ground_truth=moved_root / "ground_truth")
    again = _index(moved.manifest, moved, db)
    assert again.counts == {**again.counts, "indexed": 0, "unchanged": 3, "moved": 3, "removed": 0}
    after = _catalog(db)
    assert set(after) == set(before)
    assert all(path.startswith(str(moved_root) + "/") for path, _ in after.values())

    # One file renamed inside the collection: its row (masks, vectors) follows it, no re-segmentation.
    rows = _rewrite(moved.manifest, lambda r: r)
    old_key = rows[0]["path"]
    new_key = "images/renamed.png"
    (moved_root / old_key).rename(moved_root / new_key)
    gt = next(moved.ground_truth.rglob(Path(old_key).name))
    gt.rename(gt.with_name("renamed.png"))
    _rewrite(moved.manifest, lambda r: {**r, "path": new_key if r["path"] == old_key else r["path"]})
    renamed = _index(moved.manifest, moved, db)
    assert renamed.counts["indexed"] == 0 and renamed.counts["moved"] == 1 and renamed.counts["removed"] == 0
    catalog = _catalog(db)
    assert specimen_id(new_key) in catalog and specimen_id(old_key) not in catalog

    # relocate: back where it was, in one command, published for readers; a promoted support's note follows.
    promoted = specimen_id(rows[1]["path"])
    promote(db, promoted, moved.references, "curator", publish=False)
    shutil.move(moved_root, coll.root)
    result = CliRunner().invoke(cli, ["relocate", "--db", str(db), str(moved_root), str(coll.root)])
    assert result.exit_code == 0, result.output
    with Store.open(db, read_only=True) as store:
        [note] = [d["note"] for d in decisions(store, promoted) if d["decision"] == "promote"]
    assert note.startswith(str(coll.root) + "/") and Path(note).is_file(), note
    assert all(Path(p).is_file() and p.startswith(str(coll.root) + "/") for p, _ in _catalog(db).values())
    engine = SearchEngine.open(db)
    try:
        hit = engine.search("__specimen__", 1, specimen_id=specimen_id(rows[1]["path"]))[0]
        assert hit.path.startswith(str(coll.root) + "/") and load_image(hit.path).size
    finally:
        engine.close()
    wrong = CliRunner().invoke(cli, ["relocate", "--db", str(db), str(tmp_path / "nowhere"), str(tmp_path)])
    assert wrong.exit_code == 2 and "no stored path starts with" in wrong.output


def test_rows_keyed_by_absolute_path_are_rekeyed_not_recomputed(tmp_path):
    coll = generate_collection(tmp_path / "coll", species=1, per_species=3, seed=8)
    db = tmp_path / "index.duckdb"
    _index(coll.manifest, coll, db)
    # What an older version wrote: ids from the absolute resolved path, no item key.
    with Store.open(db) as store:
        legacy = {sid: (specimen_id(str(Path(path).resolve())), path, None)
                  for sid, (path, _) in store.specimen_locations().items()}
        store.move_specimens(legacy)
        assert {key for _, key in store.specimen_locations().values()} == {None}
    again = _index(coll.manifest, coll, db)
    assert again.counts["indexed"] == 0 and again.counts["moved"] == 3 and again.counts["removed"] == 0
    assert set(_catalog(db)) == set(legacy)  # back to the ids of the item keys
    assert all(key for _, key in _catalog(db).values())


def test_a_key_listed_twice_is_a_failed_item_naming_both_rows(tmp_path):
    coll = generate_collection(tmp_path / "coll", species=1, per_species=2, seed=4)
    rows = _rewrite(coll.manifest, lambda r: r)
    with open(coll.manifest, "a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=list(rows[0])).writerow({**rows[0], "path": "./" + rows[0]["path"]})
    summary = _index(coll.manifest, coll, tmp_path / "index.duckdb")
    assert summary.counts["indexed"] == 2 and summary.counts["failed"] == 1, summary.failures
    [(_, reason)] = summary.failures
    assert f"listed at {coll.manifest}:2 and again at {coll.manifest}:4" in reason, reason
    assert summary.exit_code == 1
