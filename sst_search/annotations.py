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

from .images import IMAGE_SUFFIXES, ImageLoadError, load_image
from .references import TRAITS_FILE, ReferencesError, Support, load_traits, save_support, unique_stem

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


def _polygon(flat: list[float], h: int, w: int) -> np.ndarray:
    """A polygon (x0, y0, x1, y1, ...) rasterised exactly as COCO tools do."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([list(map(float, flat))], h, w))).astype(bool)


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
    for n, ann in enumerate(data["annotations"]):
        where = f"annotation {ann.get('id', n)}" if isinstance(ann, dict) else f"annotation #{n}"
        try:
            image = images[int(ann["image_id"])]
            name = names[int(ann["category_id"])]
            h, w = int(image["height"]), int(image["width"])
            seg = ann["segmentation"]
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationError(path, f"{where}: missing or unknown image_id/category_id/segmentation ({exc!r})") from exc
        try:
            if isinstance(seg, list):  # polygons
                if not seg:
                    continue
                rles = mask_utils.frPyObjects([list(map(float, p)) for p in seg], h, w)
                mask = mask_utils.decode(mask_utils.merge(rles))
            elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
                mask = mask_utils.decode(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg, dict) and isinstance(seg.get("counts"), str):  # compressed RLE
                mask = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
            else:
                raise ValueError("segmentation is neither polygons nor RLE")
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise AnnotationError(path, f"{where}: bad segmentation ({exc})") from exc
        if mask.shape != (h, w):
            raise AnnotationError(path, f"{where}: RLE size {mask.shape[1]}x{mask.shape[0]} differs from image size {w}x{h}")
        entry = out.setdefault(image["id"], Annotated(_resolve(str(image.get("file_name", "")), images_dir)))
        _union(entry.masks, name, mask.astype(bool))
    return list(out.values())


# -- CVAT for images 1.1 -------------------------------------------------------------------


def _cvat_rle(counts: str, left: int, top: int, width: int, height: int, h: int, w: int) -> np.ndarray:
    """CVAT's mask RLE: run lengths, row-major inside the box, alternating 0 and 1, from 0."""
    runs = [int(c) for c in counts.split(",") if c.strip()]
    if sum(runs) != width * height:
        raise ValueError(f"RLE covers {sum(runs)} pixels, the {width}x{height} box {width * height}")
    flat = np.zeros(width * height, bool)
    pos = 0
    for k, run in enumerate(runs):
        if k % 2:
            flat[pos : pos + run] = True
        pos += run
    out = np.zeros((h, w), bool)
    box = out[top : top + height, left : left + width]
    if box.shape != (height, width):
        raise ValueError(f"mask box {left},{top} {width}x{height} leaves the {w}x{h} image")
    box[:] = flat.reshape(height, width)
    return out


def read_cvat(path: Path, images_dir: Path) -> list[Annotated]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise AnnotationError(path, f"not valid XML ({exc})") from exc
    if root.tag != "annotations":
        raise AnnotationError(path, f"not a CVAT for images export (root element <{root.tag}>, expected <annotations>)")
    out = []
    for image in root.iter("image"):
        try:
            name, h, w = image.attrib["name"], int(image.attrib["height"]), int(image.attrib["width"])
        except (KeyError, ValueError) as exc:
            raise AnnotationError(path, f"<image> without name/width/height ({exc!r})") from exc
        entry = Annotated(_resolve(name, images_dir))
        for shape in image:
            label = shape.attrib.get("label")
            where = f"image {name!r}, <{shape.tag} label={label!r}>"
            if shape.tag not in ("polygon", "box", "mask"):
                continue
            if not label:
                raise AnnotationError(path, f"{where}: no label")
            a = shape.attrib
            try:
                if shape.tag == "polygon":
                    flat = [float(v) for pt in a["points"].split(";") for v in pt.split(",")]
                    mask = _polygon(flat, h, w)
                elif shape.tag == "box":
                    x0, y0, x1, y1 = (float(a[k]) for k in ("xtl", "ytl", "xbr", "ybr"))
                    mask = _polygon([x0, y0, x1, y0, x1, y1, x0, y1], h, w)
                else:
                    mask = _cvat_rle(a["rle"], *(int(float(a[k])) for k in ("left", "top", "width", "height")), h, w)
            except (KeyError, ValueError) as exc:
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
    the values are an RGBA image whose alpha channel is the mask."""
    bits = _Bits(bytes(rle))
    num = bits.read(32)
    word = bits.read(5) + 1
    widths = [bits.read(4) + 1 for _ in range(4)]
    if num != h * w * 4:
        raise ValueError(f"brush RLE holds {num} values, a {w}x{h} RGBA image {h * w * 4}")
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        repeat = bits.read(1)
        j = min(num, i + 1 + bits.read(widths[bits.read(2)]))
        if repeat:
            out[i:j] = bits.read(word)
        else:
            out[i:j] = [bits.read(word) for _ in range(j - i)]
        i = j
    return out.reshape(h, w, 4)[..., 3] > 0


def read_labelstudio(path: Path, images_dir: Path) -> list[Annotated]:
    data = _load_json(path)
    if not isinstance(data, list) or not all(isinstance(t, dict) and "data" in t for t in data):
        raise AnnotationError(path, "not a Label Studio JSON export (expected a list of tasks with 'data')")
    out = []
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
                    w, h = int(res["original_width"]), int(res["original_height"])
                    label = value[kind][0]
                    if kind == "brushlabels":
                        if value.get("format", "rle") != "rle":
                            raise ValueError(f"brush format {value.get('format')!r} (expected 'rle')")
                        mask = _labelstudio_brush(value["rle"], h, w)
                    elif kind == "polygonlabels":
                        mask = _polygon([c * s / 100.0 for x, y in value["points"] for c, s in ((x, w), (y, h))], h, w)
                    else:
                        if value.get("rotation"):
                            raise ValueError("rotated rectangles are not supported")
                        x0, y0 = value["x"] * w / 100.0, value["y"] * h / 100.0
                        x1, y1 = x0 + value["width"] * w / 100.0, y0 + value["height"] * h / 100.0
                        mask = _polygon([x0, y0, x1, y0, x1, y1, x0, y1], h, w)
                except (KeyError, IndexError, TypeError, ValueError) as exc:
                    raise AnnotationError(path, f"{where}: {exc!r}") from exc
                _union(entry.masks, label, mask)
        if entry.masks:
            out.append(entry)
    return out


# -- label images ------------------------------------------------------------------------------


def _read_label_image(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            arr = np.squeeze(tifffile.imread(path))
        except Exception as exc:  # tifffile raises several unrelated types for bad files
            raise AnnotationError(path, f"not a readable TIFF ({exc})") from exc
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                if img.mode not in ("L", "P", "I", "I;16", "1"):
                    raise AnnotationError(path, f"a label image must be single-channel, got mode {img.mode}")
                arr = np.asarray(img)
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
    new ids. A support whose name is taken is refused, never overwritten.
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
        try:
            h, w = load_image(a.image_path).shape[:2]
        except ImageLoadError as exc:
            raise AnnotationError(path, f"annotated image unusable: {exc}") from exc
        for name, mask in a.masks.items():
            if mask.shape != (h, w):
                raise AnnotationError(path, f"{a.image_path.name}: annotation of {name!r} is {mask.shape[1]}x{mask.shape[0]}, the image {w}x{h}")
        if unique_stem(refs_dir / group, a.image_path.stem) != a.image_path.stem:
            raise AnnotationError(path, f"{a.image_path.name}: group {group!r} already has a support named "
                                        f"{a.image_path.stem!r}; not overwriting it")
    written = []
    for a in annotated:
        try:
            written.append(save_support(refs_dir, group, a.image_path.stem, a.image_path, a.masks))
        except ReferencesError as exc:
            raise AnnotationError(path, f"{a.image_path.name}: {exc}") from exc
    return written
