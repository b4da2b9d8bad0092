"""Trait maps: real umap-learn on the session's indexed collection, stored in a real DuckDB store,
kept current by index runs (new specimens placed, not refitted) and refitted when vectors change.
One test fits UMAP on the store: its first fit in a process compiles umap-learn's numba code."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.job import run_index
from sst_search.pattern_map import (
    MapError,
    build_map,
    fit_coordinates,
    load_map,
    place,
    refresh_map,
)
from sst_search.store import Store
from sst_search.store.maps import map_points, map_state
from sst_search.store.review_tables import record_decision
from sst_search.synthetic import generate_collection
from tests.fixtures import (
    INDEXED_PER_SPECIES,
    INDEXED_SEED,
    INDEXED_SPECIES,
    random_weights_config,
)

TRAIT = "forewing_band"
EMBEDDER = "color-pattern"


def copy_store(db, to):
    """The live store and its FAISS files (not its snapshots): a writable copy of a session store."""
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy(db, to / db.name)
    shutil.copytree(db.with_name(db.name + ".faiss"), to / (db.name + ".faiss"))
    return to / db.name


def test_fit_on_a_sample_places_the_rest_next_to_their_twins():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32))
    labels = np.repeat(np.arange(4), 60)
    matrix = centres[labels] + 0.05 * rng.normal(size=(240, 32))
    matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
    xy, fitted, _ = fit_coordinates(matrix, "pca", seed=1, sample_size=40)
    assert fitted.sum() == 40
    exact = (matrix - matrix[fitted].mean(0)) @ np.linalg.svd(matrix[fitted] - matrix[fitted].mean(0))[2][:2].T
    assert np.allclose(np.abs(xy), np.abs(exact), atol=1e-4)  # PCA places every point exactly
    # The rest of a UMAP map is placed by its fitted neighbours: a point lands among its own
    # cluster's fitted points, not another's (here on any 2-D layout of the fitted points).
    anchors_xy = np.random.default_rng(2).normal(size=(4, 2))[labels[fitted]] * 10 + rng.normal(size=(40, 2))
    placed = place(matrix[fitted], anchors_xy, matrix[~fitted])
    centroids = np.stack([anchors_xy[labels[fitted] == c].mean(0) for c in range(4)])
    nearest = np.linalg.norm(placed[:, None] - centroids[None], axis=2).argmin(1)
    assert (nearest == labels[~fitted]).mean() > 0.95
    assert np.allclose(place(matrix[fitted], anchors_xy, matrix[fitted]), anchors_xy, atol=1e-3)  # a twin: on it
    with pytest.raises(MapError, match="at least 3"):
        fit_coordinates(matrix[:2], "umap")


def test_umap_map_is_seeded_stored_placed_on_reindex_and_refitted_when_vectors_change(indexed, tmp_path):
    coll, db = indexed
    db = copy_store(db, tmp_path / "store")
    with Store.open(db) as store:
        before = build_map(store, EMBEDDER, TRAIT, "umap", seed=3)
        again = build_map(store, EMBEDDER, TRAIT, "umap", seed=3)
        fitted_at = map_state(store, EMBEDDER, TRAIT).fitted_at
        assert np.array_equal(before.ids, store.population(EMBEDDER, TRAIT)) and before.fitted.all()
    assert np.array_equal(before.xy, again.xy)  # same seed, same coordinates, bit for bit
    import umap  # its kernels are in numba's disk cache (written, or read back): compiled once per install

    kernel = umap.umap_.smooth_knn_dist
    assert list(Path(kernel._cache.cache_path or "").glob(f"*.{kernel.py_func.__qualname__}-*.nbi"))
    assert np.isfinite(before.xy).all() and np.ptp(before.xy, axis=0).min() > 0
    with Store.open(db, read_only=True) as reader:  # stored: a reader gets the same map back
        stored = load_map(reader, EMBEDDER, TRAIT)
    assert stored is not None and stored.method == "umap" and stored.placed_now == 0
    assert np.array_equal(stored.ids, before.ids) and np.allclose(stored.xy, before.xy)
    # The same collection with one more specimen per species (the existing files are byte-identical).
    grown = generate_collection(tmp_path / "grown", species=INDEXED_SPECIES, per_species=INDEXED_PER_SPECIES + 1,
                                seed=INDEXED_SEED)
    run_index(grown.manifest, grown.references, db, random_weights_config(), masks=grown.ground_truth)
    with Store.open(db) as store:
        state = map_state(store, EMBEDDER, TRAIT)
        points = map_points(store, EMBEDDER, TRAIT)
        vector_ids = store.population(EMBEDDER, TRAIT)
        assert np.array_equal(points.ids, vector_ids)  # every vector has its point
        new = ~np.isin(points.ids, before.ids)
        assert new.sum() == len(vector_ids) - len(before.ids) > 0
        assert state.fitted_at == fitted_at and state.added_since_fit == new.sum()  # placed, not refitted
        old = np.searchsorted(before.ids, points.ids[~new])
        assert np.array_equal(points.xy[~new], before.xy[old]) and not points.fitted[new].any()
        lo, hi = before.xy.min(0), before.xy.max(0)
        assert ((points.xy[new] >= lo) & (points.xy[new] <= hi)).all()  # placed among the fitted points

        # A curator's correction re-embeds one fitted specimen's trait: the map no longer describes it.
        changed = int(before.ids[0])
        _, vec = store.vectors_of(EMBEDDER, TRAIT, [changed])
        tid = next(m.trait_id for m in store.trait_masks(changed) if m.trait_name == TRAIT)
        record_decision(store, changed, TRAIT, "correct", "curator", mask=store.label_map(changed) == tid,
                        vectors={(EMBEDDER, TRAIT): np.roll(vec[0], 7)})
        outcome = refresh_map(store, EMBEDDER, TRAIT)
        assert outcome == "refitted: 1 vectors of the fitted sample changed"
        refit = map_state(store, EMBEDDER, TRAIT)
        assert refit.fitted_at > fitted_at and refit.added_since_fit == 0
        assert map_points(store, EMBEDDER, TRAIT).fitted.all()


def test_a_selection_from_the_map_scatter_decodes_to_the_same_rows_either_way():
    """The scatter sends a small selection as int32 row numbers and a large one as a bitmap;
    both name the same rows, and rows beyond the map are dropped."""
    import base64

    from ui.map_scatter import decode_rows

    mask = np.random.default_rng(3).random(1_003) < 0.3
    rows = np.flatnonzero(mask)
    as_rows = {"rows": base64.b64encode(np.append(rows, [5_000, -1]).astype("<i4").tobytes()).decode()}
    as_bits = {"bitmap": base64.b64encode(np.packbits(mask, bitorder="little").tobytes()).decode()}
    assert np.array_equal(decode_rows(as_rows, len(mask)), rows)
    assert np.array_equal(decode_rows(as_bits, len(mask)), rows)
    assert len(decode_rows({"rows": ""}, len(mask))) == 0
