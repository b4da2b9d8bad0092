"""IIIF Presentation manifests (API 2 and 3) and collections of them as collections: one item
per canvas image.

Museums publish a specimen's photographs as a manifest: a list of canvases, each painted
by an image from an IIIF image service, with the record's label, metadata and rights.
Every canvas image becomes an item whose source is its image service's ``info.json`` (so
it is fetched at the model's size, :mod:`sst_search.sources.fetch`), or the image's own URL
when it has no service. The manifest's label, ``metadata`` pairs, rights and attribution
are kept as the item's metadata, licence and rights holder. A collection's manifests are
read in turn; one that cannot be read becomes a failed item naming it, and the rest goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .items import Item, SourceError, is_url

#: Fetches the JSON document at a URL (``Fetcher.json``); raises on failure.
FetchJson = Callable[[str], dict]
MANIFEST_TYPES = ("sc:Manifest", "Manifest")
COLLECTION_TYPES = ("sc:Collection", "Collection")


def looks_like_manifest(location: str) -> bool:
    """Whether a media URL names a Presentation manifest rather than an image (by its path,
    as aggregators write them: ``.../manifest``, ``.../manifest.json``)."""
    path = location.split("?", 1)[0].rstrip("/").lower()
    return is_url(location) and (path.endswith(("/manifest", "/manifest.json", ".manifest.json")))


def read_iiif(location: str | Path, fetch_json: FetchJson | None, group_by: str = "scientificName") -> list[Item]:
    """Items of the manifest or collection at ``location`` (a URL or a local ``.json`` file).

    Raises :class:`SourceError` naming it when the document itself is unusable (unreadable,
    not JSON, neither a manifest nor a collection, no canvases)."""
    doc = _load(str(location), fetch_json)
    return _items_of(doc, str(location), fetch_json, group_by, prefix=None, seen=set())


def expand_manifest(item: Item, fetch_json: FetchJson | None, group_by: str = "scientificName") -> list[Item]:
    """The canvas images of the manifest an item's media URL points at, keyed
    ``<item key>#<canvas id>`` and carrying the item's own metadata (which wins over the
    manifest's); an unreadable manifest leaves the item failed with the reason."""
    try:
        doc = _load(str(item.source), fetch_json)
        items = _items_of(doc, str(item.source), fetch_json, group_by, prefix=item.key, seen=set())
    except SourceError as exc:
        return [Item(item.key, None, item.group, item.metadata, source=item.source, error=str(exc), origin=item.origin)]
    return [Item(i.key, None, item.group or i.group, {**i.metadata, **item.metadata}, source=i.source, error=i.error,
                 license=item.license or i.license, rights_holder=item.rights_holder or i.rights_holder,
                 origin=item.origin) for i in items]


def _load(location: str, fetch_json: FetchJson | None) -> dict:
    if is_url(location):
        if fetch_json is None:
            raise SourceError(f"{location}: a manifest by URL needs fetching, which this command does not do")
        try:
            return fetch_json(location)
        except Exception as exc:  # FetchError and friends: the message says why
            raise SourceError(f"{location}: manifest not fetched: {exc}") from exc
    try:
        doc = json.loads(Path(location).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"{location}: not a readable IIIF manifest ({type(exc).__name__}: {exc})") from exc
    if not isinstance(doc, dict):
        raise SourceError(f"{location}: not a IIIF manifest (the JSON is a {type(doc).__name__}, not an object)")
    return doc


def _kind(doc: dict) -> str | None:
    kind = doc.get("type") or doc.get("@type")
    return "manifest" if kind in MANIFEST_TYPES else "collection" if kind in COLLECTION_TYPES else None


def _items_of(doc: dict, where: str, fetch_json: FetchJson | None, group_by: str, prefix: str | None,
              seen: set[str]) -> list[Item]:
    kind = _kind(doc)
    if kind is None:
        raise SourceError(f"{where}: not a IIIF Presentation manifest or collection "
                          f"(type {doc.get('type') or doc.get('@type')!r}; expected Manifest or Collection)")
    if kind == "manifest":
        return _manifest_items(doc, where, group_by, prefix)
    items: list[Item] = []
    members = [*doc.get("manifests", []), *doc.get("collections", []), *doc.get("members", []), *doc.get("items", [])]
    for member in members:
        ref = _id(member) if isinstance(member, dict) else member if isinstance(member, str) else None
        if not ref:
            raise SourceError(f"{where}: collection member without an id: {str(member)[:120]}")
        if ref in seen:
            continue  # a collection listing itself or a manifest twice
        seen.add(ref)
        try:
            member_doc = member if isinstance(member, dict) and _canvases(member) else _load(ref, fetch_json)
            items.extend(_items_of(member_doc, ref, fetch_json, group_by, prefix, seen))
        except SourceError as exc:
            items.append(Item(ref, None, None, {"manifest": ref}, source=ref, error=str(exc), origin=where))
    return items


def _manifest_items(doc: dict, where: str, group_by: str, prefix: str | None) -> list[Item]:
    manifest_id = _id(doc) or where
    metadata = {"manifest": manifest_id}
    if _text(doc.get("label")):
        metadata["label"] = _text(doc.get("label"))
    for pair in doc.get("metadata") or []:
        if isinstance(pair, dict) and _text(pair.get("label")) and _text(pair.get("value")):
            metadata[_text(pair.get("label"))] = _text(pair.get("value"))
    licence = doc.get("rights") or _text(doc.get("license"))
    holder = _text((doc.get("requiredStatement") or {}).get("value")) if isinstance(doc.get("requiredStatement"), dict) \
        else _text(doc.get("attribution"))
    canvases = _canvases(doc)
    if not canvases:
        raise SourceError(f"{where}: manifest has no canvases (no 'items' in API 3, no 'sequences[].canvases' in API 2)")
    items = []
    for n, canvas in enumerate(canvases, start=1):
        canvas_id = _id(canvas) if isinstance(canvas, dict) else None
        origin = f"{where} canvas {n}"
        if not canvas_id:
            raise SourceError(f"{origin}: canvas without an id")
        meta = dict(metadata, canvas=canvas_id)
        if _text(canvas.get("label")):
            meta["canvas_label"] = _text(canvas.get("label"))
        group = meta.get(group_by) or None
        images = _canvas_images(canvas)
        key = f"{prefix}#{canvas_id}" if prefix else canvas_id
        if not images:
            items.append(Item(key, None, group, meta, error=f"{origin} ({canvas_id}) has no image", origin=origin))
        for i, url in enumerate(images):
            items.append(Item(key if i == 0 else f"{key}#{i + 1}", None, group, meta, source=url,
                              license=licence if isinstance(licence, str) else None, rights_holder=holder or None,
                              origin=origin))
    return items


def _canvases(doc: dict) -> list:
    if _kind(doc) != "manifest":
        return []
    if "sequences" in doc:  # API 2
        return [c for seq in doc.get("sequences") or [] if isinstance(seq, dict) for c in seq.get("canvases") or []]
    return [c for c in doc.get("items") or [] if isinstance(c, dict) and c.get("type", "Canvas") == "Canvas"]


def _canvas_images(canvas: dict) -> list[str]:
    """The image URL to fetch for each image painted on the canvas: its service's
    ``info.json`` when it has one (fetched at the model's size), else the image itself."""
    if "images" in canvas:  # API 2: images[].resource
        bodies = [a.get("resource") for a in canvas.get("images") or [] if isinstance(a, dict)]
    else:  # API 3: items[] (AnnotationPage) -> items[] (Annotation, painting) -> body
        bodies = [a.get("body") for page in canvas.get("items") or [] if isinstance(page, dict)
                  for a in page.get("items") or [] if isinstance(a, dict) and a.get("motivation", "painting") == "painting"]
    urls = []
    for body in bodies:
        for b in body if isinstance(body, list) else (body.get("items") or [body]) if isinstance(body, dict) else []:
            if not isinstance(b, dict):
                continue
            services = b.get("service") or []
            service = next((_id(s) for s in (services if isinstance(services, list) else [services])
                            if isinstance(s, dict) and _id(s)), None)
            url = f"{service.rstrip('/')}/info.json" if service else _id(b)
            if url:
                urls.append(url)
                break  # a Choice of several versions: the first is the default
    return urls


def _id(node: dict) -> str | None:
    value = node.get("id") or node.get("@id")
    return value if isinstance(value, str) and value else None


def _text(value) -> str:
    """A label or value as plain text: API 2 strings or ``{"@value"}`` lists, API 3 language maps."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return "; ".join(t for t in (_text(v) for v in value) if t)
    if isinstance(value, dict):
        if "@value" in value:
            return _text(value["@value"])
        texts = value.get("en") or value.get("none") or next(iter(value.values()), [])
        return _text(texts)
    return str(value)
