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
    return items


def _from_manifest(path: Path) -> list[Item]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CollectionError(f"{path}: not a readable CSV manifest ({exc})") from exc
    if not header or "path" not in header:
        raise CollectionError(f"{path}: manifest needs a 'path' column (found {header or 'no header'})")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise CollectionError(f"{path}:1: column(s) {repeated} appear more than once; their values would overwrite each other")
    items = []
    for line, values in rows:
        if not any(v.strip() for v in values):
            continue  # blank line
        if len(values) != len(header):
            raise CollectionError(
                f"{path}:{line}: {len(values)} values for {len(header)} columns (an unquoted comma or a missing value?)"
            )
        row = dict(zip(header, values))
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
