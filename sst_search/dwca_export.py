"""Darwin Core Archives of an index that a museum or GBIF can take back in.

The archive holds one Occurrence core row per *occurrence* (several images of one specimen
are one row), with every term its source gave, verbatim; a GBIF Simple Multimedia extension
with one row per image (licence and rights holder included); a MeasurementOrFact extension
whose rows point at their occurrence (``coreid``) and name the image (``dcterms:source``) and
trait (``measurementType``, ``measurementRemarks``) they were measured on; and ``eml.xml``
recording the software, models, weights and references behind the masks and vectors.

Nothing is invented: a term is written only where the source gave it (no ``basisOfRecord``
by default), except ``scientificName``, which falls back to the item's group, the name the
collection was sorted under. ``associatedMedia`` is kept verbatim when the source had it and
never made up: the images are in the extension.

Where an image's terms come from. An item read from a Darwin Core Archive keeps its core and
media terms in one metadata dict, a media term clashing with a core one prefixed ``media_``
(:mod:`sst_search.sources.dwca`). A term is therefore the image's when it is prefixed, or when
it is a Simple Multimedia / Audubon Core term and the item came from a media row (it carries
an ``identifier`` or ``accessURI``). A term both row types define (``license``,
``rightsHolder``, ``type``) given only once cannot be told apart after reading; it goes with
the image, where the app and crops already use it.

Naming an image (a media row's ``identifier``): the source's own identifier; else the URL of
its full-resolution image (an IIIF image is fetched at the model's size), else the URL it was
fetched from; else its path relative to the collection folder (the item's key).
An absolute local path is never written: an image outside the collection folder is named
by its file name.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePath
from urllib.parse import quote
from xml.sax.saxutils import escape

import numpy as np

from . import __version__
from .store import Store

DWC = "http://rs.tdwg.org/dwc/terms/"
DCTERMS = "http://purl.org/dc/terms/"
AC = "http://rs.tdwg.org/ac/terms/"
XMP_RIGHTS = "http://ns.adobe.com/xap/1.0/rights/"
OCCURRENCE = DWC + "Occurrence"
MULTIMEDIA = "http://rs.gbif.org/terms/1.0/Multimedia"
MEASUREMENT = DWC + "MeasurementOrFact"
#: Terms of GBIF's Simple Multimedia extension (all Dublin Core terms).
SIMPLE_MULTIMEDIA = ("type", "format", "identifier", "references", "title", "description", "created", "creator",
                     "contributor", "publisher", "audience", "source", "license", "rightsHolder")
#: Audubon Core terms an image row may carry (besides the Dublin Core ones), with their namespaces.
AUDUBON = {**{t: AC for t in ("accessURI", "metadataLanguage", "subjectPart", "subjectOrientation", "caption",
                              "providerLiteral", "derivedFrom", "hashFunction", "hashValue", "variantLiteral",
                              "furtherInformationURL", "associatedSpecimenReference", "tag", "comments")},
           **{t: XMP_RIGHTS for t in ("UsageTerms", "Owner", "WebStatement")},
           "PixelXDimension": "http://ns.adobe.com/exif/1.0/", "PixelYDimension": "http://ns.adobe.com/exif/1.0/"}
MEDIA_TERMS = frozenset(SIMPLE_MULTIMEDIA) | frozenset(AUDUBON)
#: Terms naming where a media row's image is: an item holding one came from a media row.
MEDIA_LOCATORS = ("identifier", "accessURI")
#: A metadata key without a known namespace (a manifest column, an IIIF metadata label) keeps
#: its name under this one, so no column is dropped and none poses as a Darwin Core term.
LOCAL_TERMS = "urn:sst-search:term:"
MOF_TERMS = ("measurementID", "measurementType", "measurementValue", "measurementUnit", "measurementMethod",
             "measurementDeterminedDate", "measurementRemarks")
#: MeasurementOrFact rows per trait: (type, column and unit without a scale, column and unit with one).
MOF_MEASUREMENTS = (
    ("area", "area_px", "px²", "area_mm2", "mm²"),
    *((label, f"{col}_px", "px", f"{col}_mm", "mm") for label, col in (
        ("perimeter", "perimeter"), ("major axis length", "major_axis"), ("minor axis length", "minor_axis"),
        ("bounding box width", "bbox_width"), ("bounding box height", "bbox_height"))),
    ("orientation", "orientation_deg", "degrees", "orientation_deg", "degrees"),
    *((label, col, "", col, "") for label, col in (
        ("eccentricity", "eccentricity"), ("solidity", "solidity"), ("mean CIELAB L*", "L_mean"),
        ("mean CIELAB a*", "a_mean"), ("mean CIELAB b*", "b_mean"), ("mean sRGB red", "red_mean"),
        ("mean sRGB green", "green_mean"), ("mean sRGB blue", "blue_mean"))),
    ("dominant colour", "dominant_color", "sRGB hex", "dominant_color", "sRGB hex"),
)
#: What the methods in eml.xml cite.
CITATIONS = {
    "sst": "Feng Z. et al. (2025) Static Segmentation by Tracking: A Frustratingly Label-Efficient Approach to "
           "Fine-Grained Segmentation. arXiv:2501.06749",
    "sam2": "Ravi N. et al. (2024) SAM 2: Segment Anything in Images and Videos. arXiv:2408.00714",
}


def _known_terms() -> dict[str, str]:
    """Short name -> IRI of every Darwin Core / Dublin Core term python-dwca-reader knows, plus
    the image terms above."""
    from dwca.darwincore.terms import TERMS

    known = {t.rsplit("/", 1)[-1]: t for t in TERMS}
    known.update({t: DCTERMS + t for t in SIMPLE_MULTIMEDIA})
    known.update({t: ns + t for t, ns in AUDUBON.items()})
    return known


def term_iri(name: str, known: dict[str, str]) -> str:
    return known.get(name) or LOCAL_TERMS + quote(name, safe="")


def portable_name(key: str | None, path: str) -> str:
    """How a local image is named outside this machine: its key (relative to the collection
    folder) unless that is absolute, then its file name."""
    return key if key and not PurePath(key).is_absolute() else PurePath(path).name


@dataclass
class Image:
    specimen_id: int
    identifier: str
    terms: dict[str, str]


@dataclass
class Occurrence:
    id: str
    terms: dict[str, str]
    images: list[Image] = field(default_factory=list)


def split_terms(metadata: dict[str, str], has_media_row: bool) -> tuple[dict[str, str], dict[str, str]]:
    """``(occurrence terms, image terms)`` of one item's metadata (see the module docstring)."""
    core, media = {}, {}
    for key, value in metadata.items():
        if key.startswith("media_"):
            media[key[len("media_"):]] = value
        elif has_media_row and key in MEDIA_TERMS and f"media_{key}" not in metadata:
            media[key] = value
        else:
            core[key] = value
    return core, media


def occurrence_id(metadata: dict[str, str], key: str | None, specimen: int) -> str:
    """The occurrence an image belongs to, as :mod:`sst_search.sources.dwca` keyed it
    (``<occurrence>|<image>``): occurrenceID, else catalogNumber, else the key's occurrence
    part. One of several specimens found in one photo (``--instances``) is an occurrence of its
    own, whatever record the photo carries. A key that is an absolute local path is replaced
    by the specimen's id."""
    if metadata.get("instanceNumber"):
        return key if key and not PurePath(key).is_absolute() else f"urn:sst-search:specimen:{specimen}"
    if metadata.get("occurrenceID") or metadata.get("catalogNumber"):
        return metadata.get("occurrenceID") or metadata["catalogNumber"]
    if key and "|" in key:
        return key.split("|", 1)[0]
    if key and not PurePath(key).is_absolute():
        return key
    return f"urn:sst-search:specimen:{specimen}"


def occurrences(store: Store, groups: Iterable[str] | None = None,
                specimen_ids: Iterable[int] | None = None) -> tuple[list[Occurrence], dict[int, Image], dict[int, dict]]:
    """``(occurrences, specimen_id -> its image, specimen_id -> provenance row)`` of the indexed specimens in scope."""
    rows = store.provenance(groups=groups, specimen_ids=specimen_ids)
    by_id: dict[str, Occurrence] = {}
    images: dict[int, Image] = {}
    for sid, row in rows.items():
        md = {k: str(v) for k, v in row["metadata"].items() if v not in (None, "")}
        has_media_row = any(md.get(t) or md.get(f"media_{t}") for t in MEDIA_LOCATORS) and "|" in (row["item_key"] or "")
        core, media = split_terms(md, has_media_row)
        if "scientificName" not in core and row["group_name"]:
            core["scientificName"] = row["group_name"]
        identifier = (media.get("identifier") or row["full_source"] or row["source"]
                      or portable_name(row["item_key"], row["path"]))
        media = {"identifier": identifier, **media}
        if row["license"] and not media.get("license"):
            media["license"] = row["license"]
        if row["rights_holder"] and not media.get("rightsHolder"):
            media["rightsHolder"] = row["rights_holder"]
        oid = occurrence_id(md, row["item_key"], sid)
        occ = by_id.setdefault(oid, Occurrence(oid, core))
        image = Image(sid, identifier, media)
        occ.images.append(image)
        images[sid] = image
    return list(by_id.values()), images, rows


def _columns(dicts: Iterable[dict[str, str]]) -> list[str]:
    """Every key, in first-seen order (a source's own column order survives)."""
    return list(dict.fromkeys(k for d in dicts for k in d))


def _meta_xml(sections: list[tuple[str, str, str, list[str]]]) -> str:
    """``meta.xml`` for ``(tag, rowType, file, field IRIs)`` sections; column 0 of each file is the id / coreid."""
    attrs = 'encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1"'
    body = ""
    for tag, row_type, location, fields in sections:
        id_tag = "id" if tag == "core" else "coreid"
        columns = "".join(f'    <field index="{i}" term="{escape(t, {chr(34): "&quot;"})}"/>\n'
                          for i, t in enumerate(fields, 1))
        body += (f'  <{tag} {attrs} rowType="{row_type}">\n    <files><location>{location}</location></files>\n'
                 f'    <{id_tag} index="0"/>\n{columns}  </{tag}>\n')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">\n{body}</archive>\n')


def _tsv(rows: list[list]) -> str:
    """Tab-separated text with tabs and newlines inside values replaced by spaces (no quoting in DwC-A text)."""
    def cell(v) -> str:
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else " ".join(str(v).split())

    return "".join("\t".join(cell(v) for v in row) + "\n" for row in rows)


def measurement_method(fingerprint: dict | None) -> str:
    """What produced a measurement, for ``measurementMethod``: the mask's model and weights
    sha256 (or the provided annotation's sha256), the references, and the measuring code."""
    fp = fingerprint or {}
    mask = fp.get("mask") or {}
    if not mask:
        made = "label mask of unrecorded origin"
    elif mask.get("source") == "provided":
        made = f"provided label mask (sha256 {mask.get('sha256')})"
    else:
        made = (f"SST segmentation by tracking with SAM 2 {mask.get('model')} (weights sha256 {mask.get('weights_sha256')}"
                + (f", adapter sha256 {mask['adapter_sha256']}" if mask.get("adapter_sha256") else "")
                + f", input {mask.get('image_size')} px, {mask.get('mode')} propagation)")
    return (f"{made}; references {fp.get('references')}; measured with scikit-image regionprops "
            "(moments ellipse axes, perimeter through boundary pixel centres) and CIELAB D65 colour; sst-search")


def _facts(store: Store, images: dict[int, Image], occurrence_of: dict[int, str],
           groups: Iterable[str] | None, specimen_ids: Iterable[int] | None) -> list[list]:
    """MeasurementOrFact rows: ``coreid``, :data:`MOF_TERMS`, then the image measured (``dcterms:source``)."""
    table = store.measurements_frame(specimen_ids=specimen_ids, groups=groups)
    determined = datetime.now(timezone.utc).date().isoformat()
    facts = []
    for row in table.itertuples(index=False):
        if not isinstance(row.unit, str) or row.specimen_id not in images:
            continue  # a mask from before measurements existed: `sst-search measure` fills it
        image = images[row.specimen_id]
        method = measurement_method(json.loads(row.fingerprint) if row.fingerprint else None)
        scaled = row.unit == "mm"
        remarks = f"trait {row.trait} on image {image.identifier}; "
        remarks += f"scale {row.pixels_per_mm:g} px/mm from {row.scale_source}" if scaled else "no scale: pixels"
        if row.quality == row.quality and row.quality is not None:
            remarks += f"; mask cycle-consistency IoU {row.quality:.3f}"
        for label, px_column, px_unit, mm_column, mm_unit in MOF_MEASUREMENTS:
            column, unit = (mm_column, mm_unit) if scaled else (px_column, px_unit)
            value = getattr(row, column)
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            facts.append([occurrence_of[row.specimen_id], f"urn:sst-search:{row.specimen_id}:{row.trait}:{column}",
                          f"{row.trait} {label}", value if isinstance(value, str) else f"{value:.6g}", unit, method,
                          determined, remarks, image.identifier])
    return facts


def _weights(sha256: str | None) -> str:
    if sha256 == "random":
        return "random weights (untrained: its output is not meaningful)"
    return f"weights sha256 {sha256}" if sha256 and sha256 != "none" else "no learned weights"


def eml_xml(provenance: Iterable[dict], title: str = "Trait masks and measurements made with sst-search") -> str:
    """EML 2.1.1 dataset metadata whose methods list the software, every segmentation model and
    its weights sha256 (``random`` when untrained: its masks mean nothing), every embedder and
    its weights, the references folders' fingerprints, and the papers behind them."""
    masks, embedders, references = {}, {}, set()
    for row in provenance:
        fp = row["fingerprint"]
        if fp.get("mask"):
            masks[json.dumps(fp["mask"], sort_keys=True)] = fp["mask"]
        if fp.get("embedder"):
            embedders[json.dumps(fp["embedder"], sort_keys=True)] = fp["embedder"]
        if fp.get("references"):
            references.add(str(fp["references"]))
    steps = [f"Software: sst-search {__version__} (Static Segmentation by Tracking), "
             "measurements with scikit-image regionprops and CIELAB D65 colour."]
    provided = sum(1 for m in masks.values() if m.get("source") == "provided")
    if provided:
        steps.append(f"Masks: {provided} provided label mask files (each one's sha256 is in its measurementMethod).")
    for mask in (m for m in masks.values() if m.get("source") != "provided"):
        steps.append(f"Masks: SAM 2 {mask.get('model')}, {_weights(mask.get('weights_sha256'))}, "
                     f"input {mask.get('image_size')} px, {mask.get('mode')} propagation"
                     + (f", fine-tuned adapter sha256 {mask['adapter_sha256']}" if mask.get("adapter_sha256") else "")
                     + ".")
    for emb in embedders.values():
        steps.append(f"Vectors: embedder {emb.get('embedder')}"
                     + (f", model {emb.get('model')}" if emb.get("model") else "")
                     + (f" ({emb.get('pretrained')})" if emb.get("pretrained") else "")
                     + f", {_weights(emb.get('weights'))}.")
    steps += [f"References: folder fingerprint {r}." for r in sorted(references)]
    cited = ["sst"] + (["sam2"] if any(m.get("source") != "provided" for m in masks.values()) else [])
    steps += [f"Reference: {CITATIONS[c]}" for c in cited]
    paras = "".join(f"      <methodStep><description><para>{escape(s)}</para></description></methodStep>\n" for s in steps)
    today = datetime.now(timezone.utc).date().isoformat()
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1" packageId="sst-search-export" system="sst-search" '
            'xml:lang="en">\n  <dataset>\n'
            f"    <title>{escape(title)}</title>\n    <pubDate>{today}</pubDate>\n"
            "    <abstract><para>Occurrences and images as their source gave them, with trait measurements "
            "made on the images.</para></abstract>\n"
            f"    <methods>\n{paras}    </methods>\n  </dataset>\n</eml:eml>\n")


def dwca_zip(store: Store, groups: Iterable[str] | None = None, specimen_ids: Iterable[int] | None = None) -> bytes:
    """The archive described in the module docstring, as zip bytes."""
    specimen_ids = None if specimen_ids is None else list(specimen_ids)
    occs, images, provenance = occurrences(store, groups, specimen_ids)
    known = _known_terms()
    occurrence_of = {img.specimen_id: occ.id for occ in occs for img in occ.images}
    core_cols = _columns(o.terms for o in occs)
    media_cols = _columns(img.terms for o in occs for img in o.images)
    core = [["id", *core_cols], *([o.id, *(o.terms.get(c) for c in core_cols)] for o in occs)]
    media = [["coreid", *media_cols],
             *([o.id, *(img.terms.get(c) for c in media_cols)] for o in occs for img in o.images)]
    facts = _facts(store, images, occurrence_of, groups, specimen_ids)
    meta = _meta_xml([
        ("core", OCCURRENCE, "occurrence.txt", [term_iri(c, known) for c in core_cols]),
        ("extension", MULTIMEDIA, "multimedia.txt", [term_iri(c, known) for c in media_cols]),
        ("extension", MEASUREMENT, "measurementorfact.txt", [DWC + t for t in MOF_TERMS] + [DCTERMS + "source"]),
    ])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.xml", meta)
        zf.writestr("eml.xml", eml_xml(provenance.values()))
        zf.writestr("occurrence.txt", _tsv(core))
        zf.writestr("multimedia.txt", _tsv(media))
        zf.writestr("measurementorfact.txt", _tsv([["coreid", *MOF_TERMS, "source"], *facts]))
    return buf.getvalue()
