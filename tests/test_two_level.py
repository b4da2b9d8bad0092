"""IVF lists trained in two levels (``index.two_level_lists``), on real FAISS indexes: the index
holds the two-level lists and searches find what a one-level index finds, the same vectors
give the same index, and a streamed build equals a one-shot one."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from sst_search.config import IndexConfig, IndexTier
from sst_search.vector_search import two_level
from sst_search.vector_search.indexes import add_assigned, build_index, build_index_from, ivf_of, training_rows

N, DIM = 30_000, 32


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((300, DIM)).astype(np.float32)
    x = centres[rng.integers(300, size=N)] + 0.3 * rng.standard_normal((N, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _config(two_level_lists: int) -> IndexConfig:
    return IndexConfig(exact_threshold=1_000, two_level_lists=two_level_lists)


def _recall(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray) -> float:
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    truth, got = exact.search(queries, 10)[1], index.search(queries, 10)[1]
    return float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)]))


def test_an_index_of_two_level_lists_searches_as_a_one_level_index_does(vectors):
    ids = np.arange(N, dtype=np.int64)
    two = build_index(vectors, ids, DIM, _config(1))
    one = build_index(vectors, ids, DIM, _config(10**9))
    ivf = ivf_of(two)
    assert ivf.nlist == ivf_of(one).nlist == _config(1).nlist_for(N) and two.ntotal == N
    config = _config(1)
    sample = vectors[training_rows(N, ivf.nlist * config.train_per_list, config.train_seed)]
    trained = two_level.train(sample, ivf.nlist, config.train_niter, config.train_seed)
    assert np.array_equal(ivf.quantizer.reconstruct_n(0, ivf.nlist), trained)  # the lists are the two-level ones
    assert not np.array_equal(trained, ivf_of(one).quantizer.reconstruct_n(0, ivf.nlist))
    queries = vectors[::300]
    assert _recall(two, vectors, queries) >= _recall(one, vectors, queries) - 0.02


def test_two_level_training_is_repeatable_and_a_streamed_build_equals_a_one_shot_build(vectors):
    ids = np.random.default_rng(3).choice(1 << 40, size=N, replace=False).astype(np.int64)
    config = _config(1)
    whole = build_index(vectors, ids, DIM, config)
    streamed = build_index_from(lambda rows: vectors[rows], ids, DIM, config, chunk=7_000)
    centroids = [ivf_of(i).quantizer.reconstruct_n(0, ivf_of(i).nlist) for i in (whole, streamed)]
    assert np.array_equal(*centroids)
    assert np.array_equal(whole.search(vectors[:50], 10)[1], streamed.search(vectors[:50], 10)[1])


def test_two_level_training_gives_the_asked_number_of_unit_centroids_or_says_why_not(vectors):
    centroids = two_level.train(vectors[:4_000], 100, niter=5, seed=1)
    assert centroids.shape == (100, DIM) and np.allclose(np.linalg.norm(centroids, axis=1), 1, atol=1e-5)
    assert np.array_equal(centroids, two_level.train(vectors[:4_000], 100, niter=5, seed=1))
    assert len(np.unique(centroids, axis=0)) == 100
    with pytest.raises(ValueError, match="cannot be trained"):
        two_level.train(vectors[:50], 100, niter=5, seed=1)


def _lists_of(index: faiss.Index) -> dict[int, int]:
    """Which list each id is filed in."""
    ivf = ivf_of(index)
    return {int(i): list_no for list_no in range(ivf.nlist)
            for i in faiss.rev_swig_ptr(ivf.invlists.get_ids(list_no), ivf.invlists.list_size(list_no))}


@pytest.mark.parametrize("factory", ["IVF{nlist},SQ8", "IVF{nlist},PQ{half_dim}x4fs"])
def test_a_bulk_build_files_vectors_among_their_nearest_groups_of_lists_as_every_list_would(vectors, factory):
    ids = np.arange(N, dtype=np.int64)
    tiers = [IndexTier(factory=factory)]
    grouped = build_index(vectors, ids, DIM, _config(1).model_copy(update={"tiers": tiers, "assign_groups": 4}))
    every = build_index(vectors, ids, DIM, _config(1).model_copy(update={"tiers": tiers, "assign_groups": 0}))
    assert grouped.ntotal == every.ntotal == N
    filed, nearest = _lists_of(grouped), _lists_of(every)
    assert sorted(filed) == list(range(N))
    assert np.mean([filed[i] != nearest[i] for i in range(N)]) < 0.01  # 4 of 26 groups compared
    assert sum(filed[i] != nearest[i] for i in range(N)) > 0  # the groups, not every list, were compared
    queries = vectors[::300]
    assert _recall(grouped, vectors, queries) >= _recall(every, vectors, queries) - 0.01


def test_codes_packed_into_fast_scan_lists_by_hand_equal_faiss_own(vectors):
    index = faiss.index_factory(DIM, "IVF64,PQ16x4fs", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors[:5_000])
    copy = faiss.clone_index(index)
    ids = np.random.default_rng(5).choice(1 << 40, size=N, replace=False).astype(np.int64)
    lists = index.quantizer.search(vectors, 1)[1][:, 0]
    for start in range(0, N, 7_001):  # chunks that end inside blocks
        part = slice(start, start + 7_001)
        index.add_with_ids(vectors[part], ids[part])
        add_assigned(copy, vectors[part], ids[part], lists[part])
    for one in (index, copy):
        one.nprobe = 8
    assert copy.ntotal == N
    assert _lists_of(copy) == _lists_of(index)
    expected, got = index.search(vectors[:100], 10), copy.search(vectors[:100], 10)
    assert np.array_equal(expected[1], got[1]) and np.array_equal(expected[0], got[0])
