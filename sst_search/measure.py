"""Trait measurements: shape (regionprops' definitions, from moments and contours) and colour of each trait's pixels.

Biologists segment traits in order to measure them, so every mask written to the catalog
gets a row of measurements. Lengths and areas are in pixels; when a scale is known
(``pixelsPerMM`` of the item, a column named in the config, or one value for the whole
collection) the millimetre columns are filled too, and the row records the scale and where
it came from. Without a scale the mm columns stay NULL and ``unit`` says ``px``.

:data:`FIELDS` is the vocabulary: the catalog's ``trait_measurements`` columns, the
measurement filters (``forewing_band.area_mm2 > 40``) and the exports all use these names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

#: Default metadata column holding an item's scale (pixels per millimetre).
SCALE_COLUMN = "pixelsPerMM"


@dataclass(frozen=True)
class Field:
    """One measurement: its column name, unit and meaning (used for DwC measurementType)."""

    name: str
    unit: str
    description: str
    sql_type: str = "DOUBLE"


#: Every measurement column, in catalog order. ``px``/``px2`` columns are always filled; the
#: ``mm``/``mm2`` twins only when a scale is known.
FIELDS: tuple[Field, ...] = (
    Field("area_px", "px2", "trait area"),
    Field("perimeter_px", "px", "trait perimeter (through boundary pixel centres)"),
    Field("bbox_width_px", "px", "bounding box width"),
    Field("bbox_height_px", "px", "bounding box height"),
    Field("centroid_x", "px", "centroid column in the image"),
    Field("centroid_y", "px", "centroid row in the image"),
    Field("major_axis_px", "px", "major axis length of the ellipse with the same second moments"),
    Field("minor_axis_px", "px", "minor axis length of the ellipse with the same second moments"),
    Field("orientation_deg", "degree", "major axis angle from the image horizontal, counter-clockwise on screen"),
    Field("eccentricity", "1", "eccentricity of the ellipse with the same second moments"),
    Field("solidity", "1", "area / convex hull area"),
    Field("area_mm2", "mm2", "trait area"),
    Field("perimeter_mm", "mm", "trait perimeter"),
    Field("bbox_width_mm", "mm", "bounding box width"),
    Field("bbox_height_mm", "mm", "bounding box height"),
    Field("major_axis_mm", "mm", "major axis length"),
    Field("minor_axis_mm", "mm", "minor axis length"),
    Field("L_mean", "1", "mean CIELAB L* (D65) of the trait's pixels"),
    Field("a_mean", "1", "mean CIELAB a*"),
    Field("b_mean", "1", "mean CIELAB b*"),
    Field("L_median", "1", "median CIELAB L*"),
    Field("a_median", "1", "median CIELAB a*"),
    Field("b_median", "1", "median CIELAB b*"),
    Field("red_mean", "1", "mean sRGB red (0-255)"),
    Field("green_mean", "1", "mean sRGB green (0-255)"),
    Field("blue_mean", "1", "mean sRGB blue (0-255)"),
    Field("red_median", "1", "median sRGB red (0-255)"),
    Field("green_median", "1", "median sRGB green (0-255)"),
    Field("blue_median", "1", "median sRGB blue (0-255)"),
    Field("dominant_color", "hex", "mean sRGB of the most frequent colour bin (8 levels per channel)", "VARCHAR"),
    Field("dominant_share", "1", "share of the trait's pixels in the dominant colour bin"),
)
FIELD_NAMES = tuple(f.name for f in FIELDS)
#: pixel-unit column -> (mm column, power of the scale it is divided by)
_MM_TWINS = {
    "area_px": ("area_mm2", 2), "perimeter_px": ("perimeter_mm", 1), "bbox_width_px": ("bbox_width_mm", 1),
    "bbox_height_px": ("bbox_height_mm", 1), "major_axis_px": ("major_axis_mm", 1), "minor_axis_px": ("minor_axis_mm", 1),
}
#: Colour bins per sRGB channel for the dominant colour (256 / 8 = 32 levels a bin).
_DOMINANT_LEVELS = 8


@dataclass(frozen=True)
class Scale:
    """Pixels per millimetre and where that number came from (None: unknown, values stay px)."""

    pixels_per_mm: float | None = None
    source: str | None = None

    @property
    def unit(self) -> str:
        return "mm" if self.pixels_per_mm else "px"

    def resampled(self, width: int, original_width: int) -> Scale:
        """This scale for masks measured on a copy ``width`` pixels wide of an image
        ``original_width`` wide: a scale (``pixelsPerMM``, ``--pixels-per-mm``) refers to the
        original's pixels, and an IIIF image is segmented at the model's size."""
        if not self.pixels_per_mm or width == original_width:
            return self
        return Scale(self.pixels_per_mm * width / original_width,
                     f"{self.source} (original {original_width} px wide, measured at {width} px)")


def resolve_scale(metadata: Mapping[str, str], column: str = SCALE_COLUMN, pixels_per_mm: float | None = None) -> Scale:
    """An item's own ``column`` value wins over a collection-wide ``pixels_per_mm``.

    An item value that is not a positive number is not used, and the source says so
    (``invalid metadata:<column> (<value>)``): one bad cell must not stop a batch, nor be
    silently replaced by the collection's scale.
    """
    if pixels_per_mm is not None and not pixels_per_mm > 0:
        raise ValueError(f"pixels per mm must be positive, got {pixels_per_mm}")
    raw = metadata.get(column)
    if raw not in (None, ""):
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            return Scale(None, f"invalid metadata:{column} ({raw!r})")
        return Scale(value, f"metadata:{column}")
    if pixels_per_mm is not None:
        return Scale(float(pixels_per_mm), "collection")
    return Scale()


def measure_mask(mask: np.ndarray, image: np.ndarray | None, scale: Scale = Scale()) -> dict[str, float | str | None]:
    """Shape and colour measurements of one trait mask (all pixels of the trait form one region).

    ``image`` is the RGB uint8 image the mask belongs to; without it colour fields are None.
    Everything is computed on the trait's bounding box from image moments and the outer
    contour (OpenCV), not from scikit-image's ``regionprops``: its raster convex hull alone
    cost more per mask than segmenting it on a GPU. The definitions are regionprops' (second
    moments, its 4-neighbourhood perimeter), except the convex hull, which is the exact hull
    of the trait's pixel squares instead of a rasterised one.
    """
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        raise ValueError("cannot measure an empty mask")
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = mask[y0:y1, x0:x1].view(np.uint8)
    m = cv2.moments(crop, binaryImage=True)
    area = m["m00"]
    # regionprops' inertia tensor [[a, b], [b, c]] (columns first), its eigenvalues and angle
    a, b, c = m["mu20"] / area, -m["mu11"] / area, m["mu02"] / area
    spread = math.sqrt(((a - c) / 2) ** 2 + b * b)
    l1, l2 = max((a + c) / 2 + spread, 0.0), max((a + c) / 2 - spread, 0.0)
    if a - c == 0:
        angle = math.pi / 4 if b < 0 else -math.pi / 4
    else:
        angle = 0.5 * math.atan2(-2 * b, c - a)
    orientation = math.degrees(angle) - 90.0  # regionprops: from the row axis; here: from the horizontal
    if orientation <= -90.0:
        orientation += 180.0
    out: dict[str, float | str | None] = dict.fromkeys(FIELD_NAMES)
    out.update({
        "area_px": float(area), "perimeter_px": _perimeter(crop),
        "bbox_width_px": float(x1 - x0), "bbox_height_px": float(y1 - y0),
        "centroid_x": x0 + m["m10"] / area, "centroid_y": y0 + m["m01"] / area,
        "major_axis_px": 4 * math.sqrt(l1), "minor_axis_px": 4 * math.sqrt(l2),
        "orientation_deg": orientation, "eccentricity": math.sqrt(1 - l2 / l1) if l1 else 0.0,
        "solidity": float(area / _hull_area(crop)),
    })
    if scale.pixels_per_mm:
        for px, (mm, power) in _MM_TWINS.items():
            out[mm] = out[px] / scale.pixels_per_mm**power
    if image is not None:
        out.update(colour_stats(np.asarray(image)[y0:y1, x0:x1][crop.view(bool)]))
    return out


#: regionprops' perimeter: border pixels (the region minus its 4-neighbourhood erosion) are
#: classified by this kernel and each class weighs 1, sqrt(2) or (1 + sqrt(2)) / 2.
_PERIMETER_KERNEL = np.array([[10, 2, 10], [2, 1, 2], [10, 2, 10]], np.float32)
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)


def _perimeter(crop: np.ndarray) -> float:
    """scikit-image's ``perimeter(crop, 4)`` (same numbers), with OpenCV's filters."""
    padded = cv2.copyMakeBorder(crop, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    border = padded - cv2.erode(padded, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    classes = cv2.filter2D(border, cv2.CV_32F, _PERIMETER_KERNEL, borderType=cv2.BORDER_CONSTANT)
    return float(np.bincount(classes.astype(np.int64).ravel(), minlength=50) @ _PERIMETER_WEIGHTS)


_CORNERS = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]], np.float32)


def _hull_area(crop: np.ndarray) -> float:
    """Area of the convex hull of the region's pixel squares: the hull of the corners of its
    outer contour's pixels. At least the pixel count, so solidity never exceeds 1."""
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    points = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float32)
    corners = (points[:, None, :] + _CORNERS[None]).reshape(-1, 2)
    return float(cv2.contourArea(cv2.convexHull(corners)))


#: Per sRGB channel and 0-255 value, its linear light's contribution to CIE XYZ, each divided
#: by the D65 white point's X, Y or Z: three table look-ups and two sums give a pixel's
#: relative XYZ (a matrix product over millions of (n, 3) rows is several times slower).
_XYZ_TABLES = (
    np.where((v := np.arange(256) / 255.0) > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)[None, :, None]
    * (np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
       / np.array([0.95047, 1.0, 1.08883])[:, None]).T[:, None, :]
).astype(np.float32)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65, 2 degree observer) of ``(n, 3)`` uint8 sRGB pixels, as scikit-image's
    ``rgb2lab`` defines it, in float32."""
    xyz = sum(np.take(_XYZ_TABLES[i], rgb[:, i], axis=0) for i in range(3))
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack([116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], axis=1)


def _byte_median(values: np.ndarray) -> float:
    """``np.median`` of uint8 values, from their histogram (no sort)."""
    cumulative = np.cumsum(np.bincount(values, minlength=256))
    n = int(cumulative[-1])
    lo, hi = np.searchsorted(cumulative, [(n - 1) // 2 + 1, n // 2 + 1])
    return (float(lo) + float(hi)) / 2


def colour_stats(pixels: np.ndarray) -> dict[str, float | str]:
    """Mean and median in sRGB (0-255) and CIELAB (D65), and the dominant colour, of ``(n, 3)`` uint8 pixels."""
    rgb = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3)
    lab = rgb_to_lab(rgb)
    out: dict[str, float | str] = {}
    for i, ch in enumerate(("red", "green", "blue")):
        out[f"{ch}_mean"] = float(rgb[:, i].mean())
        out[f"{ch}_median"] = _byte_median(rgb[:, i])
    medians = np.median(lab, axis=0)
    for i, ch in enumerate("Lab"):
        out[f"{ch}_mean"] = float(lab[:, i].mean(dtype=np.float64))
        out[f"{ch}_median"] = float(medians[i])
    step = 256 // _DOMINANT_LEVELS
    bins = (rgb // step).astype(np.int64)
    codes = (bins[:, 0] * _DOMINANT_LEVELS + bins[:, 1]) * _DOMINANT_LEVELS + bins[:, 2]
    counts = np.bincount(codes)
    top = int(np.argmax(counts))
    r, g, b = (int(round(v)) for v in rgb[codes == top].mean(axis=0))
    out["dominant_color"] = f"#{r:02x}{g:02x}{b:02x}"
    out["dominant_share"] = float(counts[top] / len(codes))
    return out


def measure_label_map(
    label_map: np.ndarray, image: np.ndarray | None, trait_names: Mapping[int, str], scale: Scale = Scale()
) -> list[dict]:
    """One measurement row per named trait present in ``label_map`` (``trait_id``, ``trait_name``,
    ``unit``, ``pixels_per_mm``, ``scale_source`` and every :data:`FIELDS` column)."""
    rows = []
    for tid, name in sorted(trait_names.items()):
        mask = label_map == tid
        if mask.any():
            rows.append({"trait_id": int(tid), "trait_name": name, "unit": scale.unit,
                         "pixels_per_mm": scale.pixels_per_mm, "scale_source": scale.source,
                         **measure_mask(mask, image, scale)})
    return rows
