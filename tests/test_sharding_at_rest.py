"""Shards of a published snapshot take their vectors from its float16 vectors at rest (no
scan of the catalog's vectors table) and still merge to the single snapshot's answer."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sst_search.config import IndexConfig
from sst_search.query import Filter
from sst_search.sharding import IndexShard
from sst_search.store import Store
from sst_search.store.snapshots import publish_snapshot

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
            assert shard.table.matrix.dtype == np.float16 and not isinstance(shard.table.matrix, np.memmap)
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
