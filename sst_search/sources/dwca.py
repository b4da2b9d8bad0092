"""Darwin Core Archives (zip or folder with ``meta.xml``) as collections: one item per image.

Archives exported by GBIF, iDigBio, Specify, Arctos or EMu carry an Occurrence core and a
Multimedia extension (GBIF Simple Multimedia or Audubon Core) pointing at the images,
usually by URL. python-dwca-reader parses ``meta.xml`` and the data files; this module only
decides what an item is. Every core term is kept verbatim as metadata (by its short name,
``scientificName``, ``catalogNumber``, ...), plus the image's own terms (licence, rights
holder, identifier). An occurrence without an image becomes a failed item that says so, not
a silent gap.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .items import Item, SourceError, is_url, local_location

log = logging.getLogger("sst_search.sources")

OCCURRENCE = "http://rs.tdwg.org/dwc/terms/Occurrence"
MULTIMEDIA = ("http://rs.gbif.org/terms/1.0/Multimedia", "http://rs.tdwg.org/ac/terms/Multimedia")
#: Where a media row keeps the image: Audubon Core's access URI first, then the identifier.
IMAGE_TERMS = ("accessURI", "identifier")
NOT_IMAGES = ("sound", "movingimage", "video", "audio", "text", "dataset")


def short_name(term: str) -> str:
    """``http://rs.tdwg.org/dwc/terms/scientificName`` -> ``scientificName``."""
    return term.rstrip("/").rsplit("/", 1)[-1].rsplit("#", 1)[-1]


def read_dwca(path: str | Path, group_by: str = "scientificName") -> list[Item]:
    """Items of the archive at ``path``; ``group_by`` is the core term naming each item's group.

    Raises :class:`SourceError` (naming the archive) when it cannot be read, has no core, or
    its core is not Occurrence; image-less occurrences become items with an ``error``.
    """
    from dwca.read import DwCAReader

    path = Path(path)
    base = path if path.is_dir() else path.parent  # relative media paths are beside the archive
    try:
        archive = DwCAReader(str(path), skip_metadata=True)
    except Exception as exc:  # the reader raises zipfile, XML, KeyError, ... for broken archives
        raise SourceError(f"{path}: not a readable Darwin Core Archive ({type(exc).__name__}: {exc})") from exc
    with archive:
        if archive.descriptor is None:
            raise SourceError(f"{path}: Darwin Core Archive has no meta.xml describing its core")
        core_type = archive.descriptor.core.type
        if core_type != OCCURRENCE:
            raise SourceError(f"{path}: core row type is {core_type!r}; only {OCCURRENCE} cores are supported")
        extension_types = [d.type for d in archive.descriptor.extensions]
        for unknown in sorted(set(extension_types) - set(MULTIMEDIA)):
            log.info("%s: extension %s holds no images; ignored", path, unknown)
        if group_by not in {short_name(t) for t in archive.descriptor.core.terms}:
            raise SourceError(f"{path}: --group-by {group_by!r} is not a term of the core "
                              f"(terms: {sorted(short_name(t) for t in archive.descriptor.core.terms)})")
        for descriptor in [archive.descriptor.core, *archive.descriptor.extensions]:
            _check_encoding(path, archive.absolute_temporary_path(descriptor.file_location), descriptor)
        items: list[Item] = []
        core_file = f"{path}:{archive.descriptor.core.file_location}"
        try:
            for row in archive:
                items.extend(_row_items(row, base, group_by, f"{core_file} row {row.position + 1}"))
        except Exception as exc:
            line = len(items)
            raise SourceError(f"{path}: malformed data after about {line} items ({type(exc).__name__}: {exc})") from exc
    return items


def _check_encoding(archive: Path, data_file: Path, descriptor) -> None:
    """:class:`SourceError` when a data file is not in the encoding ``meta.xml`` declares:
    the reader would silently turn every such byte into U+FFFD (a Latin-1 file declared
    UTF-8 stores ``Mus\ufffdum`` for ``Muséum``)."""
    import codecs

    encoding = descriptor.file_encoding
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    try:
        with open(data_file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{archive}: {descriptor.file_location} is not {encoding} as meta.xml declares "
                          f"(byte {exc.object[exc.start:exc.start + 1]!r} at offset {offset + exc.start:,}); "
                          "declare its real encoding, e.g. encoding=\"ISO-8859-1\"") from exc
    except OSError as exc:
        raise SourceError(f"{archive}: {descriptor.file_location} cannot be read ({exc})") from exc


def _row_items(row, base: Path, group_by: str, origin: str) -> list[Item]:
    core = {short_name(k): v for k, v in row.data.items() if v not in (None, "")}
    occurrence = core.get("occurrenceID") or core.get("catalogNumber") or str(row.id if row.id is not None else row.position)
    group = core.get(group_by) or None
    media = [m for m in row.extensions if m.rowtype in MULTIMEDIA]
    images: list[tuple[str, dict[str, str]]] = []
    for m in media:
        terms = {short_name(k): v for k, v in m.data.items() if v not in (None, "")}
        kind = f"{terms.get('type', '')} {terms.get('format', '')}".lower()
        location = next((terms[t] for t in IMAGE_TERMS if terms.get(t)), None)
        if location and not any(word in kind for word in NOT_IMAGES):
            images.append((location, terms))
    if not media and core.get("associatedMedia"):
        images = [(u.strip(), {}) for u in core["associatedMedia"].replace(",", "|").split("|") if u.strip()]
    if not images:
        return [Item(occurrence, None, group, core, error=f"occurrence {occurrence!r} has no image "
                     "(no Multimedia row with an image URL or path, and no associatedMedia)", origin=origin)]
    out = []
    for location, terms in images:
        metadata = dict(core)
        for term, value in terms.items():
            metadata[term if term not in core else f"media_{term}"] = value
        licence = terms.get("license") or terms.get("UsageTerms") or core.get("license")
        holder = terms.get("rightsHolder") or terms.get("Owner") or core.get("rightsHolder")
        if is_url(location):
            out.append(Item(f"{occurrence}|{location}", None, group, metadata, source=location,
                            license=licence, rights_holder=holder, origin=origin))
        else:
            key, file = local_location(location, base)
            out.append(Item(f"{occurrence}|{key}", file, group, metadata, license=licence, rights_holder=holder,
                            origin=origin))
    return out
