"""What a collection is: a manifest CSV, a Darwin Core Archive, a IIIF Presentation manifest
or collection (URL or ``.json`` file), or a folder whose sub-folders name the groups. Media
of a manifest CSV or an archive may themselves point at IIIF manifests: each is replaced by
its canvases' images.

Every item gets a ``key`` that identifies the specimen for good: the manifest's path
relative to the manifest's folder (or to the collection folder), normalised, so that
``./images/x.png`` and ``images/x.png`` are one key and moving or re-mounting the whole
collection keeps every id. Its ``path`` is absolute and normalised, whatever the working
directory of the run, so a catalog can be opened from anywhere.
"""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path

from sst_search.images import is_image_file
from sst_search.sources import Item, SourceError, is_url, local_location, read_dwca
from sst_search.sources.iiif import FetchJson, expand_manifest, looks_like_manifest, read_iiif

__all__ = ["CollectionError", "Item", "load_collection"]


class CollectionError(ValueError):
    """The collection itself (not one item) is unusable; names the file."""


def load_collection(source: str | Path, default_group: str | None = None, group_by: str = "scientificName",
                    fetch_json: FetchJson | None = None) -> list[Item]:
    """Items of a manifest CSV, a Darwin Core Archive (zip or folder with ``meta.xml``), a IIIF
    manifest or collection, or a folder of group sub-folders, in a stable order. ``group_by``
    names the Darwin Core term (or IIIF metadata label) that picks an item's references;
    ``fetch_json`` fetches manifests given by URL (``Fetcher.json``)."""
    if is_url(str(source)) or str(source).lower().endswith(".json"):
        try:
            items = read_iiif(source if is_url(str(source)) else os.path.abspath(source), fetch_json, group_by)
        except SourceError as exc:
            raise CollectionError(str(exc)) from exc
        return _with_default_group(items, default_group)
    source = Path(os.path.abspath(source))
    if source.is_dir() and not (source / "meta.xml").is_file():
        items = _from_folder(source)
    elif source.is_dir() or (source.is_file() and source.suffix.lower() == ".zip"):
        try:
            items = read_dwca(source, group_by=group_by)
        except SourceError as exc:
            raise CollectionError(str(exc)) from exc
    elif source.is_file():
        items = _from_manifest(source)
    else:
        raise CollectionError(f"{source}: collection not found (expected a manifest CSV, a Darwin Core Archive, "
                              "a IIIF manifest or a folder)")
    items = [part for item in items for part in
             (expand_manifest(item, fetch_json, group_by) if item.source and looks_like_manifest(item.source) else [item])]
    return _with_default_group(items, default_group)


def _with_default_group(items: list[Item], default_group: str | None) -> list[Item]:
    return [replace(i, group=i.group or default_group) for i in items] if default_group else items


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
        group = (row.get("group") or "").strip() or None
        metadata = {k: v for k, v in row.items() if k not in ("path", "group") and k is not None and v not in (None, "")}
        licence = metadata.get("license") or metadata.get("dcterms:license")
        holder = metadata.get("rightsHolder") or metadata.get("dcterms:rightsHolder")
        if is_url(raw):
            items.append(Item(raw, None, group, metadata, source=raw, license=licence, rights_holder=holder,
                              origin=f"{path}:{line}"))
        else:
            key, file = local_location(raw, path.parent)
            items.append(Item(key, file, group, metadata, license=licence, rights_holder=holder, origin=f"{path}:{line}"))
    return items


def _from_folder(root: Path) -> list[Item]:
    items = []
    for file in sorted(root.rglob("*")):
        if not is_image_file(file) or file.name.endswith(".mask.png"):
            continue
        rel = file.relative_to(root)
        group = rel.parts[0] if len(rel.parts) > 1 else None
        items.append(Item(rel.as_posix(), file, group, origin=str(file)))
    return items
