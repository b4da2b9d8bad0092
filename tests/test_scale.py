"""Search at scale on a real DuckDB catalog and real FAISS indexes: bulk writes, filtered
search that returns exactly k at any selectivity, the plan chosen per selectivity, and
searches in parallel threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import pyarrow as pa
import pytest

from sst_search.config import IndexConfig, PlanConfig
from sst_search.embed.color import ColorPatternEmbedder
from sst_search.query import Filter, SearchEngine
from sst_search.store import SPECIMEN_TRAIT, Store
from sst_search.vector_search.indexes import bytes_per_vector
from ui.state import engine_session, load_engine
from tests.fixtures import AdmittedIds

N, DIM, EMBEDDER, TRAIT = 50_000, 8, "e", "t"
RARE = 5  # 1 in 10,000 specimens


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """50k specimens written in one bulk call; IVF beyond 1,000 vectors, so filters meet an approximate index."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.choice(1 << 62, size=N, replace=False).astype(np.int64)
    locality = np.array(["common"] * N, dtype=object)
    locality[rng.choice(N, size=RARE, replace=False)] = "rare"
    locality[np.flatnonzero(locality == "common")[: N // 100]] = "one-percent"
    groups = np.array([f"g{i % 2}" for i in range(N)])
    db = tmp_path_factory.mktemp("scale") / "scale.duckdb"
    with Store.open(db, index_config=IndexConfig(exact_threshold=1_000, approximate="ivf")) as store:
        store.write_columns(
            pa.table({"specimen_id": ids, "path": [f"img/{i}.png" for i in range(N)], "group_name": groups,
                      "status": ["indexed"] * N}),
            metadata=pa.table({"specimen_id": ids, "key": ["locality"] * N, "value": locality.astype(str)}),
            vectors={(EMBEDDER, TRAIT): (ids, vectors)},
        )
        assert store.check_consistency() == []
    return db, ids, vectors, locality, groups


def _exact(vectors, ids, query_row, passing, k):
    scores = np.where(passing, vectors @ vectors[query_row], -np.inf)
    scores[query_row] = -np.inf
    return [int(ids[j]) for j in np.argsort(-scores)[:k] if np.isfinite(scores[j])]


@pytest.mark.parametrize(
    ("filters", "plan", "exact_max"),
    [
        ([Filter(field="group", op="==", value="g0")], "postfilter", 20_000),
        ([Filter(field="locality", op="==", value="one-percent")], "exact", 20_000),
        ([Filter(field="locality", op="==", value="one-percent")], "selector", 100),
        ([Filter(field="locality", op="==", value="rare")], "exact", 20_000),
    ],
)
def test_plan_follows_selectivity_and_returns_exactly_k(catalog, filters, plan, exact_max):
    db, ids, vectors, locality, groups = catalog
    passing = {"group": groups == "g0", "locality": locality == filters[0].value}[filters[0].field]
    k = min(10, int(passing.sum()))
    with SearchEngine.open(db) as engine:
        engine.store.index_cache.config = engine.store.index_config.model_copy(update={"plan": PlanConfig(exact_max=exact_max)})
        for query_row in (0, 1, 2):
            outcome = engine.store.filtered_search(
                EMBEDDER, TRAIT, vectors[query_row], k, engine.admission(filters), skip=int(ids[query_row])
            )
            assert outcome.plan == plan
            found = [sid for sid, _ in outcome.hits]
            assert len(found) == k and set(found) <= set(ids[passing].tolist())
            expected = _exact(vectors, ids, query_row, passing, k)
            if plan == "exact":
                assert found == expected
            else:  # the post-filter and the selector probe lists, as an unfiltered search does: as good as the index
                assert len(set(found) & set(expected)) >= 0.8 * k


def test_a_snapshot_whose_index_holds_every_specimen_plans_from_the_exact_share(catalog):
    """Every specimen has the trait's vector: the filter's mask is read as the index's rows
    (the exact share, no sample, no id lookups)."""
    db, ids, vectors, locality, _ = catalog
    filters = [Filter(field="locality", op="==", value="one-percent")]
    with SearchEngine.open(db) as engine:
        admission = engine.admission(filters)
        assert admission.table_mask(engine.store.population(EMBEDDER, TRAIT)) is not None
        outcome = engine.store.filtered_search(EMBEDDER, TRAIT, vectors[0], 10, admission)
    assert outcome.estimated_fraction == np.mean(locality == "one-percent")


def test_one_in_ten_thousand_returns_all_of_them_through_the_engine(catalog):
    db, ids, vectors, locality, _ = catalog
    rare = ids[locality == "rare"]
    query = int(ids[np.flatnonzero(locality != "rare")[0]])
    with SearchEngine.open(db) as engine:
        results = engine.search(TRAIT, k=RARE, specimen_id=query, embedder=EMBEDDER,
                                filters=[Filter(field="locality", op="==", value="rare")])
    assert sorted(r.specimen_id for r in results) == sorted(rare.tolist())


class _SlowColorEmbedder(ColorPatternEmbedder):
    """The real colour-pattern embedder, held at the start of ``embed_image`` until released."""

    def __init__(self) -> None:
        super().__init__(l_bins=2, ab_bins=2, grid=1)  # dim 12
        self.entered, self.release = threading.Event(), threading.Event()

    def embed_image(self, image):
        self.entered.set()
        assert self.release.wait(30)
        return super().embed_image(image)


def test_a_slow_embed_does_not_hold_up_another_threads_search(tmp_path):
    embedder = _SlowColorEmbedder()
    rng = np.random.default_rng(3)
    n = 200
    vectors = rng.standard_normal((n, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    with Store.open(tmp_path / "c.duckdb") as store:
        store.write_columns(
            pa.table({"specimen_id": ids, "path": [f"{i}.png" for i in ids], "status": ["indexed"] * n,
                      "group_name": ["g"] * n}),
            vectors={(embedder.name, SPECIMEN_TRAIT): (ids, vectors)},
        )
    image = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    load_engine.clear()
    with engine_session(str(tmp_path / "c.duckdb")) as engine:  # the app's way to the shared engine
        engine.encoder._embedder = embedder
    try:
        with ThreadPoolExecutor(2) as pool:
            def search(**query):
                with engine_session(str(tmp_path / "c.duckdb")) as eng:
                    return eng.search(SPECIMEN_TRAIT, 5, **query)

            upload = pool.submit(search, image=image)
            assert embedder.entered.wait(30)
            by_specimen = pool.submit(search, specimen_id=1, filters=[Filter(field="group", op="==", value="g")])
            assert len(by_specimen.result(timeout=30)) == 5  # finished while the upload is still embedding
            assert not upload.done()
            embedder.release.set()
            assert len(upload.result(timeout=30)) == 5
        with ThreadPoolExecutor(4) as pool:  # many threads on the one engine: each gets its own cursor
            expected = engine.search(SPECIMEN_TRAIT, 5, specimen_id=1)
            results = list(pool.map(lambda _: engine.search(SPECIMEN_TRAIT, 5, specimen_id=1), range(16)))
            assert all([r.specimen_id for r in res] == [r.specimen_id for r in expected] for res in results)
    finally:
        embedder.release.set()
        load_engine.clear()
        engine.close()


def test_the_compressed_default_keeps_recall_and_readers_use_the_writers_kind(tmp_path):
    """The default (SQ8 codes, exact re-ranking of 4k candidates) at dim 512 against exact search."""
    rng = np.random.default_rng(5)
    n, dim = 3_000, 512
    centres = rng.standard_normal((60, dim)).astype(np.float32)
    vectors = centres[rng.integers(60, size=n)] + 0.06 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(10, 10 + n, dtype=np.int64)
    config = IndexConfig(exact_threshold=1_000)
    with Store.open(tmp_path / "c.duckdb", index_config=config) as store:
        store.write_columns(pa.table({"specimen_id": ids, "path": [f"{i}.png" for i in ids], "status": ["indexed"] * n}),
                            vectors={(EMBEDDER, TRAIT): (ids, vectors)})
    with Store.open(tmp_path / "c.duckdb", read_only=True) as reader:
        assert reader.index_config == config  # recorded by the writer (threshold 1,000), not the default 50,000
        index = reader.index(EMBEDDER, TRAIT)
        assert isinstance(faiss.downcast_index(index), faiss.IndexIVFScalarQuantizer)
        assert bytes_per_vector(index) <= 600
        recalls = []
        for row in range(0, n, 100):
            truth = set(np.argsort(-(vectors @ vectors[row]))[:10] + 10)
            hits = reader.filtered_search(EMBEDDER, TRAIT, vectors[row], 10).hits
            recalls.append(len(truth & {sid for sid, _ in hits}) / 10)
            assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert np.mean(recalls) >= 0.95


def test_an_opq_pq_factory_builds_is_read_back_and_keeps_recall_with_refine(tmp_path):
    """``OPQ8,IVF{nlist},PQ8`` at dim 32: 8-byte codes re-ranked from the stored floats."""
    rng = np.random.default_rng(6)
    n, dim = 2_000, 32
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    vectors = centres[rng.integers(40, size=n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    config = IndexConfig(exact_threshold=500, factory="OPQ8,IVF{nlist},PQ8", refine=8, train_niter=4)
    with Store.open(tmp_path / "opq.duckdb", index_config=config) as store:
        store.write_columns(pa.table({"specimen_id": ids, "path": [f"{i}.png" for i in ids], "status": ["indexed"] * n}),
                            vectors={(EMBEDDER, TRAIT): (ids, vectors)})
    with Store.open(tmp_path / "opq.duckdb", read_only=True) as reader:
        assert reader.status()["indexes"][0]["kind"] == "ivf"  # the manifest records what was built
        assert reader.index_config.tiers == config.tiers
        index = faiss.downcast_index(reader.index(EMBEDDER, TRAIT))
        assert isinstance(index, faiss.IndexPreTransform)
        assert isinstance(faiss.downcast_VectorTransform(index.chain.at(0)), faiss.LinearTransform)  # OPQ, as saved
        assert isinstance(faiss.downcast_index(index.index), faiss.IndexIVFPQ)
        recalls = []
        for row in range(0, n, 50):
            truth = set((np.argsort(-(vectors @ vectors[row]))[:10] + 1).tolist())
            hits = reader.filtered_search(EMBEDDER, TRAIT, vectors[row], 10).hits
            recalls.append(len(truth & {sid for sid, _ in hits}) / 10)
    assert np.mean(recalls) >= 0.9  # within 0.1 of exact search


def test_a_filter_that_avoids_the_query_neighbourhood_is_not_answered_from_the_probed_lists():
    """Two IVF lists (centres a and b), one probed. The query sits in a's list near the
    boundary; the filter admits b's whole list and a tenth of a's. Enough of a's admitted
    items survive a post-filter, but the admitted set's nearest lie across the boundary in
    the list not probed. The candidates pass far less often than the collection does, so
    the search falls through to the admitted set and finds them."""
    from sst_search.vector_search.planner import search_table
    from sst_search.vector_search.vector_table import VectorTable

    rng = np.random.default_rng(5)
    dim, n = 3, 8000
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64)
    centres = np.eye(dim, dtype=np.float32)[:2]
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(centres)
    index = faiss.IndexIVFFlat(quantizer, dim, 2, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    index.add_with_ids(vectors, ids)
    index.nprobe = 1
    in_b = vectors @ centres[1] > vectors @ centres[0]
    admitted = np.sort(np.concatenate([ids[in_b], ids[~in_b][::10]]))
    query = np.array([0.55, 0.45, 0.0], np.float32)
    query /= np.linalg.norm(query)
    table = VectorTable(ids, vectors)
    config = IndexConfig(plan=PlanConfig(overfetch=30, exact_max=n))
    outcome = search_table(index, table, config, query, 10, AdmittedIds(admitted))
    expected = [int(i) for i in admitted[np.argsort(-(vectors[admitted] @ query))[:10]]]
    assert outcome.plan == "postfilter" and outcome.fallbacks and "candidates passed" in outcome.fallbacks[0]
    assert [sid for sid, _ in outcome.hits] == expected
    assert in_b[expected].sum() >= 5  # the answer lies mostly in the list an unfiltered search does not probe


def _clustered_vectors(seed: int, n: int, dim: int, clusters: int, noise: float):
    """``(unit vectors, cluster of each, 63-bit ids)`` around random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    labels = rng.integers(clusters, size=n)
    vectors = centres[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, labels, rng.choice(1 << 62, size=n, replace=False).astype(np.int64)


def test_the_selector_probes_the_lists_holding_admitted_vectors_through_an_opq_rotation():
    """An OPQ + IVF-PQ index, and a filter admitting 2 of 80 clusters, none of them the
    query's. The selector plan probes the lists that hold admitted vectors, nearest first:
    those an unfiltered search probes, where they hold any, then on until it has scored a
    set share of what an unfiltered search scores. Where the nearest lists hold no admitted
    vector, that is fewer vectors than pass; either way it finds the admitted set's nearest."""
    from sst_search.vector_search.indexes import build_index, ivf_of
    from sst_search.vector_search.planner import admitted_scan, search_table
    from sst_search.vector_search.vector_table import AdmittedLists, VectorTable

    n, dim = 20_000, 32
    vectors, labels, ids = _clustered_vectors(8, n, dim, clusters=80, noise=0.4)
    config = IndexConfig(exact_threshold=1_000, factory="OPQ8,IVF{nlist},PQ8", refine=8, train_niter=4,
                         plan=PlanConfig(exact_max=100, selector_scan=0.1))
    index = build_index(vectors, ids, dim, config)
    ivf, table = ivf_of(index), VectorTable(ids, vectors)
    passing = np.isin(labels, [5, 6])
    admitted = AdmittedLists(table.layout(index), np.isin(table.ids, ids[passing]))
    budget = admitted_scan(admitted, ivf, config.plan)
    recalls, far = [], 0
    for row in np.flatnonzero(~passing)[:20]:
        rotated = faiss.downcast_VectorTransform(index.chain.at(0)).apply(vectors[row : row + 1])
        held_near = int(admitted.held[ivf.quantizer.search(rotated, ivf.nprobe)[1][0]].sum())
        faiss.cvar.indexIVF_stats.reset()
        outcome = search_table(index, table, config, vectors[row], 10, AdmittedIds(ids[passing]), skip=int(ids[row]))
        assert outcome.plan == "selector" and len(outcome.hits) == 10
        assert set(np.isin([sid for sid, _ in outcome.hits], ids[passing])) == {True}
        # scored: the admitted vectors of the lists an unfiltered search probes, or about a tenth of
        # what an unfiltered search scores (selector_scan) when those hold none, in fewer lists than
        # an unfiltered search probes (a probe widened by the filter's share would visit all)
        stats = faiss.cvar.indexIVF_stats
        assert stats.ndis <= max(held_near, 2 * budget) and stats.nlist < ivf.nprobe
        if held_near == 0:
            far += 1
            assert stats.ndis <= 2 * budget < passing.sum()
        truth = set(ids[passing][np.argsort(-(vectors[passing] @ vectors[row]))[:10]].tolist())
        recalls.append(len(truth & {sid for sid, _ in outcome.hits}) / 10)
    assert far >= 5
    assert ivf_of(index).nprobe < ivf_of(index).nlist and np.mean(recalls) >= 0.9


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """20k vectors in 40 tight clusters, a group per 5 clusters (12.5% each, a post-filter's
    share), indexed IVF + SQ8 through the product's write path."""
    n = 20_000
    vectors, labels, ids = _clustered_vectors(11, n, 16, clusters=40, noise=0.15)
    groups = np.array([f"g{c % 8}" for c in labels])
    db = tmp_path_factory.mktemp("clustered") / "c.duckdb"
    config = IndexConfig(exact_threshold=1_000, plan=PlanConfig(exact_max=100))
    with Store.open(db, index_config=config) as store:
        store.write_columns(pa.table({"specimen_id": ids, "path": [f"{i}.png" for i in range(n)], "group_name": groups,
                                      "status": ["indexed"] * n}), vectors={(EMBEDDER, TRAIT): (ids, vectors)})
    return db, ids, vectors, groups


def test_a_snapshot_counts_admitted_vectors_per_list_and_never_tries_a_postfilter_that_would_fall_through(clustered):
    """A group that holds the query's neighbours is post-filtered. Another group of the same
    share (12.5%, where a post-filter is the plan by share alone) holds none of the lists
    nearest the query: the per-list counts send it straight to the selector, with no
    post-filter tried and thrown away, and it still returns the other group's nearest."""
    db, ids, vectors, groups = clustered
    with SearchEngine.open(db) as engine:
        for row in range(12):
            own, other = groups[row], f"g{(int(groups[row][1:]) + 4) % 8}"
            for group, plan in ((own, "postfilter"), (other, "selector")):
                passing = groups == group
                outcome = engine.store.filtered_search(
                    EMBEDDER, TRAIT, vectors[row], 10, engine.admission([Filter(field="group", op="==", value=group)]),
                    skip=int(ids[row]))
                assert (outcome.plan, outcome.fallbacks) == (plan, [])
                found = [sid for sid, _ in outcome.hits]
                assert len(found) == 10 and set(found) <= set(ids[passing].tolist())
                assert len(set(found) & set(_exact(vectors, ids, row, passing, 10))) >= 9


def test_the_selector_tests_membership_against_the_smaller_side_of_the_probed_lists():
    """Lists all admitted need no selector; lists mostly admitted test against the few that
    are not; lists mostly not admitted against the few that are: the same vectors pass."""
    from sst_search.vector_search.indexes import build_index, ivf_of
    from sst_search.vector_search.planner import _list_selector
    from sst_search.vector_search.vector_table import AdmittedLists, VectorTable

    rng = np.random.default_rng(4)
    n, dim = 4_000, 8
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.choice(1 << 62, size=n, replace=False).astype(np.int64)
    index = build_index(vectors, ids, dim, IndexConfig(exact_threshold=1_000))
    table = VectorTable(ids, vectors)
    layout = table.layout(index)
    lists = np.flatnonzero(layout.sizes)[:6]
    rows = layout.rows_in(lists)
    assert len(rows) == layout.sizes[lists].sum() and set(layout.row_lists[rows]) == set(lists.tolist())
    for share, kind in ((1.0, None), (0.9, "IDSelectorNot"), (0.1, "IDSelectorBatch")):
        mask = np.zeros(n, bool)
        mask[rows[: int(share * len(rows))]] = True
        selector = _list_selector(AdmittedLists(layout, mask), table.ids, lists)
        assert (type(selector).__name__ if selector is not None else None) == kind
        if selector is not None:
            assert [selector.is_member(int(i)) for i in table.ids[rows]] == mask[rows].tolist()
        assert AdmittedLists(layout, mask).held[lists].sum() == np.count_nonzero(mask)
    assert ivf_of(index).nlist > len(lists)


@pytest.mark.parametrize(("follows_the_vectors", "scattered_scan"), [(True, 4.0), (False, 4.0), (False, 0.0)])
def test_a_filter_that_follows_the_vectors_is_searched_by_codes_and_a_scattered_one_deeper_or_scanned(
        follows_the_vectors, scattered_scan):
    """Between exact_min and exact_max admitted vectors, their per-list counts decide: two of
    80 clusters fill the lists that hold them, and the selector finds their nearest in the
    index's codes; the same number scattered at random are a sliver of every list, and the
    selector goes deeper for them (``scattered_scan`` times what an unfiltered search of them
    would score, against ``selector_scan``), or they are scanned exactly (``scattered_scan`` 0)."""
    from sst_search.vector_search.indexes import build_index, ivf_of
    from sst_search.vector_search.planner import admitted_scan, search_table
    from sst_search.vector_search.vector_table import VectorTable

    n, dim = 20_000, 32
    vectors, labels, ids = _clustered_vectors(3, n, dim, clusters=80, noise=0.3)
    config = IndexConfig(exact_threshold=1_000, factory="IVF{nlist},SQ8", refine=4, train_niter=4,
                         plan=PlanConfig(exact_min=100, scattered_scan=scattered_scan))
    index, table = build_index(vectors, ids, dim, config), VectorTable(ids, vectors)
    clusters = np.isin(labels, [5, 6])  # 2.5%: below the post-filter's share
    passing = clusters if follows_the_vectors else np.random.default_rng(4).permutation(clusters)
    counted = table.admitted_lists(index, np.isin(table.ids, ids[passing]))
    recalls = []
    for row in np.flatnonzero(passing)[:10]:
        outcome = search_table(index, table, config, vectors[row], 10, AdmittedIds(ids[passing]), skip=int(ids[row]),
                               posted=counted)
        assert outcome.plan == ("exact" if scattered_scan == 0 else "selector")
        found = [sid for sid, _ in outcome.hits]
        assert len(found) == 10 and set(np.isin(found, ids[passing])) == {True}
        expected = _exact(vectors, ids, row, passing, 10)
        recalls.append(len(set(found) & set(expected)) / 10)
    assert np.mean(recalls) >= (1.0 if scattered_scan == 0 else 0.95)
    deeper = admitted_scan(counted, ivf_of(index), config.plan) / admitted_scan(
        counted, ivf_of(index), config.plan.model_copy(update={"scattered_scan": 0.0}))
    assert deeper == pytest.approx(1.0 if follows_the_vectors or scattered_scan == 0
                                   else scattered_scan / config.plan.selector_scan, rel=0.05)
