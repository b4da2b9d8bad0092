"""The IVF lists ranked through their centroids coded by the index's own fast-scan PQ
(sst_search.vector_search.coded_centroids), on real FAISS indexes: the lists a search reads
and their scores are the float32 ranking's, for unfiltered searches and for a filter's held
lists; the hits are the same; indexes without such codes rank as before."""

from __future__ import annotations

import numpy as np
import pytest

from sst_search.config import IndexConfig, PlanConfig
from sst_search.vector_search import coded_centroids, split_scan
from sst_search.vector_search.indexes import build_index, ivf_of
from sst_search.vector_search.planner import HOLDING_FIRST, _Ranking, search_table
from sst_search.vector_search.vector_table import VectorTable

N, DIM, QUERIES = 12_000, 32, 40


def _config(factory: str) -> IndexConfig:
    return IndexConfig(exact_threshold=1_000, factory=factory, train_niter=4, plan=PlanConfig(scan_split_min=0))


@pytest.fixture(scope="module")
def collection():
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((60, DIM)).astype(np.float32)
    vectors = centres[rng.integers(60, size=N)] + 0.6 * rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.choice(1 << 62, size=N, replace=False).astype(np.int64)
    config = _config("IVF{nlist},PQ{dim}x4fs")
    return vectors, ids, build_index(vectors, ids, DIM, config), config


def _float32_ranking(index, query: np.ndarray) -> np.ndarray:
    """Every list's float32 score, as the ranking without codes computes it."""
    return split_scan.inner_products(query, coded_centroids.flat_centroids(ivf_of(index)), PlanConfig())


def _nearest(scores: np.ndarray, lists: np.ndarray, depth: int) -> np.ndarray:
    return lists[np.lexsort((lists, -scores[lists]))][:depth]


def test_a_fast_scan_index_s_lists_are_ranked_as_in_float32(collection):
    vectors, _, index, config = collection
    ivf = ivf_of(index)
    assert coded_centroids.for_index(index) is not None  # the codes path is the one under test
    for row in range(0, N, N // QUERIES):
        ranking = _Ranking(index, vectors[row : row + 1], config.plan, ivf.nprobe)
        scores = _float32_ranking(index, vectors[row])
        expected = _nearest(scores, np.arange(ivf.nlist), ivf.nprobe)
        assert ranking.order.tolist() == expected.tolist()
        assert np.array_equal(ranking.scores, scores[expected])


def test_a_filter_s_held_lists_are_ranked_as_in_float32(collection):
    vectors, _, index, config = collection
    ivf = ivf_of(index)
    rng = np.random.default_rng(9)
    for share in (0.2, 0.9):  # held lists fewer than ranked first, and more (ranked by their codes first)
        held = (rng.random(ivf.nlist) < share) * rng.integers(1, 20, size=ivf.nlist)
        assert (np.count_nonzero(held) > HOLDING_FIRST * ivf.nprobe) == (share == 0.9)
        for row in range(7, N, N // QUERIES):
            ranking = _Ranking(index, vectors[row : row + 1], config.plan, ivf.nprobe)
            lists, scores, near = ranking.holding(held, want=ivf.nprobe * 10)
            assert np.all(held[lists] > 0)
            exact = _float32_ranking(index, vectors[row])
            assert np.array_equal(scores, exact[lists])
            # the lists a selector reads first are the nearest held ones, in order
            expected = _nearest(exact, np.flatnonzero(held), 2 * ivf.nprobe)
            assert lists[: len(expected)].tolist() == expected.tolist()
            assert near == np.count_nonzero(held[_nearest(exact, np.arange(ivf.nlist), ivf.nprobe)])


def test_the_hits_are_those_of_the_float32_ranking(collection):
    """``coded_candidates: 0`` turns the codes off: every list is scored in float32, with the same hits."""
    vectors, ids, index, config = collection
    table = VectorTable(ids, vectors)
    rows = range(3, N, N // QUERIES)
    coded = [search_table(index, table, config, vectors[row], 10, skip=int(ids[row])).hits for row in rows]
    float32 = config.model_copy(update={"plan": config.plan.model_copy(update={"coded_candidates": 0})})
    assert _Ranking(index, vectors[:1], float32.plan, ivf_of(index).nprobe).coded is None
    assert coded == [search_table(index, table, float32, vectors[row], 10, skip=int(ids[row])).hits for row in rows]


@pytest.mark.parametrize("factory", ["IVF{nlist},SQ8", "IVF{nlist},PQ{half_dim}x4fs"])
def test_other_index_kinds_rank_as_in_float32(collection, factory):
    """SQ8 codes have no product quantizer: every list is scored in float32. Two dimensions
    per sub-quantizer code the centroids too (by FAISS's encoder)."""
    vectors, ids, _, _ = collection
    index = build_index(vectors[:4_000], ids[:4_000], DIM, _config(factory))
    coded = coded_centroids.for_index(index)
    ranking = _Ranking(index, vectors[:1], PlanConfig(), ivf_of(index).nprobe)
    expected = _nearest(_float32_ranking(index, vectors[0]), np.arange(ivf_of(index).nlist), ivf_of(index).nprobe)
    assert ranking.order.tolist() == expected.tolist()
    assert (coded is None) == (factory == "IVF{nlist},SQ8")


def test_row_inner_products_score_the_listed_rows():
    rng = np.random.default_rng(2)
    matrix, query = rng.standard_normal((300, DIM)).astype(np.float32), rng.standard_normal(DIM).astype(np.float32)
    rows = rng.choice(300, size=50, replace=False)
    assert np.allclose(split_scan.row_inner_products(query, matrix, rows), matrix[rows] @ query, atol=1e-5)
