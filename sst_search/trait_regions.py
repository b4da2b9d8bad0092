"""Trait masks in the formats museum systems and IIIF viewers read.

- :func:`regions_table`: one Audubon Core region of interest per trait mask: the image
  (``dcterms:identifier``, as in the Darwin Core Archive export), the trait as
  ``ac:subjectPart``, and the mask's box as ``ac:xFrac``, ``ac:yFrac``, ``ac:widthFrac``,
  ``ac:heightFrac`` (fractions of the image's width and height, so they hold at any resolution
  the museum serves the image at).
- :func:`annotation_pages`: for each specimen whose image came from IIIF, a W3C Web
  Annotation page (IIIF Presentation 3) whose annotations tag the canvas with each trait,
  targeting the mask's outline (``SvgSelector``) and its box (``FragmentSelector`` ``xywh``),
  so Mirador and other viewers draw the traits on the museum's own image.

Coordinates of an IIIF image are the canvas's: the image was segmented at the model's size
(``width`` x ``height``) and its full size is stored (``original_width`` x ``original_height``), so
mask pixels are scaled by their ratio. The canvas is taken to have the full image's size
(true of the canvases IIIF image services paint whole). An image from an IIIF image service
without a manifest has no canvas: its annotations target the full image's URL instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from .dwca_export import occurrences
from .store import Store, decode_mask

IIIF_CONTEXT = "http://iiif.io/api/presentation/3/context.json"
MEDIA_FRAGMENTS = "http://www.w3.org/TR/media-frags/"
#: Column names of :func:`regions_table` (prefixed Audubon Core / Dublin Core terms).
REGION_COLUMNS = ("specimen_id", "coreid", "dcterms:identifier", "ac:hasROI", "ac:subjectPart",
                  "ac:xFrac", "ac:yFrac", "ac:widthFrac", "ac:heightFrac")


@dataclass(frozen=True)
class TraitMask:
    specimen_id: int
    trait: str
    mask: np.ndarray
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive ends), in mask pixels


def _trait_masks(store: Store, groups: Iterable[str] | None, specimen_ids: Iterable[int] | None) -> Iterator[TraitMask]:
    for r in store.mask_rows(groups=groups, specimen_ids=specimen_ids):
        yield TraitMask(int(r[0]), r[7], decode_mask(r[8]), (int(r[10]), int(r[11]), int(r[12]), int(r[13])))


def regions_table(store: Store, groups: Iterable[str] | None = None,
                  specimen_ids: Iterable[int] | None = None) -> pd.DataFrame:
    """One Audubon Core region of interest per trait mask (:data:`REGION_COLUMNS`)."""
    specimen_ids = None if specimen_ids is None else list(specimen_ids)
    occs, images, _ = occurrences(store, groups, specimen_ids)
    occurrence_of = {img.specimen_id: occ.id for occ in occs for img in occ.images}
    rows = []
    for tm in _trait_masks(store, groups, specimen_ids):
        height, width = tm.mask.shape
        x0, y0, x1, y1 = tm.box
        identifier = images[tm.specimen_id].identifier
        roi = f"urn:sst-search:roi:{tm.specimen_id}:{tm.trait}"
        rows.append((tm.specimen_id, occurrence_of[tm.specimen_id], identifier, roi, tm.trait,
                     round(x0 / width, 6), round(y0 / height, 6), round((x1 - x0) / width, 6),
                     round((y1 - y0) / height, 6)))
    return pd.DataFrame(rows, columns=list(REGION_COLUMNS))


def svg_outline(mask: np.ndarray, scale: tuple[float, float] = (1.0, 1.0)) -> str:
    """An SVG document whose one path traces the mask's outer boundaries and holes (even-odd
    fill), through the boundary pixels' centres, in coordinates scaled by ``(sx, sy)``."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    sx, sy = scale
    parts = []
    for contour in contours:
        points = contour.reshape(-1, 2)
        parts.append("M" + " L".join(f"{x * sx:.1f},{y * sy:.1f}" for x, y in points) + " Z")
    return ('<svg xmlns="http://www.w3.org/2000/svg"><path fill-rule="evenodd" '
            f'd="{" ".join(parts)}"/></svg>')


def _target(row: dict) -> tuple[dict, tuple[float, float]] | None:
    """``(the annotations' target resource, mask-to-target scale)`` of an IIIF specimen, else None."""
    canvas = row["metadata"].get("canvas")
    full = row["full_source"]
    if not canvas and not full:
        return None
    width, height = row["width"], row["height"]
    ow, oh = row["original_width"] or width, row["original_height"] or height
    scale = (ow / width, oh / height)
    resource = {"id": canvas, "type": "Canvas"} if canvas else {"id": full, "type": "Image"}
    return resource, scale


def annotation_pages(store: Store, base: str = "urn:sst-search:annotations", groups: Iterable[str] | None = None,
                     specimen_ids: Iterable[int] | None = None) -> dict[int, dict]:
    """``specimen_id -> IIIF Presentation 3 AnnotationPage`` of every IIIF specimen in scope.
    ``base`` prefixes the pages' and annotations' ids: the URL they will be published under."""
    rows = store.provenance(groups=groups, specimen_ids=specimen_ids)
    pages: dict[int, dict] = {}
    for tm in _trait_masks(store, groups, None if specimen_ids is None else list(specimen_ids)):
        target = _target(rows[tm.specimen_id])
        if target is None:
            continue
        resource, (sx, sy) = target
        page = pages.setdefault(tm.specimen_id, {
            "@context": IIIF_CONTEXT, "id": f"{base.rstrip('/')}/{tm.specimen_id}", "type": "AnnotationPage",
            "items": []})
        x0, y0, x1, y1 = tm.box
        xywh = f"xywh={round(x0 * sx)},{round(y0 * sy)},{round((x1 - x0) * sx)},{round((y1 - y0) * sy)}"
        page["items"].append({
            "id": f"{page['id']}/{len(page['items']) + 1}",
            "type": "Annotation",
            "motivation": "tagging",
            "body": {"type": "TextualBody", "value": tm.trait, "format": "text/plain", "purpose": "tagging"},
            "target": {
                "type": "SpecificResource",
                "source": resource,
                "selector": [
                    {"type": "FragmentSelector", "conformsTo": MEDIA_FRAGMENTS, "value": xywh},
                    {"type": "SvgSelector", "value": svg_outline(tm.mask, (sx, sy))},
                ],
            },
        })
    return pages
