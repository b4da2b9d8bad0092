"""Darwin Core occurrences, however they arrived (an archive's core and Multimedia rows, a
plain CSV/TSV table), turned into items: one per image.

This is where the rules both forms share live, so an occurrence means the same thing in a
zip from GBIF and in the spreadsheet a collection database exports:

- an occurrence's images are its Multimedia rows, else its ``associatedMedia`` (several
  separated by ``|``, or by ``;`` or ``,`` when every part is a URL or an image file), else
  its own Audubon Core ``accessURI`` or an image ``identifier``;
- its key is ``occurrenceID``, else ``catalogNumber``, else the core id, else its row in the
  core file: never empty. Two occurrences with one key would silently share a specimen id,
  so the whole source is refused, naming the rows;
- its group is the ``group_by`` term; for ``scientificName`` without the authorship
  (GBIF's "Lycorma delicatula (White, 1845)" picks the folder ``Lycorma delicatula``);
- a source that references no image at all is refused with one message (a GBIF download
  without multimedia gives hundreds of rows and no pixels), instead of one failure a row.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sst_search.images import IMAGE_SUFFIXES

from .items import Item, SourceError, is_url, local_location

#: What the refusal of a source without images tells a user to get instead.
HOW_TO_GET_IMAGES = ("ask for a download with images: on GBIF, an occurrence download in 'Darwin Core Archive' "
                     "form of records with multimedia (it adds the Multimedia extension), or add an "
                     "associatedMedia column with image URLs or paths")
NOT_IMAGES = ("sound", "movingimage", "video", "audio", "text", "dataset")
_RANKS = {"subsp.", "ssp.", "var.", "subvar.", "f.", "forma", "cf.", "aff.", "x", "×", "agg.", "sp.", "spp."}


@dataclass(frozen=True)
class Occurrence:
    """One core row: its terms by short name (empty values dropped), its Multimedia rows,
    its core id, and where it is written (``row`` counts data rows from 1)."""

    terms: dict[str, str]
    media: list[dict[str, str]] = field(default_factory=list)
    core_id: str | None = None
    row: int = 0
    origin: str = ""

    @property
    def key(self) -> str:
        t = self.terms
        return t.get("occurrenceID") or t.get("catalogNumber") or self.core_id or f"row {self.row}"


def short_name(term: str) -> str:
    """``http://rs.tdwg.org/dwc/terms/scientificName``, ``dwc:scientificName`` -> ``scientificName``."""
    name = term.strip().rstrip("/").rsplit("/", 1)[-1].rsplit("#", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else name


def name_without_authorship(name: str, authorship: str | None = None) -> str:
    """The scientific name without its author and year: the record's own
    ``scientificNameAuthorship`` when it ends the name, else everything from the first word
    that cannot belong to a name (capitalised after the genus, a parenthesis, a digit); a
    subgenus is left out too, so the name is the one reference folders are called by."""
    name = " ".join(name.split())
    if authorship and name.endswith(authorship.strip()) and len(name) > len(authorship.strip()):
        return name[: -len(authorship.strip())].strip()
    words = name.split(" ")
    kept = words[:1]
    for word in words[1:]:
        if len(kept) == 1 and re.fullmatch(r"\([A-Z][a-z-]+\)", word):
            continue  # a subgenus, left out as GBIF's canonical name leaves it out
        if not (word.islower() or word in _RANKS) or not re.fullmatch(r"[^\W\d_][\w.×-]*", word):
            break
        kept.append(word)
    while len(kept) > 1 and kept[-1] in {"de", "van", "von", "du", "da", "der", "den", "le", "la", "ex", "in", "et"}:
        kept.pop()  # a lower-case particle starting the authorship ("de Geer")
    return " ".join(kept)


def split_media(value: str) -> list[str]:
    """``associatedMedia``'s images: split by ``|`` (what the Darwin Core guide recommends),
    else by ``;`` or ``,`` only when every part then is a URL or an image file; otherwise the
    value is one image (an IIIF URL holds commas: ``.../full/!512,512/0/default.jpg``)."""
    if "|" in value:
        return [p.strip() for p in value.split("|") if p.strip()]
    for sep in (";", ","):
        parts = [p.strip() for p in value.split(sep) if p.strip()]
        if len(parts) > 1 and (all(is_url(p) for p in parts)
                               or not any(is_url(p) for p in parts) and all(_is_image_name(p) for p in parts)):
            return parts
    return [value.strip()] if value.strip() else []


def _is_image_name(text: str) -> bool:
    return text.lower().rsplit("?", 1)[0].endswith(IMAGE_SUFFIXES)


def _images(o: Occurrence) -> list[tuple[str, dict[str, str]]]:
    if o.media:
        images = []
        for terms in o.media:
            if not any(word in f"{terms.get('type', '')} {terms.get('format', '')}".lower() for word in NOT_IMAGES):
                location = terms.get("accessURI") or terms.get("identifier")
                if location:
                    images.append((location, terms))
        return images
    if o.terms.get("associatedMedia"):
        return [(m, {}) for m in split_media(o.terms["associatedMedia"])]
    if o.terms.get("accessURI"):
        return [(o.terms["accessURI"], {})]
    identifier = o.terms.get("identifier", "")
    kind = f"{o.terms.get('type', '')} {o.terms.get('format', '')}".lower()
    if identifier and ("image" in kind or _is_image_name(identifier)):
        return [(identifier, {})]
    return []


def refuse_duplicates(source: Path | str, what: str, values: list[tuple[str, int]]) -> None:
    """Refuse ``source`` when one of ``values`` (``(value, row)``) is on several rows, naming them."""
    rows: dict[str, list[int]] = defaultdict(list)
    for value, row in values:
        rows[value].append(row)
    repeated = {v: r for v, r in rows.items() if len(r) > 1}
    if repeated:
        shown = "; ".join(f"{v!r} on rows {', '.join(map(str, r))}" for v, r in list(repeated.items())[:5])
        more = f" (and {len(repeated) - 5} more)" if len(repeated) > 5 else ""
        raise SourceError(f"{source}: {len(repeated)} {what} appear on several rows: {shown}{more}; "
                          "each occurrence needs its own, or they would be merged into one specimen")


def occurrence_items(occurrences: list[Occurrence], source: Path | str, base: Path, group_by: str,
                     confined: bool, key_by_position: bool) -> list[Item]:
    """One item per image of every occurrence; an occurrence without an image is one failed item.

    Local media resolve against ``base``. ``confined`` (an archive) refuses, per row, media
    that lie outside ``base`` (``file:///etc/...``, ``../../x``): an archive handed over by
    someone else must not read the rest of the disk. Item keys are the occurrence key plus
    the image's position when it has several (``key_by_position``) or the image's location.
    """
    refuse_duplicates(source, "core ids", [(o.core_id, o.row) for o in occurrences if o.core_id])
    refuse_duplicates(source, "occurrence keys (occurrenceID, else catalogNumber)", [(o.key, o.row) for o in occurrences])
    if not occurrences:
        raise SourceError(f"{source}: holds no occurrences (its core has no data rows)")
    found = [(o, _images(o)) for o in occurrences]
    if not any(images for _, images in found):
        raise SourceError(f"{source}: no images are referenced: none of its {len(occurrences)} occurrences has a "
                          f"Multimedia row, an associatedMedia value or an accessURI; {HOW_TO_GET_IMAGES}")
    items: list[Item] = []
    for o, images in found:
        group = o.terms.get(group_by) or None
        if group and group_by == "scientificName":
            group = name_without_authorship(group, o.terms.get("scientificNameAuthorship"))
        if not images:
            items.append(Item(o.key, None, group, dict(o.terms), origin=o.origin,
                              error=f"occurrence {o.key!r} has no image (no Multimedia row with an image URL or path, "
                                    "and no associatedMedia)"))
            continue
        for n, (location, terms) in enumerate(images, start=1):
            metadata = dict(o.terms)
            for term, value in terms.items():
                metadata[term if term not in o.terms else f"media_{term}"] = value
            licence = terms.get("license") or terms.get("UsageTerms") or o.terms.get("license")
            holder = terms.get("rightsHolder") or terms.get("Owner") or o.terms.get("rightsHolder")
            common = dict(group=group, metadata=metadata, license=licence, rights_holder=holder, origin=o.origin)
            suffix = (f"|{n}" if len(images) > 1 else "") if key_by_position else None
            if is_url(location):
                items.append(Item(o.key + (suffix if suffix is not None else f"|{location}"), None, source=location,
                                  **common))
                continue
            key, file = local_location(location, base)
            error = None
            if confined and Path(key).is_absolute():
                error = (f"{o.origin}: media {location!r} lies outside the archive's folder {base}; refused "
                         "(an archive may only reference files beside it or URLs)")
            items.append(Item(o.key + (suffix if suffix is not None else f"|{key}"), None if error else file,
                              error=error, **common))
    return items
