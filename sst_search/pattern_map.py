"""Pattern space: a 2-D map of every vector of one (embedder, trait) index.

A curator's first question about a collection of wing patterns is where everything sits:
which species cluster, which specimens are odd, which species look alike. A map answers it
for one trait at a time, on the masks SST found.

**Fitting.** ``umap`` (umap-learn, the default) or ``pca`` (the two leading principal axes:
exact, linear, seconds at a million points). Either is fitted on a seeded sample of at most
``sample_size`` (50,000) vectors and the rest are placed onto it in batches, so the cost is
bounded whatever the collection's size and the same seed gives the same coordinates:

- every vector is first projected on the sample's leading principal axes (at most
  :data:`REDUCED_DIM`): for ``pca`` the first two *are* the map, for ``umap`` the reduced
  vectors are what UMAP sees (the usual PCA-then-UMAP practice; it makes the
  neighbour graph and the placement below cheap at dim 512);
- UMAP gets its neighbour graph from an exact FAISS search on the sample, so its own
  approximate search (and its compile time) is skipped;
- the rest are **placed**, not transformed: each point lands at the distance-weighted mean
  of the map positions of its :data:`NEIGHBOURS` nearest fitted points (FAISS, an IVF index
  over the sample when it is large). ``UMAP.transform`` re-runs an optimisation per batch
  and takes minutes per hundred thousand points on two cores; the weighted mean is what
  that optimisation starts from, costs one FAISS search, and keeps a point next to the
  fitted points it resembles, which is all a map is read for. PCA places exactly.

**Keeping it.** The map is stored in the catalog (:mod:`sst_search.store.maps`) with the
index generation it is current with, so every snapshot carries it and every reader reuses
it. When the index changes (:func:`refresh_map`, called at the end of every index run):
points of removed specimens go; new specimens, and fitted-out specimens whose vector
changed, are placed on the existing map; the map is refitted when a vector of its fitted
sample changed (the map no longer describes those vectors: it is invalid) or when the
points placed since the fit exceed :data:`REFIT_SHARE` of the points it was fitted on (the
space has drifted from what was fitted). A changed vector is told from an unchanged one by
its *signature*, its projection on a fixed random direction, stored with each point.
"""

from __future__ import annotations

import functools
import io
import warnings
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from .store import Store
from .store.maps import (
    MapPoints,
    MapState,
    drop_map,
    index_generation,
    map_keys,
    map_points,
    map_state,
    write_map,
)

Method = Literal["umap", "pca"]
METHODS: tuple[str, ...] = ("umap", "pca")
#: Most vectors a map is fitted on; the rest are placed onto it.
SAMPLE_SIZE = 50_000
#: Refit once more than this share of the fitted points' count was placed since the fit.
REFIT_SHARE = 0.25
#: Fitted neighbours whose map positions place a new point.
NEIGHBOURS = 10
#: UMAP's neighbourhood size (its default).
UMAP_NEIGHBOURS = 15
#: Principal axes kept before UMAP and for placing points.
REDUCED_DIM = 64
#: Points placed per FAISS search (bounds the memory of a million-point placement).
PLACE_BATCH = 65_536
#: Samples above this many points are searched through an IVF index when placing.
IVF_MIN = 20_000


class MapError(ValueError):
    """A map cannot be made or read; the message says why."""


@dataclass
class TraitMap:
    """Map coordinates of one index, by specimen id, and how they came about."""

    embedder: str
    trait_name: str
    method: str
    seed: int
    ids: np.ndarray
    xy: np.ndarray
    fitted: np.ndarray
    #: Points of the snapshot placed in memory because the stored map predates them.
    placed_now: int = 0

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class _Projection:
    """What places a vector on a fitted map: centring, principal axes, and the method."""

    method: str
    mean: np.ndarray
    axes: np.ndarray  # (r, dim)

    def reduce(self, matrix: np.ndarray) -> np.ndarray:
        out = np.empty((len(matrix), len(self.axes)), np.float32)
        for start in range(0, len(matrix), PLACE_BATCH):
            part = matrix[start:start + PLACE_BATCH]
            out[start:start + PLACE_BATCH] = (part - self.mean) @ self.axes.T
        return out

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, axes=self.axes)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, method: str, data: bytes) -> _Projection:
        arrays = np.load(io.BytesIO(data))
        return cls(method, arrays["mean"], arrays["axes"])


def signatures(matrix: np.ndarray) -> np.ndarray:
    """Each vector's projection on a fixed random direction: equal for an unchanged vector,
    different (almost surely) for a changed one."""
    direction = np.random.default_rng(0).standard_normal(matrix.shape[1])
    return matrix.astype(np.float64) @ direction


def _sample(n: int, sample_size: int, seed: int) -> np.ndarray:
    """Sorted positions of the fitted sample: all when ``n`` fits, else a seeded draw."""
    if n <= sample_size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, sample_size, replace=False))


def _principal_axes(sample: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the ``r`` leading principal axes of ``sample``, signs fixed (largest
    coordinate positive) so that the same data always gives the same axes. From the
    eigenvectors of the ``dim x dim`` covariance: one matrix product over the sample, 25x
    faster than an SVD of the sample itself at 50,000 x 512."""
    mean = sample.mean(axis=0, dtype=np.float64)
    centred = sample - mean.astype(np.float32)
    _, vectors = np.linalg.eigh((centred.T @ centred).astype(np.float64))
    axes = vectors[:, ::-1][:, :r].T
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    return mean.astype(np.float32), (axes * np.where(signs == 0, 1, signs)[:, None]).astype(np.float32)


@functools.cache
def _umap_module():
    """umap-learn, with its numba kernels compiled once per installation instead of once per process.

    umap-learn declares its kernels (neighbour smoothing, membership strengths, the layout's
    epochs) without numba's on-disk cache, so every process that fits a map compiles them again:
    about 5 s on two cores before a 12-point map can be drawn, in each app worker and each
    ``sst-search map``. Turning numba's cache on for them (what ``cache=True`` would have done)
    makes that the first process's cost only; the compiled code is the same."""
    import umap
    from numba.core.registry import CPUDispatcher

    for module in (umap.umap_, umap.layouts, umap.utils, umap.distances, umap.spectral):
        for kernel in vars(module).values():
            if isinstance(kernel, CPUDispatcher) and kernel.py_func.__module__ == module.__name__:
                try:
                    kernel.enable_caching()
                except RuntimeError:  # numba finds nowhere writable to cache: compile in memory, as before
                    return umap
    return umap


def _umap(reduced: np.ndarray, seed: int) -> np.ndarray:
    umap = _umap_module()
    m = len(reduced)
    k = min(UMAP_NEIGHBOURS, m - 1)
    index = faiss.IndexFlatL2(reduced.shape[1])
    index.add(reduced)
    dist, nbr = index.search(reduced, k)
    with warnings.catch_warnings():  # a seed makes UMAP single-threaded, and it warns about it
        warnings.simplefilter("ignore")
        model = umap.UMAP(n_neighbors=k, random_state=seed, init="pca", n_jobs=1,
                          precomputed_knn=(nbr, np.sqrt(np.maximum(dist, 0)), None))
        return model.fit_transform(reduced).astype(np.float64)


def place(anchors: np.ndarray, anchors_xy: np.ndarray, points: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Map positions of ``points`` (reduced vectors): the inverse-distance weighted mean of
    the positions of their ``k`` nearest ``anchors``, searched in batches."""
    if not len(points):
        return np.zeros((0, 2))
    k = min(k, len(anchors))
    d = anchors.shape[1]
    if len(anchors) >= IVF_MIN:
        nlist = int(4 * np.sqrt(len(anchors)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        index.train(anchors)
        index.nprobe = 16
    else:
        index = faiss.IndexFlatL2(d)
    index.add(np.ascontiguousarray(anchors, np.float32))
    out = np.empty((len(points), 2))
    for start in range(0, len(points), PLACE_BATCH):
        dist, nbr = index.search(np.ascontiguousarray(points[start:start + PLACE_BATCH], np.float32), k)
        found = nbr >= 0
        weights = np.where(found, 1.0 / (np.sqrt(np.maximum(dist, 0)) + 1e-6), 0.0)
        xy = anchors_xy[np.where(found, nbr, 0)]
        out[start:start + PLACE_BATCH] = (weights[..., None] * xy).sum(1) / weights.sum(1, keepdims=True)
    return out


def fit_coordinates(matrix: np.ndarray, method: Method = "umap", seed: int = 0,
                    sample_size: int = SAMPLE_SIZE) -> tuple[np.ndarray, np.ndarray, _Projection]:
    """``(xy, fitted mask, projection)`` of every row of ``matrix``: fitted on a seeded sample,
    the rest placed (see the module docstring)."""
    if method not in METHODS:
        raise MapError(f"method must be one of {METHODS}, not {method!r}")
    n, dim = matrix.shape
    minimum = 3 if method == "umap" else 2
    if n < minimum:
        raise MapError(f"{n} vectors: a {method} map needs at least {minimum}")
    chosen = _sample(n, sample_size, seed)
    sample = np.ascontiguousarray(matrix[chosen], np.float32)
    mean, axes = _principal_axes(sample, 2 if method == "pca" else min(REDUCED_DIM, dim, len(sample)))
    projection = _Projection(method, mean, axes)
    fitted = np.zeros(n, bool)
    fitted[chosen] = True
    if method == "pca":
        return projection.reduce(matrix).astype(np.float64), fitted, projection
    reduced_sample = projection.reduce(sample)
    xy = np.empty((n, 2))
    xy[chosen] = _umap(reduced_sample, seed)
    rest = np.flatnonzero(~fitted)
    for start in range(0, len(rest), PLACE_BATCH * 4):  # reduce the rest in bounded pieces too
        part = rest[start:start + PLACE_BATCH * 4]
        xy[part] = place(reduced_sample, xy[chosen], projection.reduce(matrix[part]))
    return xy, fitted, projection


def index_vectors(store: Store, embedder: str, trait: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(ids, matrix, generation)`` of one index, the store's in-memory copy (no second one)."""
    generation = index_generation(store, embedder, trait)
    if generation is None:
        known = ", ".join(f"{e}/{t}" for e, t in store.index_keys()) or "none"
        raise MapError(f"{store.db_path}: no vectors for embedder {embedder!r}, trait {trait!r} (indexes: {known})")
    table = store.index_cache.vector_table((embedder, trait), generation)  # the reader's copy, not another one
    return table.ids, table.matrix, generation


def build_map(store: Store, embedder: str, trait: str, method: Method = "umap", seed: int = 0,
              sample_size: int = SAMPLE_SIZE) -> TraitMap:
    """Fit a new map of one index and store it (replacing any earlier one)."""
    ids, matrix, generation = index_vectors(store, embedder, trait)
    xy, fitted, projection = fit_coordinates(matrix, method, seed, sample_size)
    state = MapState(embedder, trait, method, seed, generation, fit_count=len(ids), added_since_fit=0,
                     params={"sample_size": sample_size, "neighbours": NEIGHBOURS, "reduced_dim": len(projection.axes),
                             "umap_neighbours": UMAP_NEIGHBOURS if method == "umap" else None},
                     model=projection.to_bytes())
    write_map(store, state, MapPoints(ids, xy, fitted, signatures(matrix)))
    return TraitMap(embedder, trait, method, seed, ids, xy, fitted)


@dataclass
class _Update:
    """How a stored map follows the index: points kept, points to place, or why it must be refitted."""

    keep: np.ndarray  # positions in the stored points
    place_ids: np.ndarray
    place_rows: np.ndarray  # rows of the current matrix
    removed: np.ndarray  # stored ids no longer (or no longer so) in the index
    refit: str | None


def _plan_update(state: MapState, points: MapPoints, ids: np.ndarray, matrix: np.ndarray,
                 refit_share: float) -> _Update:
    sig = signatures(matrix)
    at = np.searchsorted(ids, points.ids)
    present = (at < len(ids)) & (ids[np.minimum(at, len(ids) - 1)] == points.ids) if len(ids) else np.zeros(len(points), bool)
    same = present.copy()
    same[present] = np.abs(sig[at[present]] - points.signature[present]) <= 1e-6 * (1 + np.abs(points.signature[present]))
    changed_fitted = int((present & ~same & points.fitted).sum())
    keep = np.flatnonzero(same)
    stored = np.zeros(len(ids), bool)
    stored[at[same]] = True
    place_rows = np.flatnonzero(~stored)
    removed = points.ids[~same]
    refit = None
    if changed_fitted:
        refit = f"{changed_fitted} vectors of the fitted sample changed"
    elif not (same & points.fitted).any():
        refit = "no fitted point is left"
    elif state.added_since_fit + len(place_rows) > refit_share * state.fit_count:
        refit = (f"{state.added_since_fit + len(place_rows)} points placed since the fit, more than "
                 f"{refit_share:.0%} of the {state.fit_count} it was fitted on")
    return _Update(keep, ids[place_rows], place_rows, removed, refit)


def _placed(state: MapState, points: MapPoints, update: _Update, matrix: np.ndarray, ids: np.ndarray) -> np.ndarray:
    projection = _Projection.from_bytes(state.method, state.model)
    new = projection.reduce(matrix[update.place_rows])
    if state.method == "pca":
        return new.astype(np.float64)
    anchors = update.keep[points.fitted[update.keep]]
    rows = np.searchsorted(ids, points.ids[anchors])
    return place(projection.reduce(matrix[rows]), points.xy[anchors], new)


def refresh_map(store: Store, embedder: str, trait: str, refit_share: float = REFIT_SHARE) -> str:
    """Bring a stored map up to the index's vectors; returns what happened: ``current``,
    ``placed N`` (new points placed on the map), ``refitted: <why>`` or ``removed`` (the
    index is gone)."""
    state = map_state(store, embedder, trait)
    if state is None:
        return "no map"
    generation = index_generation(store, embedder, trait)
    if generation is None:
        drop_map(store, embedder, trait)
        return "removed"
    if generation == state.generation:
        return "current"
    ids, matrix, generation = index_vectors(store, embedder, trait)
    points = map_points(store, embedder, trait)
    update = _plan_update(state, points, ids, matrix, refit_share)
    if update.refit:
        try:
            build_map(store, embedder, trait, state.method, state.seed, state.params.get("sample_size", SAMPLE_SIZE))
        except MapError as exc:  # too few vectors left to fit: no map beats a wrong one
            drop_map(store, embedder, trait)
            return f"dropped: {exc}"
        return f"refitted: {update.refit}"
    xy = _placed(state, points, update, matrix, ids)
    state.generation = generation
    state.added_since_fit += len(update.place_ids)
    new = MapPoints(update.place_ids, xy, np.zeros(len(xy), bool), signatures(matrix[update.place_rows]))
    write_map(store, state, new, removed=update.removed, replace=False)
    return f"placed {len(xy)}"


def refresh_maps(store: Store, refit_share: float = REFIT_SHARE) -> dict[tuple[str, str], str]:
    """:func:`refresh_map` for every stored map (what an index run does before publishing)."""
    return {key: refresh_map(store, *key, refit_share=refit_share) for key in map_keys(store)}


def load_map(store: Store, embedder: str, trait: str) -> TraitMap | None:
    """The stored map as of this store's vectors, for a reader (nothing is written).

    A snapshot published before its map was brought up to date gets its new points placed
    in memory (``placed_now``); None when there is no map, or when it would have to be
    refitted (then :func:`refresh_map` or ``sst-search map`` on the live store does it).
    """
    state = map_state(store, embedder, trait)
    generation = index_generation(store, embedder, trait)
    if state is None or generation is None:
        return None
    points = map_points(store, embedder, trait)
    if generation == state.generation:
        return TraitMap(embedder, trait, state.method, state.seed, points.ids, points.xy, points.fitted)
    ids, matrix, _ = index_vectors(store, embedder, trait)
    update = _plan_update(state, points, ids, matrix, REFIT_SHARE)
    if update.refit:
        return None
    xy = np.concatenate([points.xy[update.keep], _placed(state, points, update, matrix, ids)])
    all_ids = np.concatenate([points.ids[update.keep], update.place_ids])
    fitted = np.concatenate([points.fitted[update.keep], np.zeros(len(update.place_ids), bool)])
    order = np.argsort(all_ids)
    return TraitMap(embedder, trait, state.method, state.seed, all_ids[order], xy[order], fitted[order],
                    placed_now=len(update.place_ids))


def default_embedder(store: Store, trait: str) -> str:
    """The embedder of ``trait``'s index: the only one, else the last run's, else the first."""
    names = [e for e, t in store.index_keys() if t == trait]
    if not names:
        known = ", ".join(sorted({t for _, t in store.index_keys()})) or "none"
        raise MapError(f"{store.db_path}: no vectors for trait {trait!r} (traits: {known})")
    recorded = (store.last_run_fingerprint().get("embedder") or {}).get("embedder")
    return recorded if recorded in names else names[0]
