"""Reviewing masks: record a curator's decisions and turn a corrected specimen into a support.

Decisions are written to the live store (DuckDB allows one writer: this fails while an
indexing run holds it, and says so) and then published as a new snapshot, so the app and
``review list`` see them at once. Promoting a specimen adds it as an extra support of its
group; since a group's reference fingerprint covers its supports, the next ``index`` run
re-does that group and only that group.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import Config
from .images import ImageLoadError, load_image
from .measure import measure_label_map, resolve_scale
from .references import ReferencesError, Support, save_support, unique_stem
from .store import SPECIMEN_TRAIT, Store
from .store.review import ReviewItem, decisions, record_decision, replace_vectors, review_queue
from .store.snapshots import publish_snapshot

if TYPE_CHECKING:
    from .embed import TraitEmbedder


def default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


def decide(
    db: str | Path,
    specimen_id: int,
    trait_name: str,
    decision: str,
    reviewer: str | None = None,
    mask: np.ndarray | None = None,
    note: str | None = None,
    embedder: TraitEmbedder | None = None,
    publish: bool = True,
) -> list[str]:
    """Accept, reject or correct (with ``mask``) one trait mask of a specimen.

    A correction also re-measures the specimen and, given the index's ``embedder``,
    re-embeds the trait, so measurements and search follow the corrected mask. Returns
    what could not be refreshed (an unreadable image, no embedder), to be shown.
    """
    problems: list[str] = []
    with Store.open(db) as store:
        record_decision(store, specimen_id, trait_name, decision, reviewer or default_reviewer(), mask=mask, note=note)
        if decision == "correct":
            problems = _refresh(store, specimen_id, trait_name, embedder)
    if publish:
        publish_snapshot(db)
    return problems


def _refresh(store: Store, specimen_id: int, trait_name: str, embedder: TraitEmbedder | None) -> list[str]:
    row = store.get_specimen(specimen_id)
    try:
        image = load_image(row["path"])
    except ImageLoadError as exc:
        return [f"measurements and vector not refreshed: {exc}"]
    label_map = store.label_map(specimen_id)
    names = {m.trait_id: m.trait_name for m in store.trait_masks(specimen_id)}
    if image.shape[:2] != label_map.shape:
        return [f"{row['path']}: the image changed since indexing; measurements and vector not refreshed"]
    runs = [json.loads(r["fingerprint"] or "{}") for r in store.runs()]
    config = next((Config.model_validate(fp["config"]) for fp in reversed(runs) if "config" in fp), Config())
    scale = resolve_scale(row["metadata"] or {}, config.measure.scale_column, config.measure.pixels_per_mm)
    store.replace_measurements({specimen_id: measure_label_map(label_map, image, names, scale)})
    if embedder is None:
        return [f"the vector of {trait_name!r} still describes the earlier mask (no embedder given)"]
    trait_id = next(tid for tid, name in names.items() if name == trait_name)
    vectors = embedder.embed_traits(image, label_map, [trait_id])
    replace_vectors(store, specimen_id, {(embedder.name, trait_name): vectors[trait_id]})
    return []


def references_dir_of(store: Store) -> Path | None:
    """The references folder the latest indexing run used (recorded in its fingerprint)."""
    for run in reversed(store.runs()):
        refs = json.loads(run.get("fingerprint") or "{}").get("references_dir")
        if refs:
            return Path(refs)
    return None


def promote(
    db: str | Path,
    specimen_id: int,
    refs_dir: str | Path | None = None,
    reviewer: str | None = None,
    publish: bool = True,
) -> Support:
    """Add the specimen, with its current (possibly corrected) masks, as a support of its group.

    ``refs_dir`` defaults to the folder the last indexing run used. The support is named
    after the image, with a suffix when that name is taken; nothing is overwritten.
    """
    with Store.open(db) as store:
        row = store.get_specimen(specimen_id)
        if row is None:
            raise KeyError(f"no specimen {specimen_id} in {db}")
        if row["status"] != "indexed" or not row["group_name"]:
            raise ReferencesError(f"{row['path']}: only an indexed specimen with a group can become a support "
                                 f"(status {row['status']}, group {row['group_name']!r})")
        refs_dir = Path(refs_dir) if refs_dir is not None else references_dir_of(store)
        if refs_dir is None:
            raise ReferencesError(f"{db}: no indexing run records a references folder; pass it explicitly")
        label_map = store.label_map(specimen_id)
        masks = store.trait_masks(specimen_id)
        if label_map is None or not masks:
            raise ReferencesError(f"{row['path']}: the specimen has no trait masks to promote")
        group = row["group_name"]
        stem = unique_stem(refs_dir / group, Path(row["path"]).stem)
        support = save_support(refs_dir, group, stem, row["path"],
                               {m.trait_name: label_map == m.trait_id for m in masks})
        record_decision(store, specimen_id, SPECIMEN_TRAIT, "promote", reviewer or default_reviewer(),
                        note=support.image_path)
    if publish:
        publish_snapshot(db)
    return support


__all__ = ["ReviewItem", "decide", "decisions", "default_reviewer", "promote", "references_dir_of", "review_queue"]
