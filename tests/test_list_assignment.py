"""Filing vectors in their lists by bfloat16 products checked exactly (``list_assignment``), on
real FAISS indexes: the lists chosen are FAISS's own, near-ties included, the bound on a
bfloat16 score's error holds, and an index filled this way (fast-scan blocks packed by us,
or FAISS's own lists) equals one FAISS filled."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from sst_search.config import IndexConfig
from sst_search.vector_search import fast_scan_lists, list_assignment
from sst_search.vector_search.indexes import Filling, build_index_from, ivf_of

DIM = 64


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def collection():
    rng = np.random.default_rng(11)
    centres = _unit(rng.standard_normal((40, DIM)))
    x = _unit(centres[rng.integers(40, size=6_000)] + 0.15 * rng.standard_normal((6_000, DIM)))
    return x, rng.choice(1 << 40, size=len(x), replace=False).astype(np.int64)


def _flat_nearest(centroids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = faiss.IndexFlatIP(centroids.shape[1])
    flat.add(centroids)
    scores, lists = flat.search(x, 1)
    return lists[:, 0], scores[:, 0]


def test_the_lists_chosen_are_faiss_s_own_near_ties_included(collection):
    x, _ = collection
    rng = np.random.default_rng(5)
    centroids = _unit(rng.standard_normal((300, DIM)))
    # vectors halfway between two centroids, nudged less than a bfloat16 score's error: the
    # bfloat16 product cannot tell their two lists apart, the float32 check must
    pairs = rng.integers(300, size=(2_000, 2))
    halfway = _unit(centroids[pairs[:, 0]] + centroids[pairs[:, 1]] + 1e-3 * rng.standard_normal((2_000, DIM)))
    queries = np.vstack([x, halfway])
    got = list_assignment.NearestLists(centroids).assign(queries)
    want, best = _flat_nearest(centroids, queries)
    differ = np.flatnonzero(got != want)
    # only float32 ties (a last-place difference between two BLAS sums) may go either way
    assert len(differ) <= 2
    assert np.allclose(np.einsum("nd,nd->n", queries[differ], centroids[got[differ]]), best[differ], atol=1e-6)
    # and the check was needed: bfloat16 alone picks another list for some of the halfway vectors
    narrow = (torch.from_numpy(halfway).bfloat16() @ torch.from_numpy(centroids).bfloat16().T).float()
    assert (narrow.argmax(dim=1).numpy() != want[len(x):]).sum() > 20


def test_a_bfloat16_score_is_never_further_from_the_exact_one_than_its_bound():
    rng = np.random.default_rng(9)
    x = _unit(rng.standard_normal((500, DIM))) * rng.uniform(0.5, 2.0, size=(500, 1)).astype(np.float32)
    centroids = _unit(rng.standard_normal((200, DIM)))
    nearest = list_assignment.NearestLists(centroids)
    rows = torch.from_numpy(x)
    narrow = (rows.bfloat16() @ nearest.centroids.bfloat16().T).float().numpy()
    bound = list_assignment.score_error(
        torch.linalg.vector_norm(rows - rows.bfloat16().float(), dim=1).numpy()[:, None],
        np.linalg.norm(x, axis=1)[:, None], nearest.centroid_rounding, nearest.centroid_norm, narrow)
    off = np.abs(narrow - x.astype(np.float64) @ centroids.astype(np.float64).T)
    assert (off <= bound).all()
    assert off.max() > bound.max() / 20  # the bound is not vacuous either


@pytest.mark.parametrize(("factory", "units"), [("IVF{nlist},PQ{dim}x4fs", True), ("IVF{nlist},PQ{dim}x4fs", False),
                                               ("IVF{nlist},SQ8", True), ("IVF{nlist},RaBitQ", True)])
def test_an_index_filled_through_the_bfloat16_lists_equals_one_faiss_filled(collection, factory, units, monkeypatch):
    x, ids = collection
    tier = [{"up_to": None, "factory": factory}]
    faiss_filled = IndexConfig(exact_threshold=100, tiers=tier, fast_assignment_lists=10**9)
    ours = IndexConfig(exact_threshold=100, tiers=tier, fast_assignment_lists=1)
    # this CPU's units or not, the path runs (without them, fast-scan codes are still packed a filing at a time)
    monkeypatch.setattr(list_assignment, "matrix_units", lambda: units)
    # several filings, each appending to lists whose last block is partly filled
    monkeypatch.setattr(fast_scan_lists, "FILING", 1_700)
    want = build_index_from(lambda rows: x[rows], ids, DIM, faiss_filled, chunk=1_000)
    got = build_index_from(lambda rows: x[rows], ids, DIM, ours, chunk=1_000)
    assert (Filling(got, ours).nearest is not None) == units and Filling(want, faiss_filled).nearest is None
    assert (Filling(got, ours)._blocks is not None) == ("fs" in factory)
    assert got.ntotal == want.ntotal == len(x)
    for index in (got, want):
        ivf_of(index).nprobe = 8
    wanted, found = want.search(x[::40], 10), got.search(x[::40], 10)
    assert np.array_equal(wanted[1], found[1]) and np.array_equal(wanted[0], found[0])
    lists_of = [[sorted(faiss.rev_swig_ptr(ivf_of(i).invlists.get_ids(n), ivf_of(i).invlists.list_size(n)))
                 for n in range(ivf_of(i).nlist)] for i in (want, got)]
    assert lists_of[0] == lists_of[1]
