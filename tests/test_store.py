"""The DuckDB + FAISS store on real files: round trips, removal, crash recovery, index kinds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from sst_search.config import IndexConfig
from sst_search.store import (
    SPECIMEN_TRAIT,
    SpecimenRecord,
    Store,
    TraitMask,
    decode_mask,
    encode_mask,
    masks_from_label_map,
    specimen_id,
    vector_column,
)
from sst_search.store.snapshots import publish_snapshot
from sst_search.store.verify import verify_files
from sst_search.vector_search.indexes import build_index, index_kind, save_index

DIM = 16


def _unit(rng, n, dim=DIM):
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _records(vectors, start=0, locality=lambda i: "Peru" if i % 3 else "Bolivia"):
    out = []
    for i, vec in enumerate(vectors, start=start):
        label_map = np.zeros((24, 32), np.uint8)
        label_map[2 : 6 + i % 7, 3:12] = 1
        label_map[14:20, 20 : 22 + i % 5] = 2
        out.append(
            SpecimenRecord(
                specimen_id=specimen_id(f"images/s{i}.png"),
                path=f"images/s{i}.png",
                status="indexed",
                group_name=f"sp{i % 2}",
                content_hash=f"h{i}",
                width=32,
                height=24,
                metadata={"locality": locality(i), "catalogNumber": f"C{i}"},
                masks=masks_from_label_map(label_map, {1: "band", 2: "spot"}, quality={1: 0.9}),
                vectors={("emb", "band"): vec, ("emb", SPECIMEN_TRAIT): vec[::-1].copy()},
            )
        )
    return out


def test_specimen_id_is_stable_and_63_bit():
    assert specimen_id("a/b.png") == specimen_id("a/b.png") != specimen_id("a/c.png")
    assert 0 <= specimen_id("a/b.png") < 2**63


def test_rle_round_trips_masks():
    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) > 0.6
    assert np.array_equal(decode_mask(encode_mask(mask)), mask)
    tm = TraitMask.from_mask(3, "band", mask, quality=0.5)
    assert tm.area == int(mask.sum()) and np.array_equal(tm.mask(), mask)


def test_round_trip_search_and_catalog_counts(tmp_path):
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 40)
    with Store.open(tmp_path / "cat.duckdb") as store:
        run = store.begin_run({"embedder": "emb"}, "cfg1")
        records = _records(vectors)
        store.write_batch(records[:25])
        store.write_batch(records[25:])
        store.finish_run(run, {"indexed": 40}, {"embed": 1.0})
        assert store.index("emb", "band").ntotal == 40
        assert store.check_consistency() == []
        hits = store.search("emb", "band", vectors[7], k=5)[0]
        # stored as float16: a cosine moves by less than 1e-3
        assert hits[0][0] == records[7].specimen_id and hits[0][1] == pytest.approx(1.0, abs=1e-3)
        expected = np.argsort(-(vectors @ vectors[7]))[:5]
        assert [h[0] for h in hits] == [records[j].specimen_id for j in expected]
        # metadata filters are SQL; filtered search returns only candidates
        bolivia = store.filter_specimens({"locality": "Bolivia"})
        assert sorted(bolivia) == sorted(r.specimen_id for r in records if r.metadata["locality"] == "Bolivia")
        filtered = store.search("emb", "band", vectors[7], k=3, candidate_ids=bolivia)[0]
        assert len(filtered) == 3 and {h[0] for h in filtered} <= set(bolivia)
        assert store.filter_specimens({"locality": ["Bolivia", "Peru"]}, group="sp0") == sorted(
            r.specimen_id for r in records if r.group_name == "sp0"
        )
    with Store.open(tmp_path / "cat.duckdb", read_only=True) as reader:
        status = reader.status()
        assert status["specimens"] == {"indexed": 40} and status["runs"] == 1
        assert {(i["trait"], i["vectors"], i["file"]) for i in status["indexes"]} == {
            ("band", 40, "fresh"), (SPECIMEN_TRAIT, 40, "fresh")
        }
        assert reader.check_consistency() == []
        specimen = reader.get_specimen(records[3].specimen_id)
        assert specimen["metadata"]["catalogNumber"] == "C3" and specimen["group_name"] == "sp1"
        masks = reader.trait_masks(records[3].specimen_id)
        assert [(m.trait_id, m.quality) for m in masks] == [(1, 0.9), (2, None)]
        label_map = reader.label_map(records[3].specimen_id)
        assert (label_map == 1).sum() == masks[0].area and label_map.shape == (24, 32)
        ids, matrix = reader.get_vectors("emb", "band", [records[5].specimen_id])
        np.testing.assert_array_equal(matrix[0], vector_column.rounded(vectors[5]))  # float16, exactly
        with pytest.raises(RuntimeError, match="read-only"):
            reader.remove_specimens(ids)


def test_confidences_and_orientation_are_stored_and_reopening_keeps_them(tmp_path):
    label_map = np.zeros((24, 32), np.uint8)
    label_map[2:8, 3:12], label_map[14:20, 20:24] = 1, 2
    record = SpecimenRecord(
        specimen_id=specimen_id("a.png"), path="a.png", status="indexed", width=32, height=24, orientation=270,
        masks=masks_from_label_map(label_map, {1: "band", 2: "spot"}, {1: 0.8}, "sst", {1: 0.9, 2: 0.2}, {1: 0.7, 2: 0.4}),
    )
    with Store.open(tmp_path / "cat.duckdb") as store:
        store.write_batch([record])
    for _ in range(2):  # the column additions are idempotent: an existing store keeps opening
        with Store.open(tmp_path / "cat.duckdb") as store:
            assert store.get_specimen(record.specimen_id)["orientation"] == 270
            masks = store.trait_masks(record.specimen_id)
            assert [(m.quality, m.object_score, m.predicted_iou) for m in masks] == [(0.8, 0.9, 0.7), (None, 0.2, 0.4)]


def test_reprocessing_replaces_old_rows_and_removal_hits_both_sides(tmp_path):
    rng = np.random.default_rng(2)
    vectors = _unit(rng, 10)
    with Store.open(tmp_path / "cat.duckdb") as store:
        records = _records(vectors)
        store.write_batch(records)
        # re-processed item: now failed, so its masks and vectors must disappear
        failed = SpecimenRecord(records[0].specimen_id, records[0].path, "failed", error="unreadable image")
        store.write_batch([failed])
        assert store.index("emb", "band").ntotal == 9
        assert store.trait_masks(failed.specimen_id) == []
        assert store.get_specimen(failed.specimen_id)["error"] == "unreadable image"
        removed = store.remove_specimens([records[1].specimen_id, records[2].specimen_id, 12345])
        assert removed == 2
        assert store.index("emb", "band").ntotal == 7
        assert store.get_vectors("emb", "band")[0].size == 7
        assert store.check_consistency() == []
        hits = {h[0] for h in store.search("emb", "band", vectors[1], k=10)[0]}
        assert records[1].specimen_id not in hits and len(hits) == 7
        assert store.status()["specimens"] == {"failed": 1, "indexed": 7}


def test_bad_records_are_refused_with_their_path(tmp_path):
    with Store.open(tmp_path / "cat.duckdb") as store:
        bad = SpecimenRecord(1, "x.png", "indexed", vectors={("emb", "band"): np.ones(DIM, np.float32)})
        with pytest.raises(ValueError, match="x.png .*not L2-normalised"):
            store.write_batch([bad])
        store.write_batch(_records(_unit(np.random.default_rng(3), 2)))
        wrong_dim = _records(_unit(np.random.default_rng(3), 1, dim=8), start=5)
        with pytest.raises(ValueError, match="dim"):
            store.write_batch(wrong_dim)
        assert store.status()["specimens"] == {"indexed": 2}


DIES_UNFLUSHED = textwrap.dedent(
    """
    import os, signal, sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_store import _records, _unit
    from sst_search.store import Store
    store = Store.open({db!r})
    vectors = _unit(np.random.default_rng(4), 30)
    store.write_batch(_records(vectors[:20]))
    store.flush_indexes()
    store.write_batch(_records(vectors[20:], start=20))  # committed, never flushed
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _as_written_before_float16(db, vectors_by_id):
    """Give the store at ``db`` the float32 ``FLOAT[]`` vectors column of stores written
    before vectors were kept as float16, holding ``vectors_by_id``'s exact values, and FAISS
    files built from them."""
    con = duckdb.connect(str(db))
    keys = con.execute("SELECT embedder, trait_name, specimen_id, faiss_id FROM vectors").fetchall()
    matrix = np.stack([vectors_by_id[(t, s)] for _, t, s, _ in keys])
    con.execute("DROP TABLE vectors")
    con.execute("CREATE TABLE vectors (embedder VARCHAR NOT NULL, trait_name VARCHAR NOT NULL, specimen_id BIGINT NOT NULL, "
                "faiss_id BIGINT NOT NULL, vector FLOAT[] NOT NULL, PRIMARY KEY (embedder, trait_name, specimen_id))")
    old = pa.table({"embedder": [k[0] for k in keys], "trait_name": [k[1] for k in keys],
                    "specimen_id": pa.array([k[2] for k in keys], pa.int64()), "faiss_id": pa.array([k[3] for k in keys], pa.int64()),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), DIM).cast(pa.list_(pa.float32()))})
    con.register("old", old)
    con.execute("INSERT INTO vectors SELECT * FROM old")
    for embedder, trait, generation in con.execute("SELECT embedder, trait_name, generation FROM index_state").fetchall():
        rows = [i for i, k in enumerate(keys) if k[:2] == (embedder, trait)]
        index = build_index(matrix[rows], np.array([keys[i][2] for i in rows], np.int64), DIM, IndexConfig())
        save_index(db.with_name(db.name + ".faiss"), embedder, trait, index, generation)
    con.close()


def test_a_store_written_with_float32_vectors_is_read_as_it_is_and_migrated_by_a_writer(tmp_path):
    db = tmp_path / "old.duckdb"
    rng = np.random.default_rng(5)
    vectors = _unit(rng, 30)
    records = _records(vectors)
    with Store.open(db) as store:
        store.write_batch(records)
        generation = store.generations()[("emb", "band")]
    written = {(t, r.specimen_id): v for r in records for (_, t), v in r.vectors.items()}
    _as_written_before_float16(db, written)

    # read as it is: a snapshot of the old kind publishes, verifies and answers
    snapshot = publish_snapshot(db)
    assert verify_files(snapshot) == []
    with Store.open(db, read_only=True) as reader:
        ids, matrix = reader.get_vectors("emb", "band", [records[4].specimen_id])
        np.testing.assert_array_equal(matrix[0], vectors[4])  # the float32 values, as stored
        assert reader.search("emb", "band", vectors[4], k=1)[0][0][0] == records[4].specimen_id

    # a migration killed half-way left its partial table behind: the next one starts over
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE vectors_float16 AS SELECT embedder, trait_name, specimen_id, faiss_id, "
                "[1::SMALLINT] AS vector FROM vectors LIMIT 3")
    con.close()
    with Store.open(db) as store:
        kinds = store.con.execute("SELECT table_name, data_type FROM duckdb_columns() "
                                  "WHERE column_name = 'vector' ORDER BY 1").fetchall()
        assert kinds == [("vectors", "SMALLINT[]")]
        assert store.generations()[("emb", "band")] == generation + 1  # the float32-built indexes are stale
        ids, matrix = store.get_vectors("emb", "band")
        order = {r.specimen_id: i for i, r in enumerate(records)}
        np.testing.assert_array_equal(matrix, vector_column.rounded(vectors[[order[int(i)] for i in ids]]))
        assert store.check_consistency() == []
        assert store.search("emb", "band", vectors[4], k=1)[0][0][0] == records[4].specimen_id
    assert verify_files(publish_snapshot(db)) == []


def test_stale_or_missing_faiss_files_are_rebuilt_on_open(tmp_path):
    db = tmp_path / "cat.duckdb"
    # A writer process dies (SIGKILL) after a commit whose FAISS files it never saved.
    died = subprocess.run([sys.executable, "-c", DIES_UNFLUSHED.format(tests=os.path.dirname(__file__), db=str(db))],
                          capture_output=True, text=True)
    assert died.returncode == -signal.SIGKILL, died.stderr
    with Store.open(db, read_only=True) as reader:
        assert any("stale" in p for p in reader.check_consistency())
        assert reader.index("emb", "band").ntotal == 30  # readers rebuild in memory
    for f in (tmp_path / "cat.duckdb.faiss" / "emb").glob("band.*"):
        f.unlink()
    with Store.open(db) as store:  # the writer repairs on open
        assert store.check_consistency() == []
        assert store.index("emb", "band").ntotal == 30
    with Store.open(db, read_only=True) as reader:
        assert reader.check_consistency() == []
        assert all(i["file"] == "fresh" for i in reader.status()["indexes"])


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_store import _records, _unit
    from sst_search.store import Store
    store = Store.open({db!r})
    rng = np.random.default_rng(0)
    for b in range(1000):
        store.write_batch(_records(_unit(rng, 20), start=b * 20))
        if b % 3 == 0:
            store.flush_indexes()
        print(b, flush=True)
    """
)


def test_sigkill_mid_indexing_leaves_a_consistent_store(tmp_path):
    db = tmp_path / "cat.duckdb"
    code = WRITER.format(tests=os.path.dirname(__file__), db=str(db))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    for _ in range(5):  # let it commit and flush a few batches, then kill it mid-stream
        assert proc.stdout.readline(), "writer died early"
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store.open(db) as store:
        n = store.status()["specimens"]["indexed"]
        assert n >= 100 and n % 20 == 0  # whole batches only
        assert store.index("emb", "band").ntotal == n
        assert store.check_consistency() == []


@pytest.mark.parametrize("approx", ["ivf", "hnsw"])
def test_switching_to_an_approximate_index_keeps_recall(tmp_path, approx):
    rng = np.random.default_rng(5)
    centers = _unit(rng, 20)
    vectors = centers[rng.integers(0, 20, 1200)] + 0.15 * rng.normal(size=(1200, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    config = IndexConfig(exact_threshold=500, approximate=approx)
    with Store.open(tmp_path / "cat.duckdb", index_config=config) as store:
        store.write_batch(_records(vectors[:400]))
        assert store.status()["indexes"] and type(store.index("emb", "band")).__name__ == "IndexIDMap2"
        queries = vectors[:50]
        exact = [[h[0] for h in row] for row in store.search("emb", "band", queries, k=10)]
        for start in range(400, 1200, 200):
            store.write_batch(_records(vectors[start : start + 200], start=start))
        store.flush_indexes()
        assert store.status()["indexes"][1]["kind"] == approx
        assert store.check_consistency() == []
        ids, matrix = store.get_vectors("emb", "band")
        truth = ids[np.argsort(-(queries @ matrix.T), axis=1)[:, :10]]
        approx_hits = [[h[0] for h in row] for row in store.search("emb", "band", queries, k=10)]
        recall = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(approx_hits, truth)])
        assert recall >= 0.9
        # the first 400 are still found as before the switch when their neighbours did not change
        assert all(row[0] == ex[0] for row, ex in zip(approx_hits, exact))
        # a filter to a handful of ids is answered exactly, whatever the index kind
        cands = ids[::97]
        filtered = store.search("emb", "band", queries[:1], k=3, candidate_ids=cands)[0]
        best = cands[np.argsort(-(matrix[::97] @ queries[0]))[:3]]
        assert [h[0] for h in filtered] == list(best)
        # removal works (HNSW by rebuilding) and stays consistent
        store.remove_specimens(ids[:100])
        assert store.index("emb", "band").ntotal == 1100
        assert store.check_consistency() == []
    # a reader that must rebuild a lost index file builds the kind the writer chose, not its own default
    for stale in (tmp_path / "cat.duckdb.faiss").rglob("*.json"):
        stale.unlink()
    with Store.open(tmp_path / "cat.duckdb", read_only=True) as reader:
        assert reader.index_config.approximate == approx
        assert index_kind(reader.index("emb", "band")) == approx
