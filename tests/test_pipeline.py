"""The pipelined indexer writes exactly what the one-stage-after-another path writes, and a
failure inside a stage costs only its item."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pandas as pd
import pytest

from indexer.job import run_index
from sst_search.builder import build_tracker
from sst_search.config import Config
from sst_search.embed.color import ColorPatternEmbedder
from sst_search.store import Store
from sst_search.synthetic import generate_collection
from tests.fixtures import random_weights_config


def _config(threads: int | None) -> Config:
    return random_weights_config(indexer={"commit_every": 2, "threads": threads})


def _catalog(db) -> tuple:
    with Store.open(db, read_only=True) as store:
        ids = store.specimen_ids(status=None).tolist()
        specimens = [{k: v for k, v in store.get_specimen(i).items() if k != "updated_at"} for i in ids]
        masks = [[(m.trait_id, m.area, m.rle, m.object_score, m.predicted_iou) for m in store.trait_masks(i)] for i in ids]
        measurements = store.measurements_frame().sort_values(["specimen_id", "trait_id"])
        vectors = {key: tuple(a.tolist() for a in store.get_vectors(*key)) for key in store.index_keys()}
        return specimens, masks, measurements.reset_index(drop=True), vectors


@pytest.fixture(scope="module")
def mixed_collection(tmp_path_factory):
    """SST items, items with provided masks and one unreadable image, in units of two."""
    root = tmp_path_factory.mktemp("pipeline")
    coll = generate_collection(root / "syn", species=2, per_species=3, seed=4)
    masks = root / "masks"
    for group in coll.groups:
        (masks / group).mkdir(parents=True)
        first = sorted((coll.ground_truth / group).glob("*.png"))[0]
        shutil.copy(first, masks / group / first.name)
    broken = next((coll.root / "images").rglob("*.png"))
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return coll, masks


def test_pipelined_store_equals_serial_store(mixed_collection, tmp_path, tracker):
    coll, masks = mixed_collection
    # A SAM 2 of its own, at 128 px: at the tests' 96 px one pixel where two traits' logits tie
    # exactly (random weights make such ties) went either way depending on what had run before
    # in the process, whichever way the units were scheduled.
    tracker = build_tracker(tracker.model, "random", image_size=128, device="cpu")
    runs = {}
    for threads in (0, 2):
        db = tmp_path / f"threads{threads}.duckdb"
        summary = run_index(coll.manifest, coll.references, db, _config(threads), masks=masks, tracker=tracker)
        runs[threads] = summary
        assert summary.counts["indexed"] == 5 and summary.counts["failed"] == 1, summary.counts
        assert summary.timings["measure"] > 0 and summary.timings["segment"] > 0
    serial, pipelined = _catalog(tmp_path / "threads0.duckdb"), _catalog(tmp_path / "threads2.duckdb")
    for part, a, b in zip(("specimens", "masks", "vectors"), serial[:2] + serial[3:], pipelined[:2] + pipelined[3:]):
        assert a == b, part
    assert len(serial[2]) > 0
    pd.testing.assert_frame_equal(serial[2], pipelined[2], check_exact=True)
    assert runs[0].failures == runs[2].failures


class _FailsOnWideImages(ColorPatternEmbedder):
    """The real colour embedder, refusing one image: stands for any item an embedder cannot take."""

    def embed_batch(self, items):
        if any(item.image.shape[1] == 300 for item in items):
            raise ValueError("cannot embed a 300 px wide image")
        return super().embed_batch(items)


def test_a_failing_item_inside_a_stage_fails_alone(tmp_path):
    coll = generate_collection(tmp_path / "syn", species=1, per_species=4, seed=8)
    odd = sorted((coll.root / "images").rglob("*.png"))[1]
    from PIL import Image

    Image.open(odd).convert("RGB").resize((300, 200)).save(odd)
    gt = sorted((coll.ground_truth).rglob(odd.name))[0]
    Image.open(gt).resize((300, 200), Image.NEAREST).save(gt)
    summary = run_index(coll.manifest, coll.references, tmp_path / "db.duckdb", _config(2),
                        masks=coll.ground_truth, embedder=_FailsOnWideImages())
    assert summary.counts["indexed"] == 3 and summary.counts["failed"] == 1
    [(path, reason)] = summary.failures
    assert path.endswith(odd.name) and "embedding failed" in reason and "300 px" in reason
    with Store.open(tmp_path / "db.duckdb", read_only=True) as store:
        assert store.check_consistency() == []
        assert len(store.specimen_ids()) == 3
        assert np.isfinite(store.get_vectors("color-pattern", "__specimen__")[1]).all()


def test_units_finished_during_a_slow_write_share_the_next_transaction(tmp_path, monkeypatch):
    """When writing holds the pipeline back, finished units queue up and are committed
    together; nothing is lost or written twice."""
    coll = generate_collection(tmp_path / "syn", species=2, per_species=6, seed=9)
    batches = []
    write = Store.write_batch

    def slow_write(self, records):
        batches.append(len(records))
        time.sleep(0.4)
        return write(self, records)

    monkeypatch.setattr(Store, "write_batch", slow_write)
    summary = run_index(coll.manifest, coll.references, tmp_path / "db.duckdb", _config(2), masks=coll.ground_truth)
    assert summary.counts["indexed"] == 12 and sum(batches) == 12
    assert len(batches) < 6 and max(batches) > 2  # six units of two, fewer commits
    with Store.open(tmp_path / "db.duckdb", read_only=True) as store:
        assert len(store.specimen_ids()) == 12 and store.check_consistency() == []
