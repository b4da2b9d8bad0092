"""One query's scan split into parts scanned at once (sst_search.vector_search.split_scan), on
real FAISS indexes: the same hits as one scan under every plan (the probed IVF lists, through
an OPQ rotation too, and the exact scan's rows); parts run on the pool's threads when it is
free, and by the caller when it is busy; small scans not split."""

from __future__ import annotations

import threading
import time

import faiss
import numpy as np
import pytest

from sst_search.config import IndexConfig, PlanConfig
from sst_search.vector_search import split_scan
from sst_search.vector_search.indexes import build_index, ivf_of
from sst_search.vector_search.planner import _coarse_input, search_table
from sst_search.vector_search.vector_table import VectorTable
from tests.fixtures import AdmittedIds

N, DIM = 12_000, 32



@pytest.fixture(scope="module")
def collection():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    labels = rng.integers(40, size=N)
    vectors = centres[labels] + 0.5 * rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, labels, rng.choice(1 << 62, size=N, replace=False).astype(np.int64)


def _config(factory: str, parts: int) -> IndexConfig:
    # exact_max 100: the cluster filter below goes to the selector, not to an exact scan
    return IndexConfig(exact_threshold=1_000, factory=factory, refine=4, train_niter=4,
                       plan=PlanConfig(exact_max=100, scan_parts=parts, scan_split_min=0))


@pytest.mark.parametrize("factory", ["IVF{nlist},SQ8", "OPQ8,IVF{nlist},PQ8"])
def test_a_split_scan_gives_the_hits_of_one_scan_under_every_plan(collection, factory):
    vectors, labels, ids = collection
    index = build_index(vectors, ids, DIM, _config(factory, 1))
    table = VectorTable(ids, vectors)
    filters = {"unfiltered": None, "postfilter": AdmittedIds(ids[labels % 2 == 0]),
               "selector": AdmittedIds(ids[np.isin(labels, [7, 8])]), "exact": AdmittedIds(ids[::200])}
    for plan, admission in filters.items():
        for row in range(0, N, 997):
            split, one = (search_table(index, table, _config(factory, parts), vectors[row], 10, admission,
                                       skip=int(ids[row])) for parts in (3, 1))
            assert one.plan == split.plan == plan
            assert len(split.hits) == 10
            assert [i for i, _ in split.hits] == [i for i, _ in one.hits]
            assert np.allclose([s for _, s in split.hits], [s for _, s in one.hits])


@pytest.fixture(scope="module")
def ranked(collection):
    """``(index, its IVF part, a query as the IVF sees it, its nprobe nearest lists and their scores)``:
    the index is returned too, since the IVF part's wrapper does not keep it alive."""
    vectors, _, ids = collection
    index = build_index(vectors, ids, DIM, _config("IVF{nlist},SQ8", 1))
    ivf = ivf_of(index)
    coarse = _coarse_input(index, vectors[:1])
    scores, lists = ivf.quantizer.search(coarse, ivf.nprobe)
    return index, ivf, coarse, lists[0], scores[0]


def test_parts_run_on_the_pools_threads_when_it_is_free(ranked, monkeypatch):
    _, ivf, coarse, lists, scores = ranked
    threads, scan_part = set(), split_scan.scan_part

    def recorded(*args):
        threads.add(threading.current_thread().name)
        time.sleep(0.05)  # long enough that the pool starts its part before the caller is done
        return scan_part(*args)

    monkeypatch.setattr(split_scan, "scan_part", recorded)
    values, found = split_scan.scan_lists(ivf, coarse, lists, scores, 20, None, parts=2)
    assert any(name.startswith("scan-part") for name in threads) and threading.current_thread().name in threads
    monkeypatch.setattr(split_scan, "scan_part", scan_part)
    one = split_scan.scan_lists(ivf, coarse, lists, scores, 20, None, parts=1)
    assert found.tolist() == one[1].tolist() and np.allclose(values, one[0])


def test_a_part_the_busy_pool_has_not_started_is_scanned_by_the_caller(ranked):
    _, ivf, coarse, lists, scores = ranked
    pool, release = split_scan._shared_pool(), threading.Event()
    safety = threading.Timer(20, release.set)  # never hang the suite if the caller waits after all
    safety.start()
    try:
        busy = [pool.submit(release.wait) for _ in range(split_scan.available_cpus())]
        start = time.perf_counter()
        values, found = split_scan.scan_lists(ivf, coarse, lists, scores, 20, None, parts=4)
        assert time.perf_counter() - start < 5, "the caller waited for a pool busy with other work"
        assert not release.is_set()
    finally:
        release.set()
        safety.cancel()
    for future in busy:
        future.result(timeout=20)
    one = split_scan.scan_lists(ivf, coarse, lists, scores, 20, None, parts=1)
    assert found.tolist() == one[1].tolist() and np.allclose(values, one[0])


def test_small_scans_are_not_split_and_one_part_means_never():
    auto = PlanConfig()
    assert split_scan.parts_for(auto, 20, 20 * 100 * 64) == 1  # 128k components: not worth a hand-off
    wide = split_scan.parts_for(auto, 200, 200 * 700 * 768)
    assert wide == split_scan.automatic_parts() == min(split_scan.available_cpus(), faiss.omp_get_max_threads(), 4)
    threads = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)  # as Ray sets it in a one-CPU actor: the shard does not split
        assert split_scan.parts_for(auto, 200, 200 * 700 * 768) == 1
    finally:
        faiss.omp_set_num_threads(threads)
    assert split_scan.parts_for(PlanConfig(scan_parts=1), 200, 200 * 700 * 768) == 1
    assert split_scan.parts_for(PlanConfig(scan_parts=8, scan_split_min=0), 3, 3 * 10 * 8) == 3


@pytest.mark.parametrize("parts", [1, 3])
def test_lists_are_ranked_as_the_quantizer_ranks_them(ranked, collection, parts, monkeypatch):
    from sst_search.vector_search import planner
    from sst_search.vector_search.planner import _Ranking

    index, ivf, _, _, _ = ranked
    vectors = collection[0]
    plan = PlanConfig(scan_parts=parts, scan_split_min=0)
    for row in range(0, N, 1499):
        coarse = _coarse_input(index, vectors[row : row + 1])
        scores, lists = ivf.quantizer.search(coarse, ivf.nlist)
        whole, near = _Ranking(index, vectors[row : row + 1], plan, ivf.nlist), _Ranking(index, vectors[row : row + 1], plan, 7)
        assert whole.order.tolist() == lists[0].tolist() and np.allclose(whole.scores, scores[0], atol=1e-5)
        assert near.order.tolist() == lists[0][:7].tolist()
        # The selector's lists, ranked from the nearest few alone: every third list holds a filter's vectors.
        held = (np.arange(ivf.nlist) % 3 == row % 3).astype(np.int64)
        expected = [j for j in lists[0] if held[j]]
        for first, want in ((planner.HOLDING_FIRST, N), (1, 1), (1, N)):  # 1: ranked nprobe deep first
            monkeypatch.setattr(planner, "HOLDING_FIRST", first)
            holding, holding_scores, among_probed = _Ranking(index, vectors[row : row + 1], plan, ivf.nprobe).holding(
                held, want)
            assert holding.tolist() == expected[: len(holding)] and among_probed == int(held[lists[0][: ivf.nprobe]].sum())
            assert np.allclose(holding_scores, scores[0][held[lists[0]] > 0][: len(holding)], atol=1e-5)
            assert len(holding) == (ivf.nprobe if want == 1 else len(expected))  # only the nearest when they hold enough


def test_while_another_scan_runs_the_caller_runs_every_part_itself():
    """The cores are busy then: handing parts to the pool would only add its cost."""
    started, release = threading.Event(), threading.Event()

    def other_scan(_: int) -> None:
        started.set()
        release.wait(20)

    other = threading.Thread(target=split_scan.run_in_parts, args=(other_scan, 1))
    other.start()
    try:
        assert started.wait(20)
        busy = split_scan.run_in_parts(lambda p: (p, threading.current_thread().name), 3)
    finally:
        release.set()
        other.join(20)
    assert busy == [(p, threading.current_thread().name) for p in range(3)]
    alone = split_scan.run_in_parts(lambda p: (time.sleep(0.05), threading.current_thread().name)[1], 2)
    assert alone[0] == threading.current_thread().name and alone[1].startswith("scan-part")


def test_the_warm_up_starts_every_pool_thread(monkeypatch):
    """``start_pool`` leaves the pool with all its threads running, so no first split scan
    waits for one to start."""
    monkeypatch.setattr(split_scan, "_pool", None)  # a new pool, as in a reader that has not searched yet
    split_scan.start_pool()
    assert len(split_scan._pool._threads) == split_scan._pool_threads()
