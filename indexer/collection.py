"""What a collection is: a manifest CSV (ours, with a ``path`` column, or a Darwin Core
occurrence table), a Darwin Core Archive (zip, tar or folder), a IIIF Presentation manifest
or collection (URL or ``.json`` file), or a folder whose sub-folders name the groups. Media
of a table or an archive may themselves point at IIIF manifests: each is replaced by its
canvases' images. A file is recognised by its content, not its name; anything else is
refused with a message that lists these kinds.

Every item of our manifest gets a ``key`` that identifies the specimen for good: the
manifest's path relative to the manifest's folder (or to the collection folder),
normalised, so that ``./images/x.png`` and ``images/x.png`` are one key and moving or
re-mounting the whole collection keeps every id. Its ``path`` is absolute and normalised,
whatever the working directory of the run, so a catalog can be opened from anywhere.
Darwin Core items are keyed by their occurrence (:mod:`sst_search.sources.occurrences`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from sst_search.config import Config, SourcesConfig
from sst_search.images import is_image_file
from sst_search.sources import Item, SourceError, is_url, local_location, read_dwca
from sst_search.sources.archives import ARCHIVE_FORMS, archive_kind
from sst_search.sources.dwca import simple_core
from sst_search.sources.fetch import Fetcher, ImageCache
from sst_search.sources.iiif import (
    FetchJson,
    expand_manifest,
    looks_like_manifest,
    read_iiif,
)
from sst_search.sources.occurrences import occurrence_items, short_name
from sst_search.sources.table import is_darwin_core, read_rows, read_table

__all__ = ["KINDS", "CollectionError", "Item", "collection_items", "image_cache", "load_collection"]

#: The kinds of collection, for messages that refuse something else.
KINDS = ("a CSV/TSV manifest with a 'path' column; a Darwin Core table (occurrenceID or catalogNumber, "
         f"scientificName, associatedMedia, ...); a Darwin Core Archive ({ARCHIVE_FORMS}, or a folder with meta.xml); "
         "a IIIF manifest or collection (URL or .json file); or a folder whose sub-folders name the groups")
DATA_SUFFIXES = (".txt", ".csv", ".tsv", ".tab")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")
ARCHIVE_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"BZh", b"\xfd7zX")


class CollectionError(ValueError):
    """The collection itself (not one item) is unusable; names the file."""


def load_collection(source: str | Path, default_group: str | None = None, group_by: str = "scientificName",
                    fetch_json: FetchJson | None = None, limits: SourcesConfig = SourcesConfig()) -> list[Item]:
    """Items of ``source`` (see the module), in a stable order. ``group_by`` names the Darwin
    Core term (or IIIF metadata label) that picks an item's references; ``fetch_json``
    fetches manifests given by URL (``Fetcher.json``); ``limits`` bound what an archive
    may unpack to."""
    if is_url(str(source)) or str(source).lower().endswith(".json"):
        try:
            items = read_iiif(source if is_url(str(source)) else os.path.abspath(source), fetch_json, group_by)
        except SourceError as exc:
            raise CollectionError(str(exc)) from exc
        return _with_default_group(items, default_group)
    source = Path(os.path.abspath(source))
    try:
        if source.is_dir():
            items = read_dwca(source, group_by, limits) if _is_archive_folder(source) else _from_folder(source)
        elif archive_kind(source):
            items = read_dwca(source, group_by, limits)
        elif source.is_file():
            items = _from_table(source, group_by)
        else:
            raise CollectionError(f"{source}: collection not found (expected {KINDS})")
    except SourceError as exc:
        raise CollectionError(str(exc)) from exc
    items = [part for item in items for part in
             (expand_manifest(item, fetch_json, group_by) if item.source and looks_like_manifest(item.source) else [item])]
    return _with_default_group(items, default_group)


def collection_items(collection: str | Path, config: Config, db: Path, default_group: str | None = None,
                     group_by: str = "scientificName") -> list[Item]:
    """:func:`load_collection` as ``sst-search index`` runs it: manifests given by URL are
    fetched with the run's settings, archives unpacked within its limits."""
    with Fetcher(image_cache(config, db), config.fetch) as fetcher:
        return load_collection(collection, default_group=default_group, group_by=group_by, fetch_json=fetcher.json,
                               limits=config.sources)


def image_cache(config: Config, db: Path) -> ImageCache:
    """The cache of images given by URL: ``fetch.image_cache``, else ``<db>.images`` beside the store."""
    return ImageCache(config.fetch.image_cache or Path(db).with_name(Path(db).name + ".images"))


def _with_default_group(items: list[Item], default_group: str | None) -> list[Item]:
    return [replace(i, group=i.group or default_group) for i in items] if default_group else items


def _is_archive_folder(folder: Path) -> bool:
    """A Darwin Core Archive unpacked by hand: ``meta.xml``, or one core data file (+ ``eml.xml``)."""
    if (folder / "meta.xml").is_file():
        return True
    core = simple_core(folder)
    return core is not None and core.suffix.lower() in DATA_SUFFIXES


def _is_text(head: bytes) -> bool:
    """Whether a file's first bytes are UTF-8 text (a table), not some binary file."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the sample
            return False
    return b"\0" not in head


def _from_table(path: Path, group_by: str) -> list[Item]:
    """Our ``path`` manifest, else a Darwin Core occurrence table."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8192)
    except OSError as exc:
        raise CollectionError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if path.name.lower().endswith(ARCHIVE_SUFFIXES) or head.startswith(ARCHIVE_MAGIC):
        raise CollectionError(f"{path}: not a readable Darwin Core Archive (named or starting like a zip or tar "
                              f"but not one: damaged or truncated?); archives are read as {ARCHIVE_FORMS}")
    if not _is_text(head):
        raise CollectionError(f"{path}: not a collection (neither a text table nor a {ARCHIVE_FORMS} archive); "
                              f"expected {KINDS}")
    header, rows = read_rows(path)
    if "path" in header:
        return _from_manifest(path, header, rows)
    if is_darwin_core(header):
        if "group" in (short_name(h) for h in header):
            group_by = "group"
        return occurrence_items(read_table(path, group_by), path, path.parent, group_by, confined=False,
                                key_by_position=True)
    raise CollectionError(f"{path}: manifest needs a 'path' column, or Darwin Core headers such as occurrenceID, "
                          f"scientificName and associatedMedia (found {header or 'no header'}); expected {KINDS}")


def _from_manifest(path: Path, header: list[str], rows: list[tuple[int, list[str]]]) -> list[Item]:
    items = []
    for line, values in rows:
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
