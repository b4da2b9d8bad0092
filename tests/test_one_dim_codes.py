"""Fast-scan codes of one dimension per sub-quantizer made by comparisons (``one_dim_codes``),
on real FAISS indexes: the codes are FAISS's own bit for bit, values on and beside every
midpoint included; sorting the centroids changes no search; indexes it cannot code exactly
are left to FAISS."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from sst_search.vector_search import one_dim_codes


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _trained(dim: int, factory: str = "IVF16,PQ{dim}x4fs", seed: int = 3) -> tuple[faiss.IndexIVF, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((3_000, dim)))
    ivf = faiss.index_factory(dim, factory.format(dim=dim), faiss.METRIC_INNER_PRODUCT)  # the IVF index itself
    ivf.cp.niter = 4
    ivf.train(x)
    return ivf, x


def _faiss_codes(ivf: faiss.IndexIVF, x: np.ndarray) -> np.ndarray:
    codes = np.empty((len(x), ivf.code_size), np.uint8)
    lists = np.zeros(len(x), np.int64)
    ivf.encode_vectors(len(x), faiss.swig_ptr(x), faiss.swig_ptr(lists), faiss.swig_ptr(codes))
    return codes


def _midpoint_rows(centroids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows whose values lie on a float32 midpoint of two neighbouring centroids, one float32
    step either side of it, or beyond the outermost centroids: where a comparison could go
    either way."""
    mids = ((centroids[:, :-1].astype(np.float64) + centroids[:, 1:]) / 2).astype(np.float32)
    candidates = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf)),
                                 centroids, centroids[:, :1] - 1, centroids[:, -1:] + 1], axis=1)
    picks = rng.integers(candidates.shape[1], size=(500, len(centroids)))
    return np.ascontiguousarray(np.take_along_axis(candidates, picks.T, axis=1).T, np.float32)


@pytest.mark.parametrize("dim", [64, 33])
def test_the_codes_are_faiss_s_own_on_and_beside_every_midpoint(dim):
    ivf, x = _trained(dim)
    one_dim_codes.sort_codebooks(ivf)
    encoder = one_dim_codes.encoder_for(ivf)
    assert encoder is not None
    centroids = faiss.vector_to_array(ivf.pq.centroids).reshape(dim, 16)
    assert (np.diff(centroids, axis=1) > 0).all()
    rows = np.concatenate([x, _midpoint_rows(centroids, np.random.default_rng(dim))])
    want = _faiss_codes(ivf, rows)
    assert np.array_equal(encoder.encode(rows), want)
    assert len(np.unique(want)) > 200  # the rows use most of the byte values: the check is not vacuous


def test_sorting_the_centroids_changes_no_search():
    ivf, x = _trained(64)
    ids = np.arange(len(x), dtype=np.int64) * 7
    ordered = faiss.clone_index(ivf)
    one_dim_codes.sort_codebooks(ordered)
    assert not np.array_equal(faiss.vector_to_array(ordered.pq.centroids), faiss.vector_to_array(ivf.pq.centroids))
    for index in (ivf, ordered):
        index.add_with_ids(x, ids)
        index.nprobe = 4
    queries = x[::50]
    assert all(np.array_equal(a, b) for a, b in zip(ivf.search(queries, 10), ordered.search(queries, 10), strict=True))


def test_indexes_it_cannot_code_exactly_are_left_to_faiss():
    unsorted, _ = _trained(64)
    assert one_dim_codes.encoder_for(unsorted) is None  # trained before the ordering: FAISS's order of centroids

    tied, _ = _trained(64)
    centroids = np.sort(faiss.vector_to_array(tied.pq.centroids).reshape(64, 16), axis=1)
    centroids[5, 7] = centroids[5, 8]  # two equal centroids: no value is nearer one than the other
    faiss.copy_array_to_vector(centroids.ravel(), tied.pq.centroids)
    assert one_dim_codes.encoder_for(tied) is None

    for factory in ("IVF16,PQ{dim}x4fs".replace("{dim}", "32"), "IVF16,SQ8"):
        other, _ = _trained(64, factory)
        one_dim_codes.sort_codebooks(other)  # two dimensions a sub-quantizer, or no product quantizer: left alone
        assert one_dim_codes.encoder_for(other) is None

    filled, x = _trained(64)
    filled.add(x[:10])
    with pytest.raises(ValueError, match="before adding vectors"):
        one_dim_codes.sort_codebooks(filled)
