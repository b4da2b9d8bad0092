"""Retrieval quality of an index, with a label (group or metadata column) as relevance.

Leave-one-out over the index itself: every specimen with a vector for the trait queries
with its own stored vector, through the same FAISS search users get
(:meth:`Store.search`), and is removed from its own ranking. A result is relevant when it
carries the query's label. Specimens without the label are still in the gallery (as
non-relevant results) but do not query.

Scores alone mislead: a trait that only one species has will score P@k = 1 by group
whatever the embedder does. Each row therefore states the chance level, the precision a
random ranking would reach in expectation:
``E[P@k] = min(k, N-1) * R / ((N-1) * k)`` for a query with ``R`` relevant specimens
among the ``N-1`` others, averaged over the scored queries, and likewise for mAP@k
(:func:`chance_average_precision`).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

from rich.console import Group
from rich.table import Table

from ..store import Store
from .metrics import retrieval_scores

#: ``by`` value that uses the specimens' reference group instead of a metadata column.
GROUP = "group"

#: Queries searched per FAISS call: bounds memory on large indexes.
QUERY_BATCH = 4096


@dataclass(frozen=True)
class RetrievalRow:
    embedder: str
    trait: str
    k: int
    queries: int
    skipped: int  # queries with no other specimen of their label: no AP is defined
    labels: int
    map_at_k: float | None
    precision_at_k: float | None
    chance_precision_at_k: float | None
    chance_map_at_k: float | None = None


def chance_average_precision(k: int, relevant: int, others: int) -> float:
    """Expected AP@k of a uniformly random ranking of ``others`` specimens, ``relevant`` of them
    relevant. AP@k sums ``rel(i) * P@i`` (its normaliser ``min(k, R)`` is fixed), so the expectation
    is exact term by term: ``E[rel(i) P@i] = (R/M) (1 + (i-1)(R-1)/(M-1)) / i`` for ``M`` others."""
    if relevant <= 0 or others <= 0:
        raise ValueError("chance AP needs at least one relevant specimen among the others")
    m, r = others, relevant
    total = sum((r / m) * (1 + ((i - 1) * (r - 1) / (m - 1) if m > 1 else 0.0)) / i for i in range(1, min(k, m) + 1))
    return total / min(k, r)


@dataclass
class RetrievalReport:
    db: str
    by: str
    k: int
    rows: list[RetrievalRow]
    unlabeled: dict[tuple[str, str], int] = field(default_factory=dict)  # index -> vectors without a label
    random_embedders: list[str] = field(default_factory=list)
    random_segmentation: bool = False  # the last run segmented with random SAM 2 weights

    def row(self, embedder: str, trait: str) -> RetrievalRow:
        for r in self.rows:
            if (r.embedder, r.trait) == (embedder, trait):
                return r
        raise KeyError(f"no row for {embedder}/{trait}")

    def __rich__(self) -> Group:
        """One table per embedder, sized for an 80-column terminal; chance levels beside each score."""
        parts: list = [f"{self.db}: retrieval by {self.by!r}, k={self.k} (leave-one-out)"]
        for embedder in sorted({r.embedder for r in self.rows}):
            table = Table(title=f"embedder {embedder}", title_justify="left")
            for col in ("trait", "queries", "labels", f"mAP@{self.k}", "chance", f"P@{self.k}", "chance"):
                table.add_column(col, justify="left" if col == "trait" else "right", no_wrap=True)
            for r in (r for r in self.rows if r.embedder == embedder):
                table.add_row(r.trait, str(r.queries), str(r.labels), _fmt(r.map_at_k), _fmt(r.chance_map_at_k),
                              _fmt(r.precision_at_k), _fmt(r.chance_precision_at_k))
            parts.append(table)
        parts += [f"{r.embedder}/{r.trait}: {r.skipped} queries skipped (no other specimen with their label)"
                  for r in self.rows if r.skipped]
        parts += [
            f"[yellow]{e}/{t}: {n} vector(s) of specimens without {self.by!r} (gallery only)[/yellow]"
            for (e, t), n in sorted(self.unlabeled.items())
        ]
        parts += [
            f"[bold yellow]{e}: embedder weights were RANDOM when indexed; scores say nothing about the model.[/bold yellow]"
            for e in self.random_embedders
        ]
        if self.random_segmentation:
            parts.append("[bold yellow]The trait masks came from RANDOM SAM 2 weights: trait scores say nothing "
                         "about the model.[/bold yellow]")
        return Group(*parts)

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["embedder", "trait", "by", "k", "queries", "skipped", "labels", "map_at_k", "precision_at_k",
                        "chance_precision_at_k", "chance_map_at_k"])
            for r in self.rows:
                w.writerow([r.embedder, r.trait, self.by, r.k, r.queries, r.skipped, r.labels,
                            _num(r.map_at_k), _num(r.precision_at_k), _num(r.chance_precision_at_k), _num(r.chance_map_at_k)])
        return path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def specimen_labels(store: Store, by: str = GROUP) -> dict[int, str]:
    """``{specimen_id: label}`` of indexed specimens: their group, or a metadata column's value."""
    if by == GROUP:
        return store.group_labels()
    labels = store.metadata_labels(by)
    if not labels:
        keys = sorted(store.metadata_keys())
        raise ValueError(f"{store.db_path}: no indexed specimen has metadata column {by!r} (columns: {', '.join(keys) or 'none'}; or use {GROUP!r})")
    return labels


def _random_segmentation(store: Store) -> bool:
    """Whether the most recent run that segmented recorded random SAM 2 weights."""
    random = False
    for run in store.runs():
        fp = json.loads(run["fingerprint"]) if isinstance(run["fingerprint"], str) else (run["fingerprint"] or {})
        seg = fp.get("segmentation") or {}
        if seg.get("weights_sha256"):
            random = seg["weights_sha256"] == "random"
    return random


def _random_embedders(store: Store) -> list[str]:
    """Embedders whose most recent run recorded random weights."""
    latest: dict[str, bool] = {}
    for run in store.runs():
        fp = json.loads(run["fingerprint"]) if isinstance(run["fingerprint"], str) else (run["fingerprint"] or {})
        emb = fp.get("embedder") or {}
        if emb.get("embedder"):
            latest[emb["embedder"]] = emb.get("weights") == "random"
    return sorted(e for e, random in latest.items() if random)


def evaluate_retrieval(
    store: Store,
    by: str = GROUP,
    k: int = 10,
    embedders: Iterable[str] | None = None,
    traits: Iterable[str] | None = None,
) -> RetrievalReport:
    """mAP@k, P@k and chance P@k per (embedder, trait) index (see the module docstring)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    keys = store.index_keys()
    if not keys:
        raise ValueError(f"{store.db_path}: the index holds no vectors")
    for name, wanted, have in (("embedder", embedders, {e for e, _ in keys}), ("trait", traits, {t for _, t in keys})):
        unknown = sorted(set(wanted or ()) - have)
        if unknown:
            raise ValueError(f"{store.db_path}: unknown {name}(s) {unknown}; the index has {sorted(have)}")
    embedders, traits = set(embedders or ()), set(traits or ())
    labels = specimen_labels(store, by)
    report = RetrievalReport(str(store.db_path), by, k, [], random_embedders=_random_embedders(store),
                             random_segmentation=_random_segmentation(store))
    for embedder, trait in keys:
        if (embedders and embedder not in embedders) or (traits and trait not in traits):
            continue
        report.rows.append(_score_index(store, embedder, trait, labels, k, report))
    return report


def _score_index(store: Store, embedder: str, trait: str, labels: dict[int, str], k: int, report: RetrievalReport) -> RetrievalRow:
    ids, matrix = store.get_vectors(embedder, trait)
    gallery = ids.tolist()
    counts = Counter(labels[i] for i in gallery if i in labels)
    unlabeled = len(gallery) - sum(counts.values())
    if unlabeled:
        report.unlabeled[(embedder, trait)] = unlabeled
    queried = [j for j, sid in enumerate(gallery) if sid in labels]
    others = len(gallery) - 1
    queries, chance, chance_ap = [], [], []
    for start in range(0, len(queried), QUERY_BATCH):
        rows = queried[start : start + QUERY_BATCH]
        # One extra result, because the query itself usually comes back first.
        hits = store.search(embedder, trait, matrix[rows], k=min(k + 1, len(gallery)))
        for j, found in zip(rows, hits):
            sid = gallery[j]
            label = labels[sid]
            ranked = [h for h, _ in found if h != sid][:k]
            n_rel = counts[label] - 1
            queries.append((ranked, lambda h, label=label: labels.get(h) == label, n_rel))
            if n_rel:
                chance.append(min(k, others) * n_rel / (others * k))
                chance_ap.append(chance_average_precision(k, n_rel, others))
    scores = retrieval_scores(queries, k)
    return RetrievalRow(
        embedder, trait, k, scores.queries, scores.skipped, len(counts),
        scores.map_at_k, scores.precision_at_k, fmean(chance) if chance else None,
        fmean(chance_ap) if chance_ap else None,
    )
