"""Deciding what a run must do: new, changed, stale, failed and deleted items.

An item is skipped only when it is already ``indexed`` with the same content hash and the
same fingerprint. The fingerprint holds everything that shapes its masks and vectors:
SAM 2 model, weights sha256, adapter, input size, propagation mode, the group's
references, the embedder, or the provided mask's own hash. Failed and ``no_reference``
items are always retried (the file or the references may have been fixed).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from sst_search.config import Config
from sst_search.references import (
    ReferencesError,
    check_group_name,
    references_fingerprint,
)
from sst_search.store import specimen_id
from sst_search.weights import resolve_sam2_weights, sha256_file

from .collection import Item
from .worker import WorkUnit, content_hash, load_supports_or_error

__all__ = ["Plan", "make_plan", "content_hash"]


@dataclass
class Plan:
    """What a run will do. ``rejected``: ``(item, reason)`` of items that cannot get a row of
    their own (a second listing of a file, a name that is not UTF-8); they count as failed.
    ``at_risk``: per cause, the paths of *indexed* items this run would remove or fail, what
    the removal guard weighs before anything is written."""

    units: list[WorkUnit]
    unchanged: int
    to_remove: list[int]
    total: int
    #: ``old_id -> (new_id, path, item_key)``: unchanged items whose file moved, or rows of an
    #: older store whose ids came from absolute paths; re-pointed without re-processing.
    moves: dict[int, tuple[int, str, str]] = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    at_risk: dict[str, list[str]] = field(default_factory=dict)
    indexed_before: int = 0

    @property
    def todo(self) -> int:
        return sum(len(u.items) for u in self.units)


def segmentation_fingerprint(config: Config) -> dict:
    """What SAM 2 contributes to a mask; the checkpoint is identified by its sha256."""
    seg = config.segmentation
    weights = resolve_sam2_weights(seg.model, seg.weights)
    fingerprint = {
        "model": seg.model,
        "weights_sha256": weights.sha256,
        "adapter_sha256": sha256_file(Path(seg.adapter)) if seg.adapter else None,
        "image_size": seg.image_size,
        "mode": seg.mode,
        "quality": seg.quality,
    }
    if seg.orientation != 0:  # only then, so stores indexed upright keep their fingerprints
        fingerprint["orientation"] = seg.orientation
    if seg.mirror:
        fingerprint["mirror"] = True
    if seg.orientation == "auto" and seg.orientation_by != "object_score":
        fingerprint["orientation_by"] = seg.orientation_by
    return fingerprint


def make_plan(
    items: list[Item],
    states: dict[int, tuple[str | None, str | None, str]],
    config: Config,
    references: Path,
    embedder_fingerprint: dict,
    masks_dir: Path | None = None,
    force: bool = False,
    hash_progress=None,
    locations: dict[int, tuple[str, str | None]] | None = None,
    corrections: dict[int, tuple[str | None, dict[int, str]]] | None = None,
) -> Plan:
    """Compare the collection with the catalog ``states`` (``Store.specimen_states()``) and
    ``locations`` (``Store.specimen_locations()``).

    An item is identified by ``specimen_id(item.key)``. An item new under its key whose bytes
    and fingerprint match a row that is leaving the collection (the file moved to another key)
    or a row an older version keyed by the absolute path takes that row over (``moves``).
    ``corrections`` (``sst_search.store.review_tables.corrections``) go with the items they belong
    to, so a re-done item keeps its reviewer-corrected masks, vectors and measurements."""
    sst = None  # resolved lazily: a run that needs no SAM 2 never touches its weights
    locations = locations or {}
    ref_fps: dict[str | None, str | None] = {}
    units: dict[str | None, WorkUnit] = {}
    unchanged = 0
    ids: dict[int, Item] = {}
    files: dict[tuple[int, int], Item] = {}
    rejected: list[tuple[str, str]] = []
    at_risk: dict[str, list[str]] = {}
    ref_errors: dict[str | None, str] = {}
    for item in items:
        if hash_progress is not None:
            hash_progress()
        try:
            item.key.encode("utf-8")
        except UnicodeEncodeError:
            shown = item.key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            rejected.append((shown, "file name is not valid UTF-8; rename the file"))
            continue
        sid = specimen_id(item.key)
        identity = _file_identity(item.path) if item.path is not None else None
        first = ids.get(sid) or (files.get(identity) if identity is not None else None)
        if first is not None:
            where = f"listed at {first.origin} and again at {item.origin}; " if item.origin else ""
            rejected.append((str(item.path or item.key),
                             f"the same file as {first.path or first.key} ({where}as {first.key!r} and {item.key!r}); "
                             "indexed once, under the first"))
            continue
        ids[sid] = item
        if identity is not None:
            files[identity] = item
    leaving: dict[str, list[int]] = {}
    for sid, (digest, _, status) in states.items():
        if sid not in ids and status == "indexed" and digest:
            leaving.setdefault(digest, []).append(sid)
    moves: dict[int, tuple[int, str, str]] = {}
    for item in ids.values():
        sid = specimen_id(item.key)
        digest = content_hash(item.path) if item.path is not None and not item.error else ""
        if item.group not in ref_fps:
            supports = load_supports_or_error(references, item.group)
            ref_fps[item.group] = None if isinstance(supports, ReferencesError) else references_fingerprint(supports)
            if isinstance(supports, ReferencesError):
                ref_errors[item.group] = str(supports)
        provided = _provided_mask(masks_dir, item)
        fp: dict = {"references": ref_fps[item.group], "embedder": embedder_fingerprint}
        if provided is not None:
            fp["mask"] = {"source": "provided", "sha256": content_hash(provided)}
        elif ref_fps[item.group] is not None:
            sst = sst or segmentation_fingerprint(config)
            fp["mask"] = {"source": "sst", **sst}
        old_sid = sid if sid in states else _predecessor(item, digest, states, locations, leaving, moves)
        old = states.get(old_sid) if old_sid is not None else None
        if old is not None and old[2] == "indexed":
            if not digest:
                at_risk.setdefault("image files are missing or unreadable", []).append(str(item.path or item.key))
            elif item.group in ref_errors:
                at_risk.setdefault(f"the references of group {item.group!r} are unusable: {ref_errors[item.group]}",
                                   []).append(str(item.path or item.key))
        if not force and old is not None and old[2] == "indexed" and old[0] == digest and old[1] and json.loads(old[1]) == fp:
            unchanged += 1
            if old_sid != sid or locations.get(old_sid) != (item.location, item.key):
                moves[old_sid] = (sid, item.location, item.key)
            continue
        unit = units.setdefault(item.group, WorkUnit(item.group, [], {}, {}, {}))
        unit.items.append(item)
        unit.specimen_ids[item.key] = sid
        unit.hashes[item.key] = digest
        unit.fingerprints[item.key] = fp
        if provided is not None:
            unit.provided_masks[item.key] = provided
        content, corrected = (corrections or {}).get(sid, (None, None))
        if corrected and content == digest:  # a correction holds for the image it was drawn on
            unit.corrections[item.key] = corrected
    to_remove = sorted(set(states) - set(ids) - set(moves))
    dropped = [sid for sid in to_remove if states[sid][2] == "indexed"]
    if dropped:
        at_risk["items are no longer in the collection"] = [str(sid) for sid in dropped]
    return Plan(
        units=_split(list(units.values()), config),
        unchanged=unchanged,
        to_remove=to_remove,
        total=len(items),
        fingerprint={"segmentation": sst, "embedder": embedder_fingerprint, "references": ref_fps},
        moves=moves,
        rejected=rejected,
        at_risk=at_risk,
        indexed_before=sum(1 for st in states.values() if st[2] == "indexed"),
    )


def _file_identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)``: the same file under two names (``./a.png``, a symlink) is one specimen."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _predecessor(item: Item, digest: str, states: dict, locations: dict, leaving: dict[str, list[int]],
                 moves: dict) -> int | None:
    """The row an item new under its key continues, if any: the row an older version wrote
    for this very file (keyed by its absolute path), else a row with the same bytes whose
    key left the collection."""
    if item.path is not None:
        try:
            legacy = specimen_id(str(item.path.resolve()))
        except (OSError, RuntimeError):  # a symlink loop: no older row can be keyed by it
            return None
        if legacy in states and legacy not in moves and locations.get(legacy, ("", None))[1] is None:
            return legacy
    candidates = [s for s in leaving.get(digest, []) if s not in moves]
    return candidates[0] if candidates else None


def _provided_mask(masks_dir: Path | None, item: Item) -> Path | None:
    if masks_dir is None or item.path is None:
        return None
    try:
        folders = [masks_dir / check_group_name(item.group)] if item.group else []
    except ReferencesError:
        folders = []
    for candidate in [*(f / f"{item.path.stem}.png" for f in folders), masks_dir / f"{item.path.stem}.png"]:
        if candidate.is_file():
            return candidate
    return None


def _split(units: list[WorkUnit], config: Config) -> list[WorkUnit]:
    """Pairwise results do not depend on each other, so groups are cut into commit-sized
    units (parallel and resumable at that grain). A chain is one pseudo-video per group
    (capped by max_chain_length), so it stays one unit of that size."""
    size = config.indexer.commit_every if config.segmentation.mode == "pairwise" else config.segmentation.max_chain_length
    out = []
    for unit in units:
        for i in range(0, len(unit.items), size):
            part = unit.items[i : i + size]
            keys = [it.key for it in part]
            out.append(
                WorkUnit(
                    unit.group, part,
                    {k: unit.specimen_ids[k] for k in keys}, {k: unit.hashes[k] for k in keys},
                    {k: unit.fingerprints[k] for k in keys},
                    {k: unit.provided_masks[k] for k in keys if k in unit.provided_masks},
                    {k: unit.corrections[k] for k in keys if k in unit.corrections},
                )
            )
    return out
