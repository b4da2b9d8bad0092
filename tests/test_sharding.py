"""A trait index sharded across real Ray actors answers what one index answers under exact
search, filters included, and each shard builds the index kind the writer recorded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sst_search.config import IndexConfig
from sst_search.query import Filter
from sst_search.sharding import IndexShard, ShardedIndex
from sst_search.store import Store, vector_column

N, DIM, EMBEDDER, TRAIT = 1_500, 16, "e", "t"


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.choice(1 << 62, size=N, replace=False).astype(np.int64)
    locality = np.where(np.arange(N) % 100 == 0, "rare", "common")
    db = tmp_path_factory.mktemp("shards") / "s.duckdb"
    with Store.open(db, index_config=IndexConfig(exact_threshold=100_000)) as store:
        store.write_columns(
            pa.table({"specimen_id": ids, "path": [f"/i/{i}.png" for i in range(N)], "status": ["indexed"] * N,
                      "group_name": [f"g{i % 3}" for i in range(N)]}),
            metadata=pa.table({"specimen_id": ids, "key": ["locality"] * N, "value": locality}),
            vectors={(EMBEDDER, TRAIT): (ids, vectors)},
        )
    return db, ids, vectors


FILTERS = [[], [Filter(field="group", op="==", value="g1")], [Filter(field="locality", op="==", value="rare")],
           [Filter(field="group", op="!=", value="g0"), Filter(field="locality", op="==", value="common")]]


@pytest.mark.slow  # starts a Ray cluster and three actor processes; the shards themselves are tested without Ray below
def test_shards_merge_to_the_single_index_answer(ray_cluster, store_path):
    db, ids, vectors = store_path
    with ShardedIndex(db, EMBEDDER, TRAIT, shards=3, num_cpus=0.5) as sharded, Store.open(db, read_only=True) as one:
        assert sum(s["vectors"] for s in sharded.shards) == N and all(s["vectors"] < N for s in sharded.shards)
        for row in (0, 7, 99):
            query, skip = vectors[row], int(ids[row])
            np.testing.assert_array_equal(sharded.vector(skip), vector_column.rounded(query))  # float16 in the catalog
            for filters in FILTERS:
                expected = one.filtered_search(EMBEDDER, TRAIT, query, 10, one.admission(filters), skip=skip).hits
                found = sharded.search(query, 10, filters, skip=skip)
                assert [i for i, _ in found] == [i for i, _ in expected]
                np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], rtol=1e-5)
                assert len(found) == 10 and skip not in {i for i, _ in found}


def test_each_shard_builds_the_recorded_index_kind(tmp_path, store_path):
    """Without Ray (same class): a shard of a store recorded with a low exact threshold is IVF."""
    db, ids, vectors = store_path
    ivf_db = tmp_path / "ivf.duckdb"
    with Store.open(ivf_db, index_config=IndexConfig(exact_threshold=300, factory="IVF{nlist},Flat")) as store:
        store.write_columns(pa.table({"specimen_id": ids, "path": [f"/i/{i}" for i in range(N)],
                                      "status": ["indexed"] * N}), vectors={(EMBEDDER, TRAIT): (ids, vectors)})
    shards = [IndexShard(str(ivf_db), EMBEDDER, TRAIT, i, 2) for i in range(2)]
    assert [s.describe()["kind"] for s in shards] == ["ivf", "ivf"]
    assert sorted(np.concatenate([s.table.ids for s in shards]).tolist()) == sorted(ids.tolist())
    with pytest.raises(ValueError, match="shards"):
        ShardedIndex(db, EMBEDDER, TRAIT, shards=0)
