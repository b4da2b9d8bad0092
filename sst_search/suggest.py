"""Which specimens to label: the ones that best represent their group.

SST needs one labeled support per group, so that one label should go to a typical
specimen: the *medoid* of the group's whole-specimen embeddings (the specimen most similar
on average to all others). When several supports are wanted, the next ones are chosen by
greedy *k-center* (farthest-first): each new pick is the specimen least covered by the
supports chosen so far, so the set spans the group's variation (sexes, forms, poses)
instead of repeating the typical one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embed import EmbedItem, TraitEmbedder, l2_normalize
from .images import ImageLoadError, load_image
from .store import SPECIMEN_TRAIT, Store

#: Images held in memory and embedded together.
EMBED_BATCH = 16


@dataclass(frozen=True)
class Suggestion:
    """``key``: a specimen id (from a store) or an image key (from a collection).
    ``coverage``: cosine distance to the nearest earlier pick (0 for the medoid), i.e. how
    much of the group this pick adds; ``centrality``: mean cosine similarity to the group."""

    key: int | str
    rank: int
    reason: str
    centrality: float
    coverage: float


def representatives(vectors: np.ndarray, n: int = 1) -> list[tuple[int, float]]:
    """Row indices of the medoid, then greedy k-center picks, with each pick's coverage distance."""
    if n < 1:
        raise ValueError("n must be at least 1")
    x = l2_normalize(np.asarray(vectors, dtype=np.float32))
    if len(x) == 0:
        return []
    sim = x @ x.T
    first = int(np.argmax(sim.mean(axis=1)))
    picks = [(first, 0.0)]
    nearest = 1.0 - sim[first]
    while len(picks) < min(n, len(x)):
        nxt = int(np.argmax(nearest))
        if nearest[nxt] <= 1e-6:  # everything left duplicates a pick
            break
        picks.append((nxt, float(nearest[nxt])))
        nearest = np.minimum(nearest, 1.0 - sim[nxt])
    return picks


def _suggestions(keys: Sequence[int | str], vectors: np.ndarray, n: int) -> list[Suggestion]:
    x = l2_normalize(vectors)
    centrality = (x @ x.T).mean(axis=1) if len(x) else np.zeros(0)
    return [
        Suggestion(keys[i], rank, "medoid" if rank == 1 else "k-center", float(centrality[i]), cov)
        for rank, (i, cov) in enumerate(representatives(x, n), start=1)
    ]


def suggest_from_store(store: Store, group: str, n: int = 1, embedder: str | None = None) -> list[Suggestion]:
    """Suggestions among the group's *indexed* specimens (failed images have no vectors),
    from their stored whole-specimen vectors."""
    embedders = sorted({e for e, t in store.index_keys() if t == SPECIMEN_TRAIT})
    if embedder is None:
        if not embedders:
            return []
        embedder = embedders[0]
    elif embedder not in embedders:
        raise KeyError(f"no whole-specimen vectors of embedder {embedder!r} (have: {embedders or 'none'})")
    ids = store.filter_specimens(group=group)
    if not ids:
        return []
    found, matrix = store.get_vectors(embedder, SPECIMEN_TRAIT, ids)
    return _suggestions([int(i) for i in found], matrix, n)


def suggest_from_images(
    images: Sequence[tuple[str, Path]], embedder: TraitEmbedder, n: int = 1
) -> tuple[list[Suggestion], list[tuple[str, str]]]:
    """Suggestions among ``(key, path)`` images, embedded whole; for a group not indexed yet
    (no references means no vectors). Unreadable images are skipped and returned as
    ``(key, reason)``, never suggested."""
    keys, vectors, failed = [], [], []
    batch: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        items = [EmbedItem(im, np.zeros(im.shape[:2], np.uint8), []) for _, im in batch]
        vectors.extend(v.specimen for v in embedder.embed_batch(items))
        keys.extend(k for k, _ in batch)
        batch.clear()

    for key, path in images:
        try:
            batch.append((key, load_image(path)))
        except ImageLoadError as exc:
            failed.append((key, str(exc)))
        if len(batch) == EMBED_BATCH:
            flush()
    if batch:
        flush()
    if not vectors:
        return [], failed
    return _suggestions(keys, np.stack(vectors), n), failed
