"""IVF lists trained in two levels (``index.two_level_lists``), on real FAISS indexes: the index
holds the two-level lists and searches find what a one-level index finds, the same vectors
give the same index, and a streamed build equals a one-shot one."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from sst_search.config import IndexConfig
from sst_search.vector_search import two_level
from sst_search.vector_search.indexes import build_index, build_index_from, ivf_of, training_rows

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
