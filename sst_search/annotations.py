"""Read annotations made in other tools and turn them into supports.

Curators label specimens in COCO-producing tools, CVAT, Label Studio or napari. Each
reader here returns, per annotated image, the image file and one boolean mask per
category *name*; :func:`import_annotations` then writes them through
:func:`sst_search.references.save_support`, the same validated code the app uses, so an
imported support is exactly as trustworthy as a drawn one.

Formats (picked from the file's content, not only its suffix):

- COCO JSON: ``segmentation`` as polygons, uncompressed or compressed RLE (pycocotools).
- CVAT for images 1.1 XML: ``<polygon>``, ``<box>`` and ``<mask>`` (CVAT's row-major RLE).
- Label Studio JSON export: ``polygonlabels``, ``rectanglelabels`` (percent coordinates) and
  ``brushlabels`` (Label Studio's own brush RLE).
- Label images (PNG/TIFF, e.g. napari labels): pixel value k = category k; names come from
  a ``traits.yaml`` (``label_names``), else from the group's own ``traits.yaml``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from pycocotools import mask as mask_utils

from .images import IMAGE_SUFFIXES, ImageLoadError, check_pixels, image_size
from .references import (
    TRAITS_FILE,
    ReferencesError,
    Support,
    check_name,
    holds_support,
    load_traits,
    remove_staging,
    save_support,
    unique_stem,
)

FORMATS = ("coco", "cvat", "labelstudio", "label-image")


class AnnotationError(ValueError):
    """An annotation file is unusable; ``str(err)`` names the file and the problem."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")


@dataclass
class Annotated:
    """One annotated image: its file and a boolean mask per category name."""

    image_path: Path
    masks: dict[str, np.ndarray] = field(default_factory=dict)


def _union(masks: dict[str, np.ndarray], name: str, mask: np.ndarray) -> None:
    masks[name] = masks[name] | mask if name in masks else mask


# -- geometry checks ----------------------------------------------------------------------
#
# Everything in an annotation file is checked before a raster is allocated: pycocotools and
# numpy trust their inputs, and a NaN vertex loops until memory runs out, a coordinate of
# 1e30 overflows inside the C rasteriser, and run lengths that do not add up to the image
# write past the end of its buffer. A small file must cost a small, bounded amount of memory.

#: Most vertices in one annotation's polygons: far beyond any hand-drawn outline.
MAX_VERTICES = 100_000
#: Most runs in one RLE mask.
MAX_RUNS = 5_000_000
#: Most mask pixels one file may make the import hold at once (one byte each): images x
#: categories. Declared sizes are free to forge; real 100 MP sheets with a few traits fit.
MAX_MASK_PIXELS = 500_000_000


def _size(h: object, w: object) -> tuple[int, int]:
    """A declared image size as ``(h, w)``, positive and within the decode limit."""
    try:
        h_, w_ = int(h), int(w)  # type: ignore[call-overload]
        check_pixels("image", w_, h_)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"image size {w}x{h}: {exc.reason if isinstance(exc, ImageLoadError) else exc}") from exc
    return h_, w_


def _polygon(flat: list[float], h: int, w: int) -> np.ndarray:
    """A polygon (x0, y0, x1, y1, ...) rasterised exactly as COCO tools do. Vertices a little
    outside the image (up to one image size) are moved to its nearest edge, which draws the
    same pixels; farther ones mean a broken file and are refused."""
    return _polygons([flat], h, w)


def _polygons(polygons: list, h: int, w: int) -> np.ndarray:
    """The union of ``polygons`` after the checks above: finite, at least 3 and at most
    :data:`MAX_VERTICES` vertices in all, clipped to the image."""
    flats = []
    for flat in polygons:
        try:
            pts = np.asarray(flat, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"polygon coordinates are not numbers ({exc})") from exc
        if pts.ndim != 1 or pts.size % 2 or pts.size < 6:
            raise ValueError(f"a polygon needs pairs of numbers for at least 3 points, got {pts.size} values")
        if not np.isfinite(pts).all():
            raise ValueError("polygon has a coordinate that is not a finite number (NaN or infinity)")
        pts = pts.reshape(-1, 2)
        far = (pts < -np.array([w, h])) | (pts > 2 * np.array([w, h]))
        if far.any():
            x, y = pts[far.any(axis=1)][0]
            raise ValueError(f"vertex ({x:g}, {y:g}) lies far outside the {w}x{h} image")
        np.clip(pts[:, 0], 0, w, out=pts[:, 0])
        np.clip(pts[:, 1], 0, h, out=pts[:, 1])
        flats.append(pts.ravel().tolist())
    vertices = sum(len(f) for f in flats) // 2
    if vertices > MAX_VERTICES:
        raise ValueError(f"{vertices:,} polygon vertices, over the limit of {MAX_VERTICES:,}")
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(flats, h, w))).astype(bool)


def _runs(counts: list, total: int) -> list[int]:
    """Run lengths that are non-negative integers, at most :data:`MAX_RUNS`, covering exactly ``total`` pixels."""
    if len(counts) > MAX_RUNS:
        raise ValueError(f"{len(counts):,} runs, over the limit of {MAX_RUNS:,}")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise ValueError("run lengths must be non-negative integers")
    if sum(counts) != total:
        raise ValueError(f"runs cover {sum(counts):,} pixels, the mask has {total:,}")
    return counts


def _coco_string_counts(text: str) -> list[int]:
    """The run lengths of COCO's compressed RLE string (pycocotools' ``rleFrString``), read
    here so they can be checked before pycocotools decodes them without checks."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("compressed RLE ends inside a number")
            c = ord(text[pos]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE holds the character {text[pos]!r}")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        if len(counts) > MAX_RUNS:
            raise ValueError(f"over {MAX_RUNS:,} runs")
    return counts


class _Held:
    """What a reader may rasterise: the size an annotation declares must be its image's (read
    from the image's header), and the mask pixels held so far stay under
    :data:`MAX_MASK_PIXELS`; both checked before the next raster is allocated."""

    def __init__(self, path: Path):
        self.path, self.pixels = path, 0
        self.sizes: dict[Path, tuple[int, int]] = {}

    def claim(self, entry: Annotated, name: str, h: int, w: int) -> None:
        image = entry.image_path
        if image not in self.sizes:
            try:
                self.sizes[image] = image_size(image)
            except ImageLoadError as exc:
                raise AnnotationError(self.path, f"annotated image unusable: {exc}") from exc
        if self.sizes[image] != (h, w):
            real_h, real_w = self.sizes[image]
            raise AnnotationError(self.path, f"{image.name}: annotated as {w}x{h}, the image is {real_w}x{real_h}")
        if name in entry.masks:
            return
        self.pixels += h * w
        if self.pixels > MAX_MASK_PIXELS:
            raise AnnotationError(self.path, f"its masks would hold {self.pixels:,} pixels, over the limit of "
                                             f"{MAX_MASK_PIXELS:,}; split the file")


def _resolve(path: str, base: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base / p


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, f"cannot read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"not valid JSON ({exc})") from exc


# -- COCO --------------------------------------------------------------------------------


def read_coco(path: Path, images_dir: Path) -> list[Annotated]:
    data = _load_json(path)
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise AnnotationError(path, "not a COCO file (needs 'images', 'annotations' and 'categories')")
    try:
        names = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        images = {int(im["id"]): im for im in data["images"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(path, f"malformed categories or images ({exc!r})") from exc
    out: dict[int, Annotated] = {}
    held = _Held(path)
    for n, ann in enumerate(data["annotations"]):
        where = f"annotation {ann.get('id', n)}" if isinstance(ann, dict) else f"annotation #{n}"
        try:
            image = images[int(ann["image_id"])]
            name = names[int(ann["category_id"])]
            seg = ann["segmentation"]
            h, w = _size(image["height"], image["width"])
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(path, f"{where}: missing or unknown image_id/category_id/segmentation, or a bad "
                                        f"image size ({exc})") from exc
        if isinstance(seg, list) and not seg:
            continue
        entry = out.setdefault(image["id"], Annotated(_resolve(str(image.get("file_name", "")), images_dir)))
        held.claim(entry, name, h, w)
        try:
            if isinstance(seg, list):  # polygons
                mask = _polygons(seg, h, w)
            elif isinstance(seg, dict) and "counts" in seg:  # RLE, uncompressed (a list) or compressed (a string)
                if list(seg.get("size") or []) != [h, w]:
                    raise ValueError(f"RLE size {seg.get('size')} differs from the image's [height, width] [{h}, {w}]")
                counts = seg["counts"]
                if isinstance(counts, list):
                    rle = mask_utils.frPyObjects({"size": [h, w], "counts": _runs(counts, h * w)}, h, w)
                elif isinstance(counts, str):
                    _runs(_coco_string_counts(counts), h * w)
                    rle = {"size": [h, w], "counts": counts.encode()}
                else:
                    raise ValueError("RLE counts are neither a list nor a string")
                mask = mask_utils.decode(rle).astype(bool)
            else:
                raise ValueError("segmentation is neither polygons nor RLE")
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise AnnotationError(path, f"{where}: bad segmentation ({exc})") from exc
        _union(entry.masks, name, mask)
    return list(out.values())


# -- CVAT for images 1.1 -------------------------------------------------------------------


def _cvat_rle(counts: str, left: int, top: int, width: int, height: int, h: int, w: int) -> np.ndarray:
    """CVAT's mask RLE: run lengths, row-major inside the box, alternating 0 and 1, from 0."""
    if width <= 0 or height <= 0 or left < 0 or top < 0 or left + width > w or top + height > h:
        raise ValueError(f"mask box {left},{top} {width}x{height} is empty or leaves the {w}x{h} image")
    try:
        runs = [int(c) for c in counts.split(",") if c.strip()]
    except ValueError as exc:
        raise ValueError(f"RLE is not a list of integers ({exc})") from exc
    _runs(runs, width * height)
    flat = np.zeros(width * height, bool)
    pos = 0
    for k, run in enumerate(runs):
        if k % 2:
            flat[pos : pos + run] = True
        pos += run
    out = np.zeros((h, w), bool)
    out[top : top + height, left : left + width] = flat.reshape(height, width)
    return out


def read_cvat(path: Path, images_dir: Path) -> list[Annotated]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise AnnotationError(path, f"not valid XML ({exc})") from exc
    if root.tag != "annotations":
        raise AnnotationError(path, f"not a CVAT for images export (root element <{root.tag}>, expected <annotations>)")
    out = []
    held = _Held(path)
    for image in root.iter("image"):
        try:
            name = image.attrib["name"]
            h, w = _size(image.attrib["height"], image.attrib["width"])
        except (KeyError, ValueError) as exc:
            raise AnnotationError(path, f"<image> without a name or a usable width/height ({exc})") from exc
        entry = Annotated(_resolve(name, images_dir))
        for shape in image:
            label = shape.attrib.get("label")
            where = f"image {name!r}, <{shape.tag} label={label!r}>"
            if shape.tag not in ("polygon", "box", "mask"):
                continue
            if not label:
                raise AnnotationError(path, f"{where}: no label")
            a = shape.attrib
            held.claim(entry, label, h, w)
            try:
                if shape.tag == "polygon":
                    flat = [float(v) for pt in a["points"].split(";") for v in pt.split(",")]
                    mask = _polygon(flat, h, w)
                elif shape.tag == "box":
                    x0, y0, x1, y1 = (float(a[k]) for k in ("xtl", "ytl", "xbr", "ybr"))
                    mask = _polygon([x0, y0, x1, y0, x1, y1, x0, y1], h, w)
                else:
                    mask = _cvat_rle(a["rle"], *(int(float(a[k])) for k in ("left", "top", "width", "height")), h, w)
            except (KeyError, ValueError, OverflowError) as exc:
                raise AnnotationError(path, f"{where}: {exc}") from exc
            _union(entry.masks, label, mask)
        if entry.masks:
            out.append(entry)
    return out


# -- Label Studio --------------------------------------------------------------------------


def _ls_image_path(ref: str, images_dir: Path) -> Path:
    """Label Studio stores image references as URLs (``/data/upload/3/ab12-name.jpg``,
    ``/data/local-files/?d=dir/name.jpg``); the image is looked up by file name in ``images_dir``."""
    parsed = urlparse(ref)
    if "d=" in parsed.query:
        ref = unquote(parsed.query.split("d=", 1)[1])
    else:
        ref = unquote(parsed.path)
    candidate = images_dir / Path(ref).name
    if not candidate.exists() and "-" in candidate.name:  # uploads get a hash prefix
        stripped = images_dir / candidate.name.split("-", 1)[1]
        if stripped.exists():
            return stripped
    return candidate


class _Bits:
    """Reads big-endian unsigned integers of any width from a bit string."""

    def __init__(self, data: bytes):
        self.bits = np.unpackbits(np.frombuffer(bytes(data), np.uint8))
        self.pos = 0

    def read(self, width: int) -> int:
        if self.pos + width > len(self.bits):
            raise ValueError("brush RLE ends early")
        chunk = self.bits[self.pos : self.pos + width].astype(np.int64)
        self.pos += width
        return int(chunk @ (1 << np.arange(width - 1, -1, -1, dtype=np.int64)))


def _labelstudio_brush(rle: list[int], h: int, w: int) -> np.ndarray:
    """Label Studio's brush RLE (label-studio-converter's format): a 32-bit value count, the
    word size, four run-length widths, then runs that either repeat one word or list words;
    the values are an RGBA image whose alpha channel is the mask. Only the alpha values are
    kept (value 4p+3 is pixel p's), so the raster is the mask's size, not four times it."""
    bits = _Bits(bytes(rle))
    num = bits.read(32)
    word = bits.read(5) + 1
    widths = [bits.read(4) + 1 for _ in range(4)]
    if num != h * w * 4:
        raise ValueError(f"brush RLE holds {num} values, a {w}x{h} RGBA image {h * w * 4}")
    alpha = np.zeros(h * w, bool)
    i = 0
    while i < num:
        repeat = bits.read(1)
        j = min(num, i + 1 + bits.read(widths[bits.read(2)]))
        if repeat:
            alpha[i // 4 : j // 4] = bits.read(word) > 0  # the alpha values among i..j-1
        else:
            for k in range(i, j):
                value = bits.read(word)
                if k % 4 == 3:
                    alpha[k // 4] = value > 0
        i = j
    return alpha.reshape(h, w)


def read_labelstudio(path: Path, images_dir: Path) -> list[Annotated]:
    data = _load_json(path)
    if not isinstance(data, list) or not all(isinstance(t, dict) and "data" in t for t in data):
        raise AnnotationError(path, "not a Label Studio JSON export (expected a list of tasks with 'data')")
    out = []
    held = _Held(path)
    for task in data:
        image_ref = next((v for v in task["data"].values() if isinstance(v, str)), None)
        if image_ref is None:
            raise AnnotationError(path, f"task {task.get('id')}: no image reference in 'data'")
        entry = Annotated(_ls_image_path(image_ref, images_dir))
        annotations = task.get("annotations") or task.get("completions") or []
        for ann in annotations[-1:]:  # the latest annotation of the task
            for res in ann.get("result", []):
                kind, value = res.get("type"), res.get("value", {})
                where = f"task {task.get('id')}, result {res.get('id')} ({kind})"
                if kind not in ("polygonlabels", "rectanglelabels", "brushlabels"):
                    continue
                try:
                    h, w = _size(res["original_height"], res["original_width"])
                    label = value[kind][0]
                    held.claim(entry, label, h, w)
                    if kind == "brushlabels":
                        if value.get("format", "rle") != "rle":
                            raise ValueError(f"brush format {value.get('format')!r} (expected 'rle')")
                        mask = _labelstudio_brush(value["rle"], h, w)
                    elif kind == "polygonlabels":
                        mask = _polygon([float(c) * s / 100.0 for x, y in value["points"] for c, s in ((x, w), (y, h))],
                                        h, w)
                    else:
                        if value.get("rotation"):
                            raise ValueError("rotated rectangles are not supported")
                        x, y, bw, bh = (float(value[k]) for k in ("x", "y", "width", "height"))  # percent
                        x0, y0, x1, y1 = x * w / 100.0, y * h / 100.0, (x + bw) * w / 100.0, (y + bh) * h / 100.0
                        mask = _polygon([x0, y0, x1, y0, x1, y1, x0, y1], h, w)
                except (KeyError, IndexError, TypeError, ValueError, OverflowError) as exc:
                    raise AnnotationError(path, f"{where}: {exc}") from exc
                _union(entry.masks, label, mask)
        if entry.masks:
            out.append(entry)
    return out


# -- label images ------------------------------------------------------------------------------


def _check_label_size(path: Path, planes: int, shape: tuple) -> None:
    """Refuse a label image whose header declares too many pixels, before decoding it."""
    if len(shape) < 2:
        raise AnnotationError(path, f"a label image must be 2-D, its header says shape {tuple(shape)}")
    try:
        check_pixels(path, int(shape[1]) * planes, int(shape[0]))
    except ImageLoadError as exc:
        raise AnnotationError(path, exc.reason) from exc


def _read_label_image(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
                _check_label_size(path, int(np.prod(shape[:-2], dtype=np.int64)) or 1, shape[-2:])
                arr = np.squeeze(tif.series[0].asarray())
        except AnnotationError:
            raise
        except Exception as exc:  # tifffile raises several unrelated types for bad files
            raise AnnotationError(path, f"not a readable TIFF ({exc})") from exc
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path, formats=["PNG"]) as img:
                _check_label_size(path, 1, img.size[::-1])
                if img.mode not in ("L", "P", "I", "I;16", "1"):
                    raise AnnotationError(path, f"a label image must be single-channel, got mode {img.mode}")
                arr = np.asarray(img)
        except Image.DecompressionBombError as exc:
            raise AnnotationError(path, f"refused as a possible decompression bomb ({exc})") from exc
        except (OSError, UnidentifiedImageError) as exc:
            raise AnnotationError(path, f"not a readable image ({exc})") from exc
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise AnnotationError(path, f"a label image must be a 2-D integer array, got {arr.dtype} of shape {arr.shape}")
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise AnnotationError(path, f"label values must be in 0..255, found {arr.min()}..{arr.max()}")
    return arr.astype(np.uint8)


def _image_for_label(path: Path, images_dir: Path) -> Path:
    stem = path.name
    for suffix in (".tiff", ".tif", ".png"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    for tail in (".mask", "_labels", "_mask", ".labels"):
        if stem.endswith(tail):
            stem = stem[: -len(tail)]
            break
    for suffix in IMAGE_SUFFIXES:
        for cand in (images_dir / f"{stem}{suffix}", images_dir / f"{stem}{suffix.upper()}"):
            if cand.is_file() and cand.resolve() != path.resolve():
                return cand
    raise AnnotationError(path, f"no image named {stem}.<ext> in {images_dir} (pass --images DIR)")


def read_label_image(path: Path, images_dir: Path, names: Mapping[int, str]) -> list[Annotated]:
    labels = _read_label_image(path)
    ids = sorted(set(np.unique(labels).tolist()) - {0})
    if not ids:
        raise AnnotationError(path, "the label image holds no labels (all zero)")
    unnamed = [k for k in ids if k not in names]
    if unnamed:
        raise AnnotationError(path, f"label values {unnamed} have no name; pass --label-names traits.yaml")
    if len(ids) * labels.size > MAX_MASK_PIXELS:
        raise AnnotationError(path, f"{len(ids)} labels of {labels.size:,} pixels each exceed the limit of "
                                    f"{MAX_MASK_PIXELS:,} mask pixels")
    return [Annotated(_image_for_label(path, images_dir), {names[k]: labels == k for k in ids})]


# -- import ---------------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".png", ".tif", ".tiff"):
        return "label-image"
    if suffix == ".xml":
        return "cvat"
    if suffix == ".json":
        data = _load_json(path)
        return "coco" if isinstance(data, dict) else "labelstudio"
    raise AnnotationError(path, f"unknown annotation format {suffix!r}; expected one of {FORMATS} (COCO/Label Studio .json, CVAT .xml, label .png/.tif)")


def read_annotations(
    path: str | Path,
    images_dir: str | Path | None = None,
    label_names: Mapping[int, str] | None = None,
    fmt: str | None = None,
) -> list[Annotated]:
    """Every annotated image of ``path`` (images resolved against ``images_dir``, by default
    the file's own folder)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "file does not exist")
    images_dir = Path(images_dir) if images_dir is not None else path.parent
    fmt = fmt or detect_format(path)
    readers: dict[str, Callable[[], list[Annotated]]] = {
        "coco": lambda: read_coco(path, images_dir),
        "cvat": lambda: read_cvat(path, images_dir),
        "labelstudio": lambda: read_labelstudio(path, images_dir),
        "label-image": lambda: read_label_image(path, images_dir, label_names or {}),
    }
    if fmt not in readers:
        raise AnnotationError(path, f"unknown format {fmt!r}; choose one of {FORMATS}")
    found = readers[fmt]()
    if not found:
        raise AnnotationError(path, "holds no usable annotations (polygons, boxes, masks or labels)")
    return found


def import_annotations(
    path: str | Path,
    refs_dir: str | Path,
    group: str,
    images_dir: str | Path | None = None,
    label_names: str | Path | Mapping[int, str] | None = None,
    fmt: str | None = None,
) -> list[Support]:
    """Write each annotated image of ``path`` as a support of ``group``; returns the supports.

    Everything is read and checked first (images readable, masks the size of their image),
    so a bad file writes nothing. Category names map to the group's trait ids; new names get
    new ids. A support whose name is taken by another support is refused, never overwritten;
    one that holds exactly what this import would write is skipped, so an import that was
    killed part-way is finished by running it again (and its staging folders removed).
    """
    path, refs_dir = Path(path), Path(refs_dir)
    if label_names is None:
        group_traits = refs_dir / group / TRAITS_FILE
        names = {k: t.name for k, t in load_traits(group_traits).items()} if group_traits.exists() else {}
    elif isinstance(label_names, Mapping):
        names = dict(label_names)
    else:
        names = {k: t.name for k, t in load_traits(label_names).items()}
    annotated = read_annotations(path, images_dir, names, fmt)
    stems = [a.image_path.stem for a in annotated]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise AnnotationError(path, f"several images share the name(s) {repeated}; a group needs one support per name")
    for a in annotated:
        for name in a.masks:
            try:
                check_name(name.strip(), "trait name")
            except ReferencesError as exc:
                raise AnnotationError(path, f"{a.image_path.name}: {exc}") from exc
        try:
            h, w = image_size(a.image_path)
        except ImageLoadError as exc:
            raise AnnotationError(path, f"annotated image unusable: {exc}") from exc
        for name, mask in a.masks.items():
            if mask.shape != (h, w):
                raise AnnotationError(path, f"{a.image_path.name}: annotation of {name!r} is {mask.shape[1]}x{mask.shape[0]}, the image {w}x{h}")
    done = {a.image_path for a in annotated if holds_support(refs_dir, group, a.image_path.stem, a.image_path, a.masks)}
    for a in annotated:
        if a.image_path not in done and unique_stem(refs_dir / group, a.image_path.stem) != a.image_path.stem:
            raise AnnotationError(path, f"{a.image_path.name}: group {group!r} already has a different support "
                                        f"named {a.image_path.stem!r}; not overwriting it")
    written = []
    for a in annotated:
        remove_staging(refs_dir / group, a.image_path.stem)
        if a.image_path in done:  # imported by an earlier run of this import that was cut short
            continue
        try:
            written.append(save_support(refs_dir, group, a.image_path.stem, a.image_path, a.masks))
        except ReferencesError as exc:
            raise AnnotationError(path, f"{a.image_path.name}: {exc}") from exc
    return written
