"""What a person calls an item: in a pick list, in a file made from it, in an error message."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .fetch import iiif_base
from .items import is_url


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


def image_stem(path: str, source: str | None) -> str:
    """The stem files made from an image are named after: a local file's stem; for an image
    fetched by URL, the URL's last part without its suffix (for an IIIF image, its identifier),
    made safe for a file name, never the cached file's sha256."""
    if not source:
        return Path(path).stem
    url = iiif_base(source) or source
    last = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    stem = Path(last).stem or urlsplit(url).netloc
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)


def unique_stems(images: Iterable[tuple[str, str | None]]) -> list[str]:
    """:func:`image_stem` of each ``(path, source)``, a repeated stem numbered ``<stem>-2``,
    ``<stem>-3``... in order, so files written side by side never overwrite each other."""
    seen: dict[str, int] = {}
    out = []
    for path, source in images:
        stem = image_stem(path, source)
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


def url_of_key(key: str) -> str | None:
    """The URL an item key names (``<url>``, or ``<occurrence>|<url>`` from an archive), else None."""
    location = key.rsplit("|", 1)[-1]
    return location if is_url(location) else None


def record_name(metadata: Mapping[str, str], key: str | None) -> str:
    """What a curator calls the record an item comes from: its occurrenceID, else catalogNumber, else its key."""
    return next((str(metadata[t]) for t in ("occurrenceID", "catalogNumber") if metadata.get(t)), None) or str(key)


def url_failure(error: str, path: str, url: str, record: str) -> str:
    """An image fetched by URL failed: say so by its URL and record, not by the cached file
    (a sha256 under the image cache means nothing to whoever fixes the image)."""
    if path == url:  # never fetched: the message already names the URL
        return f"{error} (record {record})"
    reason = error[len(path) + 2:] if error.startswith(f"{path}: ") else error
    return f"{url}: {reason.replace(path, 'the downloaded file')} (record {record})"
