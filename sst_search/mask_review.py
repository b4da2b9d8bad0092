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

from .config import Config, recorded
from .images import ImageLoadError, load_image
from .measure import measure_label_map, resolve_scale
from .references import (
    MASK_SUFFIX,
    TRAITS_FILE,
    ReferencesError,
    Support,
    load_support,
    save_support,
    unique_stem,
)
from .remeasuring import remeasure
from .store import SPECIMEN_TRAIT, Store
from .store.review_tables import (
    ReviewItem,
    decisions,
    record_decision,
    review_queue,
    stale_measurements,
    trait_id_of,
)
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
        measurements, vectors = None, None
        if decision == "correct" and mask is not None:
            measurements, vectors, problems = _refreshed(store, specimen_id, trait_name, mask, embedder)
        record_decision(store, specimen_id, trait_name, decision, reviewer or default_reviewer(), mask=mask, note=note,
                        measurements=measurements, vectors=vectors)
    if publish:
        publish_snapshot(db)
    return problems


def _refreshed(store: Store, specimen_id: int, trait_name: str, mask: np.ndarray, embedder: TraitEmbedder | None
               ) -> tuple[list[dict] | None, dict | None, list[str]]:
    """The specimen's measurements and the trait's vector as they will be once ``mask`` replaces
    the trait's mask, computed before anything is written so that all of it is written at once."""
    row = store.get_specimen(specimen_id)
    if row is None:
        return None, None, []  # record_decision says so
    try:
        image = load_image(row["path"])
    except ImageLoadError as exc:
        return None, None, [f"measurements and vector not refreshed: {exc}"]
    trait_id = trait_id_of(store, specimen_id, trait_name)
    mask, stored = np.asarray(mask, dtype=bool), store.label_map(specimen_id)
    if stored is None or not image.shape[:2] == stored.shape == mask.shape:
        return None, None, [f"{row['path']}: the image changed since indexing; measurements and vector not refreshed"]
    label_map = store.label_map(specimen_id, replacing={trait_id: mask})
    names = {m.trait_id: m.trait_name for m in store.trait_masks(specimen_id)} | {trait_id: trait_name}
    config = _run_config(store)
    scale = resolve_scale(row["metadata"] or {}, config.measure.scale_column, config.measure.pixels_per_mm)
    measurements = measure_label_map(label_map, image, names, scale)
    if embedder is None:
        return measurements, None, [f"the vector of {trait_name!r} still describes the earlier mask (no embedder given)"]
    vectors = embedder.embed_traits(image, label_map, [trait_id])
    return measurements, {(embedder.name, trait_name): vectors[trait_id]}, []


def _run_config(store: Store) -> Config:
    """The configuration of the latest indexing run (its scale settings measure corrections)."""
    runs = [json.loads(r["fingerprint"] or "{}") for r in store.runs()]
    return next((recorded(Config, fp["config"], "the indexing run") for fp in reversed(runs) if "config" in fp), Config())


def remeasure_stale(store: Store) -> int:
    """Measure again the specimens whose corrected masks are newer than their measurements
    (:func:`stale_measurements`), with the latest run's scale; returns how many."""
    ids = sorted({sid for sid, _ in stale_measurements(store.con)})
    if not ids:
        return 0
    config = _run_config(store)
    measured, _ = remeasure(store, config.measure.scale_column, config.measure.pixels_per_mm, specimen_ids=ids)
    return measured


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
        wanted = {m.trait_name: label_map == m.trait_id for m in masks}
        earlier = _promoted(store, specimen_id, wanted)
        if earlier is not None:
            return earlier  # the same masks promoted again: nothing to add
        stem = unique_stem(refs_dir / group, Path(row["path"]).stem)
        support = save_support(refs_dir, group, stem, row["path"], wanted)
        record_decision(store, specimen_id, SPECIMEN_TRAIT, "promote", reviewer or default_reviewer(),
                        note=support.image_path)
    if publish:
        publish_snapshot(db)
    return support


def _promoted(store: Store, specimen_id: int, masks: dict[str, np.ndarray]) -> Support | None:
    """The support an earlier promotion of the specimen made, if it is still there and holds
    exactly ``masks``; a specimen corrected since is promoted anew."""
    earlier = next((d["note"] for d in decisions(store, specimen_id)
                    if d["decision"] == "promote" and d["trait_name"] == SPECIMEN_TRAIT and d["note"]), None)
    if earlier is None:
        return None
    image = Path(earlier)
    try:
        support = load_support(image, image.with_name(image.stem + MASK_SUFFIX), image.parent / TRAITS_FILE)
    except ReferencesError:
        return None
    held = {support.traits[t].name: support.mask == t for t in support.trait_ids}
    same = held.keys() == masks.keys() and all(np.array_equal(held[n], masks[n]) for n in masks)
    return support if same else None


__all__ = ["ReviewItem", "decide", "decisions", "default_reviewer", "promote", "references_dir_of", "review_queue"]
