"""One collection item, and how a location written in a source becomes a stable key and an
absolute path."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


class SourceError(ValueError):
    """A collection source (manifest, archive) is unusable as a whole; names the file."""


@dataclass(frozen=True)
class Original:
    """Where the full-resolution pixels of a downsampled IIIF image are, and their size when
    the service's ``info.json`` said (``(width, height)`` of the requested region)."""

    url: str
    size: tuple[int, int] | None


@dataclass(frozen=True)
class Item:
    """One specimen image.

    ``key`` identifies the specimen for good (its id is derived from it). ``path`` is the
    absolute local file holding its pixels; for a URL item it is the cached download once
    fetched, ``None`` before. ``source`` is the URL the pixels come from, ``error`` why the
    item cannot be used (it is then recorded as failed, never dropped). ``origin`` says where
    the collection lists it (``manifest.csv:7``), so a problem with the listing names the row.
    """

    key: str
    path: Path | None
    group: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    error: str | None = None
    fetched_at: datetime | None = None
    license: str | None = None
    rights_holder: str | None = None
    origin: str | None = None
    #: The full-resolution image when ``path`` holds a downsampled one (an IIIF request at the model's size).
    original: Original | None = None

    @property
    def location(self) -> str:
        """The local file, else the URL, else the key: what messages and the catalog call it."""
        return str(self.path) if self.path is not None else self.source or self.key


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def local_location(raw: str, base: Path) -> tuple[str, Path]:
    """``(key, absolute path)`` of a file written as ``raw`` in a source living in ``base``.

    Relative paths are resolved against ``base`` (never the working directory) and
    normalised (``a/../b``, ``./b``); the key is the path relative to ``base`` when the file
    lies inside it, so it survives moving the whole collection, else the absolute path.
    """
    if raw.lower().startswith("file://"):
        raw = raw[len("file://"):]
    root = os.path.abspath(base)
    path = os.path.normpath(os.path.join(root, os.path.expanduser(raw)))
    if path == root or not path.startswith(root.rstrip(os.sep) + os.sep):
        return Path(path).as_posix(), Path(path)
    return Path(os.path.relpath(path, root)).as_posix(), Path(path)
