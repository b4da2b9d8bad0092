"""What a collection is: a manifest CSV or a folder whose sub-folders name the groups."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from sst_search.images import is_image_file


class CollectionError(ValueError):
    """The collection itself (not one item) is unusable; names the file."""


@dataclass(frozen=True)
class Item:
    """One specimen image. ``key`` is stable across runs (the path as written in the
    manifest, or relative to the collection folder) and identifies the specimen."""

    key: str
    path: Path
    group: str | None
    metadata: dict[str, str] = field(default_factory=dict)


def load_collection(source: str | Path, default_group: str | None = None) -> list[Item]:
    """Items of a manifest CSV or a folder of group sub-folders, in a stable order."""
    source = Path(source)
    if source.is_dir():
        items = _from_folder(source)
    elif source.is_file():
        items = _from_manifest(source)
    else:
        raise CollectionError(f"{source}: collection not found (expected a manifest CSV or a folder)")
    if default_group:
        items = [Item(i.key, i.path, i.group or default_group, i.metadata) for i in items]
    keys = [i.key for i in items]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise CollectionError(f"{source}: the same image is listed more than once: {dupes[:5]}")
    return items


def _from_manifest(path: Path) -> list[Item]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CollectionError(f"{path}: not a readable CSV manifest ({exc})") from exc
    if not rows or "path" not in rows[0]:
        raise CollectionError(f"{path}: manifest needs a 'path' column (found {list(rows[0]) if rows else 'no rows'})")
    items = []
    for line, row in enumerate(rows, start=2):
        raw = (row.get("path") or "").strip()
        if not raw:
            raise CollectionError(f"{path}:{line}: empty 'path'")
        file = Path(raw) if Path(raw).is_absolute() else path.parent / raw
        group = (row.get("group") or "").strip() or None
        metadata = {k: v for k, v in row.items() if k not in ("path", "group") and k is not None and v not in (None, "")}
        items.append(Item(raw, file, group, metadata))
    return items


def _from_folder(root: Path) -> list[Item]:
    items = []
    for file in sorted(root.rglob("*")):
        if not is_image_file(file) or file.name.endswith(".mask.png"):
            continue
        rel = file.relative_to(root)
        group = rel.parts[0] if len(rel.parts) > 1 else None
        items.append(Item(rel.as_posix(), file, group))
    return items
