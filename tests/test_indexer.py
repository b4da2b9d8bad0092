"""Indexer end to end on the synthetic collection: random SAM 2 weights, colour-pattern embedder."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from indexer.job import run_index
from sst_search.config import Config
from sst_search.store import SPECIMEN_TRAIT, Store, specimen_id
from sst_search.synthetic import PIXELS_PER_MM, generate_collection
from tests.fixtures import random_weights_config, random_weights_settings


def _config(**sections) -> Config:
    indexer = {"commit_every": 4, **sections.pop("indexer", {})}
    return random_weights_config(indexer=indexer, **sections)


@pytest.fixture
def collection(tmp_path):
    return generate_collection(tmp_path / "syn", species=2, per_species=4, seed=3)


def _index(coll, db, config=None, **kwargs):
    """``tracker=`` hands in the session's SAM 2 (the one the config describes) instead of building one per run."""
    return run_index(coll.manifest, coll.references, db, config or _config(), **kwargs)


def _catalog(db):
    with Store.open(db, read_only=True) as store:
        states = store.specimen_states()
        rows = [(r["specimen_id"], r["status"], r["group_name"], states[r["specimen_id"]][0])
                for r in sorted(store.specimens(status=None), key=lambda r: r["specimen_id"])]
        return rows, store.check_consistency(), store.status()


def _rows(manifest):
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


def test_index_agrees_with_faiss_and_reindex_is_incremental(collection, tmp_path, tracker):
    db = tmp_path / "db.duckdb"
    first = _index(collection, db, tracker=tracker)
    assert first.counts["indexed"] == 8 and first.exit_code == 0 and first.weights_random
    rows, problems, status = _catalog(db)
    assert problems == [] and len(rows) == 8
    specimen_index = next(i for i in status["indexes"] if i["trait"] == "__specimen__")
    assert specimen_index["vectors"] == 8 and specimen_index["file"] == "fresh"
    with Store.open(db, read_only=True) as store:
        meta = store.get_specimen(rows[0][0])["metadata"]
        assert {"catalogNumber", "scientificName", "locality"} <= set(meta)

    assert _index(collection, db, tracker=tracker).counts == {"indexed": 0, "failed": 0, "no_reference": 0, "unchanged": 8,
                                                              "removed": 0, "moved": 0}

    # Change one image: exactly that one is re-processed.
    key = _rows(collection.manifest)[2]["path"]
    target = collection.root / key
    img = np.asarray(Image.open(target)).copy()
    img[:10, :10] = 0
    Image.fromarray(img).save(target)
    again = _index(collection, db, tracker=tracker)
    assert again.counts["indexed"] == 1 and again.counts["unchanged"] == 7
    changed = [r for r in _catalog(db)[0] if r[0] == specimen_id(key)]
    assert len(changed) == 1

    # Delete one file (and its manifest row): it leaves the catalog and every FAISS index.
    rows = _rows(collection.manifest)
    gone = collection.root / rows[5]["path"]
    gone.unlink()
    with open(collection.manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for i, r in enumerate(rows) if i != 5)
    removed = _index(collection, db, tracker=tracker)
    assert removed.counts["removed"] == 1 and removed.counts["unchanged"] == 7
    rows_after, problems, status = _catalog(db)
    assert len(rows_after) == 7 and problems == []
    assert specimen_id(rows[5]["path"]) not in {r[0] for r in rows_after}
    assert next(i for i in status["indexes"] if i["trait"] == "__specimen__")["vectors"] == 7


def test_fingerprint_changes_redo_only_affected_items(tmp_path, tracker):
    collection = generate_collection(tmp_path / "syn", species=2, per_species=2, seed=3)  # four runs: few items each
    db = tmp_path / "db.duckdb"
    _index(collection, db, tracker=tracker)
    # New references for one group: only that group's items are re-done.
    group = collection.groups[0]
    traits = collection.references / group / "traits.yaml"
    traits.write_text(traits.read_text().replace("forewing_band", "forewing_band_renamed"))
    assert _index(collection, db, tracker=tracker).counts["indexed"] == 2
    # Another SAM 2 input size changes every SST fingerprint.
    assert _index(collection, db, _config(segmentation={"image_size": 64})).counts["indexed"] == 4
    assert _index(collection, db, force=True, tracker=tracker).counts["indexed"] == 4


def test_bad_files_missing_references_and_provided_masks(collection, tmp_path, tracker):
    rows = _rows(collection.manifest)
    (collection.root / rows[0]["path"]).write_bytes(b"")  # zero-byte image
    (collection.root / rows[1]["path"]).write_text("not an image")
    rows.append({**rows[2], "path": "images/unknown_group.png", "group": "nosuchgroup", "catalogNumber": "X-1"})
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(collection.root / "images/unknown_group.png")
    with open(collection.manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # Hand annotations for two items: the ground truth itself, recorded as "provided".
    masks = tmp_path / "masks"
    masks.mkdir()
    provided = [rows[3]["path"], rows[4]["path"]]
    for p in provided:
        gt = collection.ground_truth / p.split("/", 1)[1]
        (masks / gt.name).write_bytes(gt.read_bytes())
    db = tmp_path / "db.duckdb"
    summary = _index(collection, db, masks=masks, tracker=tracker)
    assert summary.counts["failed"] == 2 and summary.counts["no_reference"] == 1 and summary.counts["indexed"] == 6
    assert summary.exit_code == 1
    reasons = dict(summary.failures)
    assert "empty" in reasons[str(collection.root / rows[0]["path"])]
    assert "not a readable image" in reasons[str(collection.root / rows[1]["path"])]
    assert "nosuchgroup" in reasons[str(collection.root / "images/unknown_group.png")]
    with Store.open(db, read_only=True) as store:
        for p in provided:
            sid = specimen_id(p)
            masks_ = store.trait_masks(sid)
            assert masks_ and {m.source for m in masks_} == {"provided"}
            gt = np.asarray(Image.open(collection.ground_truth / p.split("/", 1)[1]))
            np.testing.assert_array_equal(store.label_map(sid), gt)
            # measured as the masks were written: areas are the ground truth's pixel counts, in mm by the item's scale
            measured = store.measurements_frame(specimen_ids=[sid]).set_index("trait_id")
            for tid in set(np.unique(gt).tolist()) - {0}:
                assert measured.loc[tid, "area_px"] == (gt == tid).sum()
                assert measured.loc[tid, "area_mm2"] == pytest.approx((gt == tid).sum() / PIXELS_PER_MM**2)
                assert measured.loc[tid, "scale_source"] == "metadata:pixelsPerMM"
        assert store.check_consistency() == []
    # A store from before measurements existed: its masks get measured by the next run, without re-segmenting.
    unmeasured = specimen_id(provided[0])
    with Store.open(db) as store:
        store.replace_measurements({unmeasured: []})
        assert store.unmeasured_specimens() == [unmeasured]
    # A re-run retries the failed and unreferenced items only.
    again = _index(collection, db, masks=masks, tracker=tracker)
    assert again.counts["unchanged"] == 6 and again.counts["failed"] == 2 and again.counts["no_reference"] == 1
    assert again.remeasured == 1
    with Store.open(db, read_only=True) as store:
        assert store.unmeasured_specimens() == [] and len(store.measurements_frame(specimen_ids=[unmeasured])) > 0


@pytest.mark.slow  # a whole CLI run killed and resumed; the fetch and store kill tests stay in the quick suite
def test_killed_job_resumes_without_loss_or_duplicates(tmp_path, tracker):
    # Four items, committed one at a time: killed after two commits, two are left to resume.
    coll = generate_collection(tmp_path / "syn", species=2, per_species=2, seed=5)
    db = tmp_path / "db.duckdb"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(random_weights_settings(indexer={"commit_every": 1})))
    cmd = [sys.executable, "-m", "sst_search.cli", "index", str(coll.manifest), "--references", str(coll.references),
           "--db", str(db), "--config", str(cfg), "--quiet"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    committed = 0
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stderr.readline()
        if "committed" in line:
            committed += 1
            if committed == 2:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed == 2, "the job never committed two units"
    with Store.open(db) as store:  # a writer open repairs stale FAISS files
        partial = len(store.specimen_states())
        assert 2 <= partial < 4
        assert store.check_consistency() == []
    resumed = _index(coll, db, _config(indexer={"commit_every": 1}), tracker=tracker)
    assert resumed.counts["unchanged"] == partial and resumed.counts["indexed"] == 4 - partial
    rows, problems, status = _catalog(db)
    assert len(rows) == 4 and len({r[0] for r in rows}) == 4 and problems == []
    assert all(r[1] == "indexed" for r in rows)
    assert next(i for i in status["indexes"] if i["trait"] == "__specimen__")["vectors"] == 4


@pytest.mark.ray
@pytest.mark.slow  # a Ray cluster and two actor processes that each import torch and build SAM 2
def test_ray_engine_produces_the_same_catalog(tmp_path, ray_cluster):
    # Intra-op reductions depend on the thread count, so the local run uses one thread like
    # each Ray actor does; then the two catalogs must be identical, masks and vectors included.
    # It builds its own SAM 2: the session's caches support features computed with more threads.
    # Two items (two groups, so two supports) in commits of one: both actors get work and the
    # writer commits twice. Each actor starts a process that builds its own SAM 2: seconds each.
    collection = generate_collection(tmp_path / "syn", species=2, per_species=1, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = _index(collection, tmp_path / "local.duckdb")
    finally:
        torch.set_num_threads(threads)
    ray_run = _index(collection, tmp_path / "ray.duckdb", _config(indexer={"engine": "ray", "num_workers": 2, "commit_every": 1}))
    assert local.counts == ray_run.counts
    def catalog(store):
        ids = store.specimen_ids(status=None).tolist()
        specimens = [{k: v for k, v in store.get_specimen(i).items() if k != "updated_at"} for i in ids]
        masks = [[(m.trait_id, m.trait_name, m.area, m.rle) for m in store.trait_masks(i)] for i in ids]
        vectors = {key: (lambda v: (v[0].tolist(), v[1].tolist()))(store.get_vectors(*key)) for key in store.index_keys()}
        return specimens, masks, vectors

    with Store.open(tmp_path / "local.duckdb", read_only=True) as a, Store.open(tmp_path / "ray.duckdb", read_only=True) as b:
        for part, x, y in zip(("specimens", "masks", "vectors"), catalog(a), catalog(b)):
            assert x == y, part
        assert b.check_consistency() == []
        assert b.runs()[-1]["engine"] == "ray"


def test_orientation_and_confidences_are_stored(tmp_path):
    coll = generate_collection(tmp_path / "syn", species=1, per_species=3, seed=5)
    db = tmp_path / "db.duckdb"
    summary = _index(coll, db, _config(segmentation={"orientation": "auto", "mirror": True, "image_size": 128}))
    assert summary.counts["indexed"] == 3
    with Store.open(db, read_only=True) as store:
        ids = store.filter_specimens()
        turned = {sid: store.get_specimen(sid)["orientation"] for sid in ids}
        assert set(turned.values()) <= {0, 90, 180, 270}
        mirrored = {sid: store.get_specimen(sid)["mirrored"] for sid in ids}
        assert set(mirrored.values()) <= {True, False}
        scores = {}
        for sid in ids:
            masks = store.trait_masks(sid)
            assert masks and all(m.object_score is not None and m.predicted_iou is not None for m in masks)
            assert all(m.quality is None for m in masks)  # the cycle IoU only with --quality
            scores[sid] = {m.trait_name: m.object_score for m in masks}
    # Both are usable in search filters.
    from sst_search.query import Filter, SearchEngine

    trait = next(iter(scores[ids[0]]))
    cut = sorted(s[trait] for s in scores.values() if trait in s)[0]
    with SearchEngine.open(db) as engine:
        def found(*filters):
            return {h.specimen_id for h in engine.search(SPECIMEN_TRAIT, k=10, specimen_id=ids[0], exclude_query=False,
                                                           filters=list(filters))}

        assert found(Filter(field=f"{trait}.object_score", op=">", value=cut)) == {
            sid for sid, s in scores.items() if s.get(trait, cut) > cut}
        assert found(Filter(field="orientation", op="==", value=str(turned[ids[0]]))) == {
            sid for sid, t in turned.items() if t == turned[ids[0]]}
        assert found(Filter(field="mirrored", op="==", value=str(mirrored[ids[0]]).lower())) == {
            sid for sid, m in mirrored.items() if m == mirrored[ids[0]]}
    # Upright indexing keeps the fingerprint it had before orientations existed; auto changes it.
    from indexer.plan import segmentation_fingerprint

    assert "orientation" not in segmentation_fingerprint(_config())
    assert segmentation_fingerprint(_config(segmentation={"orientation": "auto"}))["orientation"] == "auto"
    assert "mirror" not in segmentation_fingerprint(_config())
    assert segmentation_fingerprint(_config(segmentation={"mirror": True}))["mirror"] is True
