"""Shards of a published snapshot read their vectors where they lie in its float16 vectors
at rest (no copy, no scan of the catalog's vectors table), fill the published IVF index's
trained lists instead of training their own, and still merge to the single snapshot's answer."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pytest

from sst_search.config import IndexConfig
from sst_search.query import Filter
from sst_search.sharding import IndexShard
from sst_search.store import Store
from sst_search.store.snapshots import publish_snapshot
from sst_search.vector_search import coded_centroids
from sst_search.vector_search.at_rest import vector_paths, vectors_dir
from sst_search.vector_search.indexes import index_kind, ivf_of

N, DIM, KEY = 1_200, 16, ("e", "t")


def test_shards_of_a_snapshot_hold_its_float16_rows_and_merge_to_its_answer(tmp_path):
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.choice(1 << 62, size=N, replace=False).astype(np.int64)
    db = tmp_path / "s.duckdb"
    with Store.open(db, index_config=IndexConfig(exact_threshold=100_000)) as store:
        store.write_columns(pa.table({"specimen_id": ids, "path": [f"/i/{i}" for i in range(N)],
                                      "status": ["indexed"] * N, "group_name": [f"g{i % 3}" for i in range(N)]}),
                            vectors={KEY: (ids, vectors)})
    snapshot = publish_snapshot(db)
    shards = [IndexShard(str(snapshot), *KEY, i, 3) for i in range(3)]
    try:
        for i, shard in enumerate(shards):
            assert shard.table.matrix.dtype == np.float16 and isinstance(shard.table.matrix.matrix, np.memmap)
            assert Path(shard.table.matrix.matrix.filename) == vector_paths(vectors_dir(snapshot), KEY)[0]
            assert (shard.table.ids % 3 == i).all()
        held = np.concatenate([s.table.ids for s in shards])
        assert np.array_equal(np.sort(held), np.sort(ids))
        with Store.open(snapshot, read_only=True) as one:
            for row in (0, 11, 500):
                for filters in ([], [Filter(field="group", op="==", value="g2")]):
                    expected = one.filtered_search(*KEY, vectors[row], 10, one.admission(filters), skip=int(ids[row]))
                    merged = sorted((h for s in shards for h in s.search(vectors[row], 10, filters, int(ids[row]))),
                                    key=lambda h: (-h[1], h[0]))[:10]
                    assert [i for i, _ in merged] == [i for i, _ in expected.hits]
    finally:
        for shard in shards:
            shard.store.close()


def _lists(index: faiss.Index) -> list[set[int]]:
    invlists = ivf_of(index).invlists
    return [set(faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).tolist()) if invlists.list_size(i)
            else set() for i in range(invlists.nlist)]


@pytest.mark.parametrize("factory", ["IVF{nlist},SQ8", "IVF{nlist},PQ{dim}x4fs"])
def test_shards_of_a_published_ivf_index_copy_its_entries_and_find_at_least_its_neighbours(tmp_path, factory):
    """A shard's index holds the published index's entries of its vectors, in the same lists
    with the same codes (copied, not trained or encoded again), so the shards probe what the
    single index probes and their merged answer is at least as close to the exact one."""
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, 4 * N)] + 0.3 * rng.standard_normal((4 * N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(4 * N, dtype=np.int64) * 7 + 3
    db = tmp_path / "ivf.duckdb"
    config = IndexConfig(exact_threshold=500, factory=factory, nprobe_factor=0.5)
    with Store.open(db, index_config=config) as store:
        store.write_columns(pa.table({"specimen_id": ids, "path": [f"/i/{i}" for i in range(len(ids))],
                                      "status": ["indexed"] * len(ids)}), vectors={KEY: (ids, vectors)})
    snapshot = publish_snapshot(db)
    shards = [IndexShard(str(snapshot), *KEY, i, 3) for i in range(3)]
    try:
        with Store.open(snapshot, read_only=True) as one:
            published = one.index(*KEY)
            assert index_kind(published) == "ivf" and ivf_of(published).nprobe < ivf_of(published).nlist
            whole = _lists(published)
            probe = faiss.SearchParametersIVF(nprobe=ivf_of(published).nprobe)
            for number, shard in enumerate(shards):
                assert shard.index.ntotal == len(shard.table)
                # a fast-scan shard coded its lists' centroids when it started, not on its first search
                assert (coded_centroids._coded.get(shard.index) is not None) == factory.endswith("x4fs")
                assert _lists(shard.index) == [{i for i in full if i % 3 == number} for full in whole]
                # the shard's codes are the published index's: the same scores for its vectors
                probe.sel = faiss.IDSelectorBatch(shard.table.ids)
                expected_scores, expected_ids = published.search(vectors[:5], 20, params=probe)
                scores, found = shard.index.search(vectors[:5], 20)
                assert np.array_equal(found, expected_ids) and np.allclose(scores, expected_scores)
            exact_found = single_found = sharded_found = 0
            for row in range(0, 4 * N, 97):
                exact = set(ids[np.argsort(-(vectors @ vectors[row]))[:10]].tolist())
                single = one.filtered_search(*KEY, vectors[row], 10).hits
                merged = sorted((h for s in shards for h in s.search(vectors[row], 10, [], None)),
                                key=lambda h: (-h[1], h[0]))[:10]
                exact_found += 10
                single_found += len(exact & {i for i, _ in single})
                sharded_found += len(exact & {i for i, _ in merged})
            assert sharded_found >= single_found > 0.5 * exact_found
    finally:
        for shard in shards:
            shard.store.close()
