"""Convergence: which groups' traits look alike (mimicry rings, convergent patterns).

For one trait and a grouping (the species, or any metadata column), how alike are two
groups? For every specimen of group A, the similarity of its best match in group B; the
mean of those (with their spread) says how well B covers A's patterns. It is not symmetric
(a variable species covers a uniform one better than the reverse), so both directions are
kept and pairs are ranked by their average. The diagonal is each group's own cohesion: a
specimen's best match among the *other* members of its group. Closest cross-group specimen
pairs ("which other species' forewing band looks most like this one's") come with it.

Exact: every best match is an exact FAISS inner-product search over the other group, so the
cost grows with the square of the specimens compared; groups larger than ``max_per_group``
are represented by a seeded sample of that size.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pandas as pd

from .pattern_map import MapError, index_vectors
from .store import Store

#: Specimens per group compared at most (a seeded sample beyond).
MAX_PER_GROUP = 2_000


@dataclass
class Convergence:
    """Group x group similarity of one trait. ``mean.loc[a, b]``: mean over A's specimens of
    the cosine of their best match in B; ``spread``: its standard deviation; ``counts``:
    specimens of each group compared. Groups are in clustered order (similar groups adjacent)."""

    trait: str
    embedder: str
    by: str
    mean: pd.DataFrame
    spread: pd.DataFrame
    counts: pd.Series
    pairs: pd.DataFrame

    def ranked(self) -> pd.DataFrame:
        """Cross-group pairs, most alike first: ``group_a, group_b, similarity`` (the two
        directions averaged), ``a_to_b``, ``b_to_a``."""
        rows = []
        groups = list(self.mean.index)
        for i, a in enumerate(groups):
            for b in groups[i + 1:]:
                ab, ba = self.mean.loc[a, b], self.mean.loc[b, a]
                rows.append({"group_a": a, "group_b": b, "similarity": (ab + ba) / 2, "a_to_b": ab, "b_to_a": ba})
        return pd.DataFrame(rows, columns=["group_a", "group_b", "similarity", "a_to_b", "b_to_a"]).sort_values(
            "similarity", ascending=False, ignore_index=True)

    def table(self) -> pd.DataFrame:
        """Long form for CSV: one row per (group, other group) with the mean, spread and counts."""
        rows = [{"group": a, "other_group": b, "mean_best_similarity": self.mean.loc[a, b],
                 "std_best_similarity": self.spread.loc[a, b], "specimens": int(self.counts[a]),
                 "other_specimens": int(self.counts[b])}
                for a in self.mean.index for b in self.mean.columns]
        return pd.DataFrame(rows)


def _labels(store: Store, by: str) -> dict[int, str]:
    if by == "group":
        return store.group_labels()
    if by not in store.metadata_keys():
        known = ", ".join(sorted(store.metadata_keys())) or "none"
        raise MapError(f"{store.db_path}: no metadata column {by!r} to group by (columns: group, {known})")
    return store.metadata_labels(by)


def _cluster_order(similarity: np.ndarray) -> np.ndarray:
    """Leaf order of an average-linkage clustering on 1 - similarity (similar groups adjacent)."""
    if len(similarity) < 3:
        return np.arange(len(similarity))
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    distance = np.clip(1.0 - (similarity + similarity.T) / 2, 0, None)
    np.fill_diagonal(distance, 0)
    return leaves_list(linkage(squareform(distance, checks=False), "average"))


def convergence(store: Store, embedder: str, trait: str, by: str = "group", max_per_group: int = MAX_PER_GROUP,
                seed: int = 0, top_pairs: int = 20) -> Convergence:
    """How alike the groups' ``trait`` is (see the module docstring)."""
    ids, matrix, _ = index_vectors(store, embedder, trait)
    labels = _labels(store, by)
    names = np.array([labels.get(int(i)) for i in ids], dtype=object)
    rng = np.random.default_rng(seed)
    members: dict[str, np.ndarray] = {}
    for group in sorted({n for n in names if n is not None}):
        rows = np.flatnonzero(names == group)
        members[group] = np.sort(rng.choice(rows, max_per_group, replace=False)) if len(rows) > max_per_group else rows
    if len(members) < 2:
        raise MapError(f"{store.db_path}: trait {trait!r} has vectors in {len(members)} {by} value(s); "
                       "convergence compares at least two")
    groups = list(members)
    mean = np.full((len(groups), len(groups)), np.nan)
    spread = np.full_like(mean, np.nan)
    best_pairs = []
    for j, b in enumerate(groups):
        index = faiss.IndexFlatIP(matrix.shape[1])
        index.add(np.ascontiguousarray(matrix[members[b]]))
        for i, a in enumerate(groups):
            own = a == b
            k = min(2 if own else 1, len(members[b]))
            scores, found = index.search(np.ascontiguousarray(matrix[members[a]]), k)
            if own:  # best match among the others: drop the specimen itself
                if k < 2:
                    continue
                not_self = members[b][found[:, 0]] != members[a]
                best, match = np.where(not_self, scores[:, 0], scores[:, 1]), np.where(not_self, found[:, 0], found[:, 1])
            else:
                best, match = scores[:, 0], found[:, 0]
            mean[i, j], spread[i, j] = best.mean(), best.std()
            if not own:
                best_pairs += [(int(ids[r]), a, int(ids[members[b][m]]), b, float(s))
                               for r, m, s in zip(members[a], match, best)]
    order = _cluster_order(np.nan_to_num(mean, nan=1.0))
    ordered = [groups[o] for o in order]
    frame = lambda m: pd.DataFrame(m, index=groups, columns=groups).loc[ordered, ordered]  # noqa: E731
    pairs = pd.DataFrame(best_pairs, columns=["specimen_a", "group_a", "specimen_b", "group_b", "similarity"])
    unordered = pairs[["specimen_a", "specimen_b"]].min(axis=1).astype(str) + "-" + pairs[["specimen_a", "specimen_b"]].max(axis=1).astype(str)
    pairs = pairs.loc[~unordered.duplicated()].sort_values("similarity", ascending=False, ignore_index=True).head(top_pairs)
    return Convergence(trait, embedder, by, frame(mean), frame(spread),
                       pd.Series({g: len(members[g]) for g in ordered}), pairs)
