"""Trait search: by an indexed specimen, an uploaded photo or text, filtered by metadata.

A search ranks one trait's FAISS index (``__specimen__`` for whole specimens) by cosine
similarity. Metadata and measurement filters are structured :class:`Filter` objects that
the store compiles to parameterised SQL (:mod:`sst_search.store.filters`). Query vectors
of uploads and texts come from the :class:`~sst_search.encoding.QueryEncoder`, which owns
the models; the engine here follows snapshots, ranks and assembles results. Optional
re-ranking scores the top candidates by SST cycle consistency: the query's trait is
tracked into the candidate and back, and the round-trip IoU says how well the trait
"exists" there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .encoding import QueryEncoder, make_support
from .errors import QueryError
from .images import load_image
from .measure import FIELDS as MEASUREMENT_FIELDS
from .references import Support
from .store import SPECIMEN_TRAIT, Store, decode_mask
from .store.filters import CONFIDENCE_FIELDS, Filter, compile_filters, parse_filter
from .store.indexed import MAX_K
from .store.snapshots import resolve_snapshot
from .vector_search.planner import Admission

__all__ = ["Direction", "Filter", "QueryError", "QueryResult", "SearchEngine", "compile_filters", "parse_filter"]

Direction = Literal["similar", "different"]

@dataclass
class QueryResult:
    specimen_id: int
    rank: int
    score: float
    path: str
    group: str | None
    trait_name: str
    trait_id: int | None
    bbox: tuple[int, int, int, int] | None
    area: int | None
    quality: float | None
    metadata: dict[str, str] = field(default_factory=dict)
    rerank_iou: float | None = None
    _rle: str | None = None

    def mask(self) -> np.ndarray | None:
        """The trait's mask on this specimen (decoded on demand)."""
        return decode_mask(self._rle) if self._rle else None


def random_weights(run: dict) -> bool:
    """Whether a run's fingerprint names random SAM 2 or embedder weights (results then mean nothing)."""
    seg, emb = run.get("segmentation") or {}, run.get("embedder") or {}
    return seg.get("weights_sha256") == "random" or emb.get("weights") == "random"


class SearchEngine:
    """Read-only search over the latest published snapshot of an index."""

    def __init__(self, store: Store, tracker=None, embedder=None, references: Path | None = None,
                 db_path: Path | None = None, weights: str | None = None):
        self.store = store
        #: The live store this engine follows; ``store.db_path`` is the snapshot it reads.
        self.db_path = Path(db_path) if db_path is not None else store.db_path
        self._explicit_references = Path(references) if references else None
        #: Segments and embeds what a search is given, with the models the index was built with.
        self.encoder = QueryEncoder(store.last_run_fingerprint(), tracker, embedder, self._explicit_references, weights)

    @classmethod
    def open(cls, db_path: str | Path, tracker=None, embedder=None, references: str | Path | None = None,
             weights: str | None = None) -> SearchEngine:
        """Open the latest published snapshot of the index at ``db_path`` read-only.

        ``tracker`` and ``embedder`` are built on demand from the recorded run configuration
        unless given; ``references`` overrides the references folder the run recorded and
        ``weights`` the SAM 2 checkpoint (the same checkpoint, at another path on this machine).
        """
        return cls(Store.open(resolve_snapshot(db_path), read_only=True), tracker, embedder, references, Path(db_path),
                   weights)

    def refresh(self) -> bool:
        """Switch to a newer published snapshot if there is one; True when it switched.

        A long-lived reader (the app) calls this between searches; searches already running
        finish on the old snapshot, which a publish never modifies. Models already built are kept.
        """
        latest = resolve_snapshot(self.db_path)
        if latest == self.store.db_path:
            return False
        old = self.store
        self.store = Store.open(latest, read_only=True)
        self.encoder = self.encoder.for_run(self.store.last_run_fingerprint())
        old.close()
        return True

    def warm(self) -> None:
        """Read the snapshot's index files into the page cache now (:meth:`Store.warm`) and
        search each index once (:meth:`Store.search_each_index`): a long-lived reader, the
        app, pays once at opening what its first searches would otherwise each pay, waiting
        on the disk or setting up."""
        self.store.warm()
        self.store.search_each_index()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what is there --------------------------------------------------------------------
    @property
    def references(self) -> Path | None:
        """The references folder uploads are segmented against (recorded by the run, or given)."""
        return self.encoder.references

    def fingerprints(self) -> dict:
        """Models and weights behind the index (from the last finished run)."""
        seg = self.encoder.run.get("segmentation") or {}
        emb = self.encoder.run.get("embedder") or {}
        return {
            "sam2_model": seg.get("model"), "sam2_weights": seg.get("weights_sha256"), "image_size": seg.get("image_size"),
            "adapter": seg.get("adapter_sha256"), "mode": seg.get("mode"),
            "embedder": emb.get("embedder"), "embedder_model": emb.get("model"), "embedder_weights": emb.get("weights"),
            "random_weights": random_weights(self.encoder.run),
        }

    def groups(self) -> list[str]:
        return self.store.groups()

    def embedders(self) -> list[str]:
        return self.store.embedders()

    def traits(self, group: str | None = None) -> list[str]:
        return [SPECIMEN_TRAIT] + self.store.traits(group)

    def metadata_keys(self) -> set[str]:
        return self.store.metadata_keys()

    def trait_fields(self) -> list[str]:
        """Every ``<trait>.<column>`` filter field this index can answer: the measurements of
        each measured trait, the mask confidences of each trait with masks."""
        traits = self.store.filter_traits()
        return ([f"{t}.{m.name}" for t in sorted(traits.measured) for m in MEASUREMENT_FIELDS]
                + [f"{t}.{c}" for t in sorted(traits.masked) for c in CONFIDENCE_FIELDS])

    def filter_ids(self, filters: list[Filter] | None, group: str | None = None) -> np.ndarray | None:
        """Ids of indexed specimens passing the filters (None when there are none to apply)."""
        filters = list(filters or [])
        if group is not None:
            filters.append(Filter(field="group", op="==", value=group))
        if not filters:
            return None
        return self.store.specimen_ids(filters)

    # -- models (owned by the encoder, built on demand like the index was) ----------------------
    @property
    def config(self):
        return self.encoder.config

    @property
    def tracker(self):
        return self.encoder.tracker

    @property
    def embedder(self):
        return self.encoder.embedder

    def supports(self, group: str) -> list[Support]:
        return self.encoder.supports(group)

    # -- search -----------------------------------------------------------------------------------
    def search(
        self,
        trait: str,
        k: int = 10,
        *,
        specimen_id: int | None = None,
        image: np.ndarray | None = None,
        group: str | None = None,
        text: str | None = None,
        filters: list[Filter] | None = None,
        direction: Direction = "similar",
        rerank: bool = False,
        embedder: str | None = None,
        exclude_query: bool = True,
    ) -> list[QueryResult]:
        """Rank specimens by ``trait`` similarity to exactly one of: an indexed specimen, an
        uploaded ``image`` (segmented against ``group``'s references), or ``text``.

        ``direction="different"`` returns the least similar first: the index is searched with
        the negated query vector (the top of ``-q`` is the bottom of ``q``), and ``score`` is
        still the cosine similarity to the query, so results come in ascending order.
        ``rerank`` re-orders the top ``k`` of ``3k`` candidates by cycle-consistency IoU
        (needs SAM 2). ``group`` names the species an uploaded photo is segmented as; to
        restrict the results to a group, filter on ``Filter(field="group", ...)``.
        """
        if sum(x is not None for x in (specimen_id, image, text)) != 1:
            raise QueryError("give exactly one of specimen_id, image or text")
        if direction not in ("similar", "different"):
            raise QueryError(f"direction must be 'similar' or 'different', not {direction!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise QueryError(f"k must be a positive integer, got {k!r}")
        k = min(int(k), MAX_K)
        embedder = embedder or self._default_embedder()
        query_support = None
        if specimen_id is not None:
            vector = self._stored_vector(embedder, trait, specimen_id)
            if rerank:
                query_support = self._specimen_support(specimen_id)
        elif image is not None:
            vector, query_support = self.encoder.upload_vector(image, trait, group)
        else:
            if rerank:
                raise QueryError("re-ranking by cycle consistency needs a specimen or an image, not text")
            vector = self.encoder.text_vector(text)
        fetch = k * 3 if rerank else k
        skip = specimen_id if exclude_query else None
        signed = vector if direction == "similar" else -vector
        hits = self._ranked(embedder, trait, signed, fetch, list(filters or []), skip)
        if direction == "different":
            hits = [(sid, -s) for sid, s in hits]
        results = self._results(hits, trait)
        if rerank:
            results = self._rerank(results, query_support, trait)
        results = results[:k]
        for i, r in enumerate(results, start=1):
            r.rank = i
        return results

    def _ranked(
        self, embedder: str, trait: str, vector: np.ndarray, n: int, filters: list[Filter], skip: int | None
    ) -> list[tuple[int, float]]:
        """Top ``n`` ``(specimen_id, inner product)`` passing ``filters``, without ``skip``.

        Exactly ``n`` whenever ``n`` specimens pass: the store plans the search from the
        filter's selectivity (see :mod:`sst_search.vector_search.planner`), asking the snapshot which
        of a few ids pass or which pass at all (:meth:`Store.admission`).
        """
        return self.store.filtered_search(embedder, trait, vector, n, self.admission(filters), skip).hits

    def admission(self, filters: list[Filter] | None) -> Admission | None:
        """The filters as the planner asks about them (None without filters)."""
        return self.store.admission(filters or [])

    def _default_embedder(self) -> str:
        names = self.embedders()
        if not names:
            raise QueryError("the index holds no vectors yet")
        recorded = (self.encoder.run.get("embedder") or {}).get("embedder")
        return recorded if recorded in names else names[0]

    def _stored_vector(self, embedder: str, trait: str, specimen_id: int) -> np.ndarray:
        ids, matrix = self.store.vectors_of(embedder, trait, [specimen_id])
        if not len(ids):
            raise QueryError(f"specimen {specimen_id} has no {trait!r} vector for {embedder!r} (trait not found on it?)")
        return matrix[0]

    def _specimen_support(self, specimen_id: int) -> Support:
        row = self.store.get_specimen(specimen_id)
        label_map = self.store.label_map(specimen_id)
        if row is None or label_map is None:
            raise QueryError(f"specimen {specimen_id} has no masks to re-rank with")
        names = {m.trait_id: m.trait_name for m in self.store.trait_masks(specimen_id)}
        return make_support(str(specimen_id), load_image(row["path"]), label_map, names)

    def _results(self, hits: list[tuple[int, float]], trait: str) -> list[QueryResult]:
        if not hits:
            return []
        ids = [sid for sid, _ in hits]
        rows, masks = self.store.hits_rows(trait, ids)
        out = []
        for rank, (sid, score) in enumerate(hits, start=1):
            row, m = rows[sid], masks.get(sid)
            out.append(QueryResult(
                specimen_id=sid, rank=rank, score=float(score), path=row["path"], group=row["group_name"],
                trait_name=trait, trait_id=m.trait_id if m else None, bbox=tuple(m.bbox) if m else None,
                area=m.area if m else None, quality=m.quality if m else None, metadata=row["metadata"],
                _rle=m.rle if m else None,
            ))
        return out

    def _rerank(self, results: list[QueryResult], support: Support | None, trait: str) -> list[QueryResult]:
        """Cycle-consistency IoU of the query's trait on each candidate (SST retrieval score)."""
        scores = self.encoder.cycle_scores(support, trait, [(str(r.specimen_id), r.path) for r in results])
        for r in results:
            r.rerank_iou = float(scores.get(str(r.specimen_id), 0.0))
        return sorted(results, key=lambda r: (-r.rerank_iou, -r.score))
