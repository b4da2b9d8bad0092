"""What a person calls an item in a pick list."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .fetch import iiif_base


def item_name(path: str, source: str | None, metadata: Mapping[str, str]) -> str:
    """A local file's name; for an image fetched by URL (whose cached file is named by its
    sha256, which means nothing to a curator) the URL's last part (for an IIIF image, its
    identifier), after the record's ``occurrenceID``, IIIF ``label`` or ``title`` when it has one."""
    if not source:
        return Path(path).stem
    url = iiif_base(source) or source
    image = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]) or source
    record = next((str(metadata[t]) for t in ("occurrenceID", "label", "title") if metadata.get(t)), None)
    return f"{record} · {image}" if record else image
