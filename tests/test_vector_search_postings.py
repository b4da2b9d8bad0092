"""Filter postings written with a snapshot (rows per group and IVF list) on a real DuckDB
catalog and real FAISS indexes: a group filter is searched from them (no mask, no list
layout built on the query path), with recall and exactly k under every plan; they stay
correct after an incremental re-index and a removal; verify checks them; a snapshot without
them still searches."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sst_search.config import IndexConfig, PlanConfig
from sst_search.query import Filter, SearchEngine
from sst_search.store import Store
from sst_search.store.snapshots import publish_snapshot, resolve_snapshot
from sst_search.store.verify import verify_files
from sst_search.vector_search.at_rest import vectors_dir
from sst_search.vector_search.postings import posting_paths

DIM, KEY, N = 32, ("e", "t"), 3_000
CONFIG = IndexConfig(exact_threshold=500, nlist_factor=1.0, train_per_list=39)


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    x = centres[rng.integers(40, size=n)] / np.sqrt(DIM) + 0.05 * rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def group_of(n: int, seed: int) -> np.ndarray:
    """Four groups of about 24% and one of 4% (the selector's and the exact scan's share)."""
    return np.where(np.random.default_rng(seed).random(n) < 0.04, "rare", np.array([f"g{i % 4}" for i in range(n)]))


def add(store: Store, ids: np.ndarray, vectors: np.ndarray, groups: np.ndarray) -> None:
    n = len(ids)
    store.write_columns(pa.table({"specimen_id": ids, "path": [f"img/{i}.png" for i in ids], "group_name": groups,
                                  "status": ["indexed"] * n}), vectors={KEY: (ids, vectors)})


def published(db):
    ids = np.random.default_rng(0).choice(1 << 62, size=N, replace=False).astype(np.int64)
    data = {"ids": ids, "vectors": clustered(N, 1), "groups": group_of(N, 2)}
    with Store.open(db, index_config=CONFIG) as store:
        add(store, data["ids"], data["vectors"], data["groups"])
    publish_snapshot(db)
    return db, data


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A published collection the tests only read."""
    return published(tmp_path_factory.mktemp("postings") / "p.duckdb")


@pytest.fixture()
def collection(tmp_path):
    """A published collection of the test's own, to change."""
    return published(tmp_path / "p.duckdb")


def search_all(db, data, filters, passing, plan=None, exact_max=20_000, posted=True, reader=SearchEngine.open):
    """Every 37th vector as a query under ``filters``: exactly k, recall against the exact top 10;
    returns what the reader built on the way and the mean recall."""
    ids, vectors = data["ids"], data["vectors"]
    recalls = []
    with reader(db) as engine:
        store = engine.store
        store.index_cache.config = store.index_config.model_copy(update={"plan": PlanConfig(exact_max=exact_max)})
        admission = engine.admission(filters)
        for row in range(0, len(ids), 37):
            outcome = store.filtered_search(*KEY, vectors[row], 10, admission, skip=int(ids[row]))
            assert outcome.posted == posted and (plan is None or outcome.plan == plan), outcome
            found = [sid for sid, _ in outcome.hits]
            assert len(found) == 10 == len(set(found)) and set(found) <= set(ids[passing].tolist())
            scores = np.where(passing, vectors @ vectors[row], -np.inf)
            scores[row] = -np.inf
            recalls.append(len(set(found) & set(ids[np.argsort(-scores)[:10]].tolist())) / 10)
        table = store.vector_table(*KEY)
        built = (table._layout, dict(table._admitted), dict(store.columns()._masks) if posted else None)
    return built, float(np.mean(recalls))


@pytest.mark.parametrize(("value", "plan", "exact_max"), [
    ("g1", "postfilter", 20_000), ("rare", "selector", 10), ("rare", "exact", 20_000), (["g1", "rare"], None, 20_000)])
def test_a_group_filter_is_searched_from_the_postings_without_building_a_mask(shared, value, plan, exact_max):
    db, data = shared
    snapshot = resolve_snapshot(db)
    assert posting_paths(vectors_dir(snapshot), KEY, "group")["rows"].is_file()
    op = "in" if isinstance(value, list) else "=="
    passing = np.isin(data["groups"], value)
    (layout, admitted_lists, masks), recall = search_all(db, data, [Filter(field="group", op=op, value=value)],
                                                         passing, plan, exact_max)
    assert recall >= 0.95
    # Structural evidence that nothing the size of the collection was built per filter: no
    # filter mask, no per-list histogram from a mask, no list layout of the vector table.
    assert layout is None and admitted_lists == {} and masks == {}


def test_the_postings_stay_correct_after_an_incremental_reindex_and_a_removal(collection):
    db, data = collection
    ids, vectors, groups = data["ids"], data["vectors"], data["groups"]
    gone = ids[groups == "rare"][:40].tolist() + ids[groups == "g1"][:100].tolist()
    new_ids = np.random.default_rng(5).choice(1 << 62, size=300, replace=False).astype(np.int64)
    new_vectors, new_groups = clustered(300, 6), np.where(np.arange(300) % 10 == 0, "rare", "g1")
    with Store.open(db) as store:
        nlist = store.index(*KEY).nlist if hasattr(store.index(*KEY), "nlist") else None
        store.remove_specimens(gone)
        add(store, new_ids, new_vectors, new_groups)  # added to the trained index's lists, not retrained
        assert getattr(store.index(*KEY), "nlist", None) == nlist
    snapshot = publish_snapshot(db)
    assert verify_files(snapshot) == []
    keep = ~np.isin(ids, gone)
    now = {"ids": np.concatenate([ids[keep], new_ids]), "vectors": np.concatenate([vectors[keep], new_vectors]),
           "groups": np.concatenate([groups[keep], new_groups])}
    def live(path):  # the live store: no postings, float32 vectors, the filter's mask
        return SearchEngine(Store.open(path, read_only=True))

    for value, plan, exact_max in (("rare", "selector", 10), ("g1", "postfilter", 20_000)):
        filters, passing = [Filter(field="group", op="==", value=value)], now["groups"] == value
        _, recall = search_all(db, now, filters, passing, plan, exact_max)
        _, masked_recall = search_all(db, now, filters, passing, plan, exact_max, posted=False, reader=live)
        assert recall >= max(0.9, masked_recall - 0.02), (recall, masked_recall)


def test_verify_checks_the_postings_and_a_snapshot_without_them_still_searches(collection):
    db, data = collection
    snapshot = resolve_snapshot(db)
    paths = posting_paths(vectors_dir(snapshot), KEY, "group")
    rows = np.load(paths["rows"])
    with open(paths["rows"], "r+b") as fh:  # two rows swapped: same size, wrong lists
        fh.seek(-8, 2)
        fh.write(rows[-1:].tobytes() + rows[-2:-1].tobytes())
    assert any("postings" in p.what or "checksum" in p.what for p in verify_files(snapshot))
    for path in paths.values():  # as a publish from before postings left it
        path.unlink()
    assert verify_files(snapshot) == []
    _, recall = search_all(db, data, [Filter(field="group", op="==", value="rare")], data["groups"] == "rare",
                           "selector", 10, posted=False)
    assert recall >= 0.95


@pytest.mark.parametrize("with_nulls", [False, True])
def test_the_ids_a_posted_filter_does_not_admit_are_those_of_the_lists_less_the_admitted(tmp_path, with_nulls):
    """The selector's complement (the ids of the probed lists a filter does not admit), read
    off the other values' postings, is the lists' ids less the admitted ones; specimens
    without a value are in no posting, and are still among those not admitted."""
    db = tmp_path / "p.duckdb"
    ids = np.random.default_rng(5).choice(1 << 62, size=N, replace=False).astype(np.int64)
    groups = group_of(N, 6).astype(object)
    if with_nulls:
        groups[::50] = None
    with Store.open(db, index_config=CONFIG) as store:
        add(store, ids, clustered(N, 7), groups)
    publish_snapshot(db)
    with SearchEngine.open(db) as engine:
        store = engine.store
        index, table = store.index(*KEY), store.vector_table(*KEY)
        postings = store.index_cache.postings(KEY, store.generations()[KEY], "group")
        nlist = len(postings.sizes)
        for values in (["g1"], ["g1", "rare"], ["rare"]):
            posted = postings.lists_of(values)
            for lists in (np.arange(nlist), np.arange(0, nlist, 3), np.array([nlist - 1])):
                others = np.sort(posted.others_in(lists, table.ids))
                listed = postings.list_ids(lists)
                admitted = table.ids[posted.rows_in(lists)]
                assert others.tolist() == np.sort(np.setdiff1d(listed, admitted)).tolist()
                assert len(others) + len(admitted) == len(listed)
        assert index.ntotal == N
