"""Filter postings written with a snapshot (rows per group and IVF list) on a real DuckDB
catalog and real FAISS indexes: a group filter is searched from them (no mask, no list
layout built on the query path), with recall and exactly k under every plan; they stay
correct after an incremental re-index and a removal; verify checks them; a snapshot without
them still searches."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from sst_search.config import POSTING_FIELDS, IndexConfig, PlanConfig
from sst_search.query import Filter, SearchEngine
from sst_search.sharding import IndexShard
from sst_search.store import Store
from sst_search.store.columns import read_off_postings
from sst_search.store.filter_postings import fields_to_post
from sst_search.store.snapshots import publish_snapshot, resolve_snapshot
from sst_search.store.verify import verify_files
from sst_search.store.writer import measurement_table, now
from sst_search.vector_search.at_rest import vectors_dir
from sst_search.vector_search.postings import posting_paths
from sst_search.vector_search.vector_table import AdmittedLists

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
        built = (table._layout, dict(table._admitted), store.columns().masks_kept if posted else None)
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
    assert layout is None and admitted_lists == {} and masks == 0


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


def dated(tmp_path, with_nulls: bool, categorical: int = 0):
    """A published collection with an event date on 2,000 days (more values than postings
    list one by one: ranges with rows to check at their ends), a locality, a year, a genus, a
    wing area measured on most specimens (posted: ``<trait>.<measurement>`` in
    ``index.posting_fields``), a habitat of three values and a wing perimeter (not posted;
    ``categorical`` 3 or more posts the habitat), some specimens not indexed, and
    (``with_nulls``) some without a locality."""
    db = tmp_path / "p.duckdb"
    rng = np.random.default_rng(5)
    ids = rng.choice(1 << 62, size=N, replace=False).astype(np.int64)
    days = [str(np.datetime64("1950-01-01") + d) for d in rng.integers(0, 2_000, N)]
    places = np.array(["Ridge top", "Lower ridge", "Valley", "Cerro Azul"])[rng.integers(0, 4, N)].astype(object)
    if with_nulls:
        places[::50] = None
    indexed = rng.random(N) >= 0.05
    has = [i for i in range(N) if places[i] is not None]
    areas = np.round(rng.gamma(4.0, 10.0, N), 2).tolist()  # a measurement of many values (ranges passed in part)
    habitats = np.array(["forest", "meadow", "swamp"])[rng.integers(0, 3, N)].tolist()  # not posted
    genera = [f"Genus{g}" for g in rng.integers(0, 12, N)]  # a Darwin Core term posted by default
    vectors = clustered(N, 7)
    config = CONFIG.model_copy(update={"posting_max_values": 64, "posting_fields": [*POSTING_FIELDS, "wing.area_mm2"],
                                       "posting_categorical_values": categorical})
    with Store.open(db, index_config=config) as store:
        store.write_columns(
            pa.table({"specimen_id": ids, "path": [f"img/{i}.png" for i in ids], "group_name": group_of(N, 6),
                      "status": np.where(indexed, "indexed", "failed")}),
            metadata=pa.table({"specimen_id": np.concatenate([ids, ids, ids[has], ids, ids]),
                               "key": ["eventDate"] * N + ["year"] * N + ["locality"] * len(has) + ["habitat"] * N
                               + ["genus"] * N,
                               "value": days + [d[:4] for d in days] + places[has].tolist() + habitats + genera}),
            measurements=measurement_table({int(ids[k]): [{"trait_id": 1, "trait_name": "wing", "unit": "mm",
                                                           "area_mm2": areas[k], "perimeter_mm": areas[k] / 3 + k % 7}]
                                            for k in range(N) if k % 9}, now()),
            vectors={KEY: (ids[indexed], vectors[indexed])})
    publish_snapshot(db)
    measured = np.arange(N) % 9 > 0
    perimeters = np.where(measured, np.asarray(areas) / 3 + np.arange(N) % 7, np.nan)
    return db, {"ids": ids[indexed], "vectors": vectors[indexed], "dates": np.array(days)[indexed],
                "areas": np.where(measured, areas, np.nan)[indexed], "perimeters": perimeters[indexed],
                "habitats": np.array(habitats)[indexed],
                "places": np.char.lower(np.where(places == None, "", places).astype(str))[indexed]}  # noqa: E711


CONDITIONS = [Filter(field="eventDate", op=">=", value="1955-01-01"), Filter(field="eventDate", op="<", value="1950-02-03"),
              Filter(field="eventDate", op="==", value="1951-03-04"), Filter(field="eventDate", op="!=", value="1951-03-04"),
              Filter(field="eventDate", op="contains", value="-03-"), Filter(field="year", op=">", value=1952.0),
              Filter(field="year", op="in", value=["1950", "1954"]), Filter(field="locality", op="contains", value="RIDGE"),
              Filter(field="locality", op="!=", value="Valley"), Filter(field="locality", op="not in", value=["Cerro Azul"]),
              Filter(field="group", op="==", value="rare"), Filter(field="group", op="<=", value="g1"),
              Filter(field="wing.area_mm2", op=">", value=40.0), Filter(field="wing.area_mm2", op="<=", value=12.5),
              Filter(field="wing.area_mm2", op="!=", value=30.0), Filter(field="genus", op="in", value=["Genus3", "Genus7"])]


JOINED = [[CONDITIONS[0], CONDITIONS[7]], [CONDITIONS[6], CONDITIONS[11], CONDITIONS[9]],
          [CONDITIONS[0], Filter(field="eventDate", op="<", value="1955-03-01")], [CONDITIONS[12], CONDITIONS[7]]]

#: A posted condition with others on fields without postings (a metadata key, a measurement).
MIXED = [[CONDITIONS[0], Filter(field="habitat", op="==", value="forest")],
         [CONDITIONS[10], Filter(field="habitat", op="!=", value="swamp"),
          Filter(field="wing.perimeter_mm", op=">", value=12.0)],
         [CONDITIONS[12], CONDITIONS[7], Filter(field="wing.perimeter_mm", op="<=", value=20.0)]]


@pytest.mark.parametrize("with_nulls", [False, True])
def test_postings_answer_any_condition_as_its_mask_does(tmp_path, with_nulls):
    """For conditions of every operator on fields of few and of many values (ranges that pass
    whole, in part, in several runs), for conjunctions of them, and for conjunctions with
    conditions on fields without postings (asked of the posted rows alone), the counts per
    list, the admitted rows of some lists, the ids of those lists not admitted and each
    row's pass read off the postings equal what the filter's mask over the rows gives; specimens
    without a value, or not indexed, are in no posting and never pass."""
    db, _ = dated(tmp_path, with_nulls)
    with SearchEngine.open(db) as engine:
        store = engine.store
        index, table = store.index(*KEY), store.vector_table(*KEY)
        layout, generation = table.layout(index), store.generations()[KEY]
        partial_seen = 0
        for filters in [[c] for c in CONDITIONS] + JOINED + MIXED:
            admission = engine.admission(filters)
            assert [f for f, _ in admission.posting] == [f.field for f in filters if f.field != "habitat"
                                                         and f.field != "wing.perimeter_mm"]
            posted = admission.posted([store.index_cache.postings(KEY, generation, field)
                                       for field, _ in admission.posting], table.ids)
            assert 0 < posted.count < len(table), filters
            assert_as_masked(posted, admission.table_mask(table.ids), layout, table.ids, filters)
            partial_seen += len(getattr(posted, "_partial", ()))
        assert partial_seen  # some condition passed a range in part


def assert_as_masked(posted, mask, layout, table_ids, filters) -> None:
    """``posted`` (read off postings) admits what ``mask`` over the table's rows does: the
    counts per list, each row's pass, the admitted rows of some lists, and the ids of those
    lists not admitted."""
    counted = AdmittedLists(layout, mask)
    assert posted.count == np.count_nonzero(mask) and np.array_equal(posted.held, counted.held), filters
    assert np.array_equal(posted.passes_rows(np.arange(len(table_ids))), mask)
    assert np.array_equal(np.sort(posted.rows()), np.flatnonzero(mask))
    for lists in (np.arange(len(posted.sizes)), np.arange(1, len(posted.sizes), 3)):
        assert sorted(posted.rows_in(lists).tolist()) == sorted(counted.rows_in(lists).tolist())
        assert sorted(posted.others_in(lists, table_ids).tolist()) == sorted(counted.others_in(lists, table_ids).tolist())


def test_shards_read_every_condition_off_the_postings_over_their_own_rows(tmp_path):
    """Each shard of a published index (:class:`~sst_search.sharding.IndexShard`) takes the
    snapshot's postings over its own rows when it starts: the shards' merged answers under a
    date range, a group and a mixed filter have exactly k and recall, and no shard builds a
    mask for them; for every condition, conjunction and mixed filter, what a shard reads off
    its postings equals its mask over its rows."""
    db, data = dated(tmp_path, with_nulls=True)
    snapshot = str(resolve_snapshot(db))
    ids, vectors = data["ids"], data["vectors"]
    with Store.open(snapshot, read_only=True) as one:
        rare = np.isin(ids, one.admission([CONDITIONS[10]]).admitted())
    recent = data["dates"] >= "1955-01-01"
    shards = [IndexShard(snapshot, *KEY, i, 3) for i in range(3)]
    try:
        started = [shard.store.columns().masks_kept for shard in shards]  # the scope's, built when it started
        for filters, passing in (([CONDITIONS[0]], recent), ([CONDITIONS[10]], rare),
                                 (MIXED[0], recent & (data["habitats"] == "forest"))):
            recalls = []
            for row in range(0, len(ids), 41):
                merged = sorted((h for s in shards for h in s.search(vectors[row], 10, filters, int(ids[row]))),
                                key=lambda h: (-h[1], h[0]))[:10]
                found = [i for i, _ in merged]
                assert len(found) == 10 == len(set(found)) and set(found) <= set(ids[passing].tolist())
                scores = np.where(passing, vectors @ vectors[row], -np.inf)
                scores[row] = -np.inf
                recalls.append(len(set(found) & set(ids[np.argsort(-scores)[:10]].tolist())) / 10)
            assert np.mean(recalls) >= 0.95, filters
        assert [shard.store.columns().masks_kept for shard in shards] == started
        for shard in shards:
            assert set(shard.postings) == {"group", "locality", "eventDate", "year", "genus", "wing.area_mm2"}
            layout = shard.table.layout(shard.index)
            for filters in [[c] for c in CONDITIONS] + JOINED + MIXED:
                admission = shard.store.admission(filters)
                posted = read_off_postings(admission, shard.postings.get, shard.table.ids)
                assert_as_masked(posted, admission.table_mask(shard.table.ids), layout, shard.table.ids, filters)
    finally:
        for shard in shards:
            shard.store.close()


def test_a_date_range_a_locality_and_a_measurement_are_searched_from_the_postings(tmp_path):
    """A date range and a locality's word, the bench's two filters unrelated to the vectors,
    a trait's measured area, two at once, and a date range with a field that has no postings
    are answered from the postings (no mask, no per-list histogram of one), with exactly k
    and recall."""
    db, data = dated(tmp_path, False)
    recent, ridge = data["dates"] >= "1955-01-01", np.char.find(data["places"], "ridge") >= 0
    large = np.nan_to_num(data["areas"], nan=-1.0) > 40.0
    for filters, passing in (([CONDITIONS[0]], recent), ([CONDITIONS[7]], ridge), (JOINED[0], recent & ridge),
                             ([CONDITIONS[12]], large), (JOINED[3], large & ridge),
                             (MIXED[0], recent & (data["habitats"] == "forest"))):
        (layout, admitted_lists, masks), recall = search_all(db, data, filters, passing)
        assert recall >= 0.95 and admitted_lists == {} and masks == 0, (filters, recall)


def test_a_filter_without_postings_builds_its_mask_only_when_a_search_needs_every_vector_it_admits(tmp_path):
    """Conditions on fields without postings alone (a metadata key, a measurement) are asked
    specimen by specimen: a broad filter is searched by post-filtering with no mask built; a
    selective one builds its mask on its first search (the admitted set is needed) and its
    later searches read it. Both give exactly k with recall, and each id's pass, asked
    before the mask exists, is the mask's."""
    db, data = dated(tmp_path, False)
    ids, vectors = data["ids"], data["vectors"]
    broad = [Filter(field="habitat", op="!=", value="swamp"), Filter(field="wing.perimeter_mm", op=">", value=8.0)]
    selective = [Filter(field="wing.perimeter_mm", op=">", value=30.0)]
    perimeters = np.nan_to_num(data["perimeters"], nan=-1.0)
    with SearchEngine.open(db) as engine:
        store = engine.store
        for filters, passing, plan, masked in ((broad, (data["habitats"] != "swamp") & (perimeters > 8.0), "postfilter",
                                                 False), (selective, perimeters > 30.0, "exact", True)):
            assert 0.01 < passing.mean() < 0.05 or plan == "postfilter"
            masks = store.columns().masks_kept
            asked = np.concatenate([ids[::7], [12345, -1]])  # and two ids of no specimen
            before = engine.admission(filters).passes(asked)
            recalls, shares = [], []
            for row in range(0, len(ids), 37):
                outcome = store.filtered_search(*KEY, vectors[row], 10, engine.admission(filters), skip=int(ids[row]))
                assert outcome.plan == plan and not outcome.posted, outcome
                shares.append(outcome.estimated_fraction)
                found = [sid for sid, _ in outcome.hits]
                assert len(found) == 10 == len(set(found)) and set(found) <= set(ids[passing].tolist())
                scores = np.where(passing, vectors @ vectors[row], -np.inf)
                scores[row] = -np.inf
                recalls.append(len(set(found) & set(ids[np.argsort(-scores)[:10]].tolist())) / 10)
            assert np.mean(recalls) >= 0.95 and (store.columns().masks_kept > masks) == masked, filters
            # a mask once built is read by the filter's later searches: their share is exact, not sampled
            assert (set(shares[1:]) == {passing.mean()}) == masked, shares
            expected = np.concatenate([passing[::7], [False, False]])
            assert np.array_equal(before, expected) and np.array_equal(engine.admission(filters).passes(asked), expected)


def test_a_metadata_field_of_few_values_is_posted_though_not_listed(tmp_path):
    """A metadata key of at most ``index.posting_categorical_values`` distinct values (a
    habitat) is posted at publish though ``index.posting_fields`` does not name it; a reader
    learns it from the postings written, and its conditions, alone or with others, are read
    off them (no mask) as their masks would admit, with exactly k and recall. A key of more
    values, and a measurement, are not posted; verify passes the snapshot."""
    db, data = dated(tmp_path, False, categorical=3)
    with Store.open(db, read_only=True) as store:
        config = store.recorded_index_config()
        assert fields_to_post(store.con, config)[len(config.posting_fields):] == ["habitat"]
        fewer = config.model_copy(update={"posting_categorical_values": 2})
        assert fields_to_post(store.con, fewer) == config.posting_fields
    habitat = [Filter(field="habitat", op="==", value="swamp"), Filter(field="habitat", op="not in", value=["forest"])]
    with SearchEngine.open(db) as engine:
        store = engine.store
        assert store.posting_fields() == [*POSTING_FIELDS, "wing.area_mm2", "habitat"]
        index, table = store.index(*KEY), store.vector_table(*KEY)
        layout, generation = table.layout(index), store.generations()[KEY]
        for filters in ([habitat[0]], [habitat[1]], [CONDITIONS[0], habitat[0]], MIXED[1]):
            admission = engine.admission(filters)
            assert "habitat" in [f for f, _ in admission.posting]
            posted = read_off_postings(admission, lambda field: store.index_cache.postings(KEY, generation, field),
                                       table.ids)
            assert_as_masked(posted, admission.table_mask(table.ids), layout, table.ids, filters)
    swamp = data["habitats"] == "swamp"
    (_, admitted_lists, masks), recall = search_all(db, data, [habitat[0]], swamp)
    assert recall >= 0.95 and admitted_lists == {} and masks == 0
    assert verify_files(resolve_snapshot(db)) == []


def test_postings_of_an_older_format_are_not_read_and_verify_passes_them(collection):
    """A snapshot published before this format (manifest without it) still verifies and
    searches, from masks, until it is published again."""
    db, data = collection
    snapshot = resolve_snapshot(db)
    manifest = posting_paths(vectors_dir(snapshot), KEY, "group")["manifest"]
    written = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({k: v for k, v in written.items() if k != "format"} | {"values": ["g0", "g1"]}))
    assert verify_files(snapshot) == []
    _, recall = search_all(db, data, [Filter(field="group", op="==", value="rare")], data["groups"] == "rare",
                           "selector", 10, posted=False)
    assert recall >= 0.95
