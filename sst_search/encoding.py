"""Query encoding: an uploaded photo or a text to a trait vector, and cycle-consistency re-ranking.

The encoder owns the models a search needs beyond the index itself (SAM 2 to segment an
upload against its group's references, the embedder the index was built with). They are
built on first use from the configuration the indexing run recorded, through
:mod:`sst_search.builder`, or handed in already built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .builder import embedder_from_config, tracker_from_config
from .config import Config, recorded
from .embed import NoTextTowerError
from .errors import QueryError
from .references import (
    ReferencesError,
    Support,
    Trait,
    check_group_name,
    load_group_references,
)
from .store import SPECIMEN_TRAIT


class QueryEncoder:
    """Turns what a user searches with into vectors, the way the index was built.

    ``run`` is the fingerprint the indexing run recorded (its ``config`` says how to build
    the models; its SAM 2 weights digest guards against a different checkpoint).
    """

    def __init__(self, run: dict, tracker=None, embedder=None, references: Path | None = None,
                 weights: str | None = None) -> None:
        self.run = run
        self._tracker = tracker
        #: SAM 2 checkpoint given where the app runs (``sst-search ui --weights``), over the recorded one.
        self._weights = weights
        self._embedder = embedder
        self._explicit_references = Path(references) if references else None
        recorded = run.get("references_dir")
        self.references = self._explicit_references or (Path(recorded) if recorded else None)

    def for_run(self, run: dict) -> QueryEncoder:
        """The same models and references, following a newer snapshot's recorded run."""
        return QueryEncoder(run, self._tracker, self._embedder, self._explicit_references, self._weights)

    @property
    def config(self) -> Config:
        if "config" not in self.run:
            raise QueryError("this index records no configuration; pass tracker= and embedder= explicitly")
        config = recorded(Config, self.run["config"], "the indexing run")
        if self._weights:
            config.segmentation = config.segmentation.model_copy(update={"weights": self._weights})
        return config

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = embedder_from_config(self.config.embedding)
        return self._embedder

    @property
    def tracker(self):
        if self._tracker is None:
            self._tracker = tracker_from_config(self.config.segmentation)
            recorded = (self.run.get("segmentation") or {}).get("weights_sha256")
            if recorded and self._tracker.weights.sha256 != recorded:
                raise QueryError(
                    f"the index was built with SAM 2 weights {recorded}, but {self._tracker.weights.sha256} "
                    "resolved now; point --weights at the original checkpoint"
                )
        return self._tracker

    def supports(self, group: str) -> list[Support]:
        if self.references is None:
            raise QueryError("no references folder known for this index; pass references=")
        try:
            return load_group_references(self.references / check_group_name(group))
        except ReferencesError as exc:
            raise QueryError(f"cannot segment an upload for group {group!r}: {exc}") from exc

    def text_vector(self, text: str) -> np.ndarray:
        try:
            return self.embedder.embed_text(text)
        except NoTextTowerError as exc:
            raise QueryError(str(exc)) from exc

    def upload_vector(self, image: np.ndarray, trait: str, group: str | None) -> tuple[np.ndarray, Support | None]:
        """The upload's ``trait`` vector, and the upload as a support for re-ranking (None for the whole specimen)."""
        if trait == SPECIMEN_TRAIT:
            return self.embedder.embed_image(image), None
        if group is None:
            raise QueryError("searching a trait by an uploaded photo needs its group (species) to segment it")
        supports = self.supports(group)
        names = {tid: t.name for s in supports for tid, t in s.traits.items()}
        ids = [tid for tid, name in names.items() if name == trait]
        if not ids:
            raise QueryError(f"group {group!r} has no trait {trait!r}; its traits: {sorted(names.values())}")
        (result,) = list(self.tracker.segment(supports, [("upload", image)]))
        if result.error:
            raise QueryError(result.error)
        vectors = self.embedder.embed_traits(image, result.label_map, ids)
        if ids[0] not in vectors:
            raise QueryError(f"the {trait!r} trait was not found on the uploaded photo")
        return vectors[ids[0]], make_support("upload", image, result.label_map, names)

    def cycle_scores(self, support: Support | None, trait: str, candidates: Sequence[tuple[str, str]]) -> dict[str, float]:
        """Cycle-consistency IoU of the query's ``trait`` on each ``(id, image path)`` candidate
        (SST retrieval score): tracked into the candidate and back onto the query."""
        if trait == SPECIMEN_TRAIT or support is None:
            raise QueryError("re-ranking needs a trait (not the whole specimen) on a query with masks")
        tid = next((t for t, tr in support.traits.items() if tr.name == trait), None)
        if tid is None or tid not in support.trait_ids:
            raise QueryError(f"the query has no {trait!r} mask to re-rank with")
        single = make_support(support.id, support.image, np.where(support.mask == tid, tid, 0).astype(np.uint8),
                              {t: tr.name for t, tr in support.traits.items()})
        return {res.query_id: res.quality.get(tid, 0.0) if res.error is None else 0.0
                for res in self.tracker.segment([single], list(candidates), quality=True)}


def make_support(sid: str, image: np.ndarray, label_map: np.ndarray, names: dict[int, str]) -> Support:
    """A support made of an image and its label map (a query specimen or an upload)."""
    return Support(sid, image, label_map, {t: Trait(id=t, name=n) for t, n in names.items()})
