"""Loaders for published trait-mask datasets and plain image/mask folders.

The published datasets ship masks and split files, while the images stay at their
original URLs (Zenodo, Hugging Face). Users download the images themselves, so a loader
resolves each image under a local root by file name and *reports* what it cannot find
or read instead of stopping: evaluating 480 of 500 specimens is useful, and the report
says which 20 are missing and why.

Supported layouts:

* Cambridge butterflies (Heliconius, SST ``data/cambridge_butterfly``): split files with
  rows ``[id, image_url, mask_path]`` and the minor-species file
  ``{species: [[id, image_url, mask_path, symmetry], ...]}``. Masks are 1024x1024
  whatever the image size; :func:`load_record_mask` resizes them to the image.
  Some images are camera raw (``.CR2``) files: a JPEG/TIFF with the same stem under the
  root is used instead, otherwise the item is reported as an unreadable raw file.
* NEON beetles (``metadata.json``): parallel lists ``url``, ``mask_path``, ``species``.
* Plain folders: ``<stem>.<ext>`` + ``<stem>.mask.png`` side by side, or ``images/`` +
  ``masks/`` (or ``ground_truth/``) trees with matching relative stems.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image

from ..images import IMAGE_SUFFIXES, ImageLoadError, load_mask
from ..references import MASK_SUFFIX

#: Camera raw formats Pillow cannot decode; they need converting before use.
RAW_SUFFIXES = (".cr2", ".cr3", ".nef", ".arw", ".dng", ".orf", ".raf", ".rw2")

#: Sub-folder names holding the label masks of an ``images/`` tree.
MASK_DIRS = ("masks", "ground_truth")


class DatasetFormatError(ValueError):
    """A split/metadata file does not have the expected structure; names the file."""


class ProblemKind(str, Enum):
    IMAGE_MISSING = "image_missing"
    RAW_IMAGE = "raw_image"
    IMAGE_UNREADABLE = "image_unreadable"
    MASK_MISSING = "mask_missing"
    BAD_ROW = "bad_row"


@dataclass(frozen=True)
class ItemProblem:
    item_id: str
    group: str
    kind: ProblemKind
    message: str


@dataclass(frozen=True)
class MaskRecord:
    """One annotated specimen. ``image_path`` is None when no usable image was found
    (the mask can still be scored at its own resolution); ``image_size`` is (H, W) as a
    viewer shows it (EXIF rotation applied), None without an image."""

    item_id: str
    group: str
    image_path: Path | None
    mask_path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None


@dataclass
class MaskDataset:
    """Records plus everything that went wrong while resolving them."""

    name: str
    records: list[MaskRecord] = field(default_factory=list)
    problems: list[ItemProblem] = field(default_factory=list)

    def __iter__(self) -> Iterator[MaskRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def groups(self) -> list[str]:
        return sorted({r.group for r in self.records})

    def problems_of(self, kind: ProblemKind) -> list[ItemProblem]:
        return [p for p in self.problems if p.kind is kind]

    @property
    def missing_images(self) -> list[ItemProblem]:
        """Items without a usable image, whatever the reason (absent, raw, unreadable)."""
        kinds = {ProblemKind.IMAGE_MISSING, ProblemKind.RAW_IMAGE, ProblemKind.IMAGE_UNREADABLE}
        return [p for p in self.problems if p.kind in kinds]

    def summary(self) -> str:
        with_image = sum(r.image_path is not None for r in self.records)
        lines = [f"{self.name}: {len(self.records)} masks, {with_image} with images, {len(self.groups)} groups"]
        counts: dict[ProblemKind, int] = defaultdict(int)
        for p in self.problems:
            counts[p.kind] += 1
        lines += [f"  {kind.value}: {n}" for kind, n in counts.items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------- images


def _viewed_size(path: Path) -> tuple[int, int]:
    """(H, W) after EXIF rotation, read from the header only (no pixel decoding)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):
                w, h = h, w
    except (OSError, ValueError) as exc:
        raise ImageLoadError(path, f"not a readable image ({exc})") from exc
    return h, w


class ImageFinder:
    """Finds images under a local root by file name, case-insensitively.

    The root is indexed once (one directory walk), because collections are searched
    thousands of times. When the exact name is absent or is a raw file, an image with
    the same stem and a readable suffix is accepted: that is what a converted raw or a
    re-encoded download looks like.
    """

    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None
        self._by_stem: dict[str, list[Path]] = defaultdict(list)
        if self.root is not None:
            if not self.root.is_dir():
                raise FileNotFoundError(f"{self.root}: image root is not a directory")
            for path in sorted(self.root.rglob("*")):
                if path.is_file():
                    self._by_stem[path.stem.lower()].append(path)

    def find(self, file_name: str, group: str | None = None) -> tuple[Path | None, tuple[int, int] | None, ItemProblem | None]:
        """``(path, (H, W), None)`` or ``(None, None, problem)``; the problem's ids are blank."""

        def problem(kind: ProblemKind, msg: str) -> tuple[None, None, ItemProblem]:
            return None, None, ItemProblem("", group or "", kind, msg)

        if self.root is None:
            return problem(ProblemKind.IMAGE_MISSING, f"{file_name}: no image root given")
        wanted = PurePosixPath(file_name)
        same_stem = self._by_stem.get(wanted.stem.lower(), [])
        readable = [p for p in same_stem if p.suffix.lower() in IMAGE_SUFFIXES]
        # The exact name first, then files in the group's folder, then anything else.
        readable.sort(key=lambda p: (p.name.lower() != wanted.name.lower(), p.parent.name != group))
        if readable:
            path = readable[0]
            try:
                return path, _viewed_size(path), None
            except ImageLoadError as exc:
                return problem(ProblemKind.IMAGE_UNREADABLE, str(exc))
        raws = [p for p in same_stem if p.suffix.lower() in RAW_SUFFIXES]
        if raws:
            return problem(
                ProblemKind.RAW_IMAGE,
                f"{raws[0]}: camera raw file ({raws[0].suffix}) cannot be decoded; convert it "
                f"(e.g. dcraw -T or rawpy) to {wanted.stem}.tif or {wanted.stem}.jpg under {self.root}",
            )
        return problem(
            ProblemKind.IMAGE_MISSING,
            f"{file_name}: not found under {self.root} (looked for {wanted.stem}.* in every sub-folder)",
        )


def fit_mask_to_image(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a label mask to ``size`` (H, W) with nearest neighbour, so no label is
    invented by interpolation between two traits."""
    if mask.shape[:2] == tuple(size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))


def load_record_mask(record: MaskRecord) -> np.ndarray:
    """The record's label mask at its image's size when the image is known, else as stored."""
    mask = load_mask(record.mask_path)
    return fit_mask_to_image(mask, record.image_size) if record.image_size else mask


# --------------------------------------------------------------------------- loaders


def _read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{path}: not valid JSON ({exc})") from exc


def _url_name(url: str) -> str:
    return unquote(PurePosixPath(urlparse(str(url)).path).name)


def _find_mask_root(start: Path, mask_rel: str | None) -> Path:
    """The split files live a few folders below the dataset root that mask paths are
    relative to; walk up until the first mask resolves (or keep ``start``)."""
    if mask_rel:
        for candidate in (start, *list(start.parents)[:4]):
            if (candidate / mask_rel).is_file():
                return candidate
    return start


class _Builder:
    """Shared bookkeeping: resolve the mask and image of one item, record problems."""

    def __init__(self, name: str, mask_root: Path, finder: ImageFinder):
        self.dataset = MaskDataset(name)
        self.mask_root = mask_root
        self.finder = finder

    def bad_row(self, where: str, message: str) -> None:
        self.dataset.problems.append(ItemProblem(where, "", ProblemKind.BAD_ROW, message))

    def add(self, item_id: str, group: str, image_name: str, mask_rel: str, extra: dict[str, Any]) -> None:
        mask_path = self.mask_root / mask_rel
        if not mask_path.is_file():
            self.dataset.problems.append(
                ItemProblem(item_id, group, ProblemKind.MASK_MISSING, f"{mask_path}: mask file does not exist")
            )
            return
        image_path, size, problem = self.finder.find(image_name, group)
        if problem is not None:
            self.dataset.problems.append(ItemProblem(item_id, group, problem.kind, problem.message))
        self.dataset.records.append(MaskRecord(item_id, group, image_path, mask_path, extra, size))


def load_cambridge_butterfly(
    split_file: Path, image_root: Path | None = None, mask_root: Path | None = None
) -> MaskDataset:
    """Cambridge butterfly split (``[id, url, mask]`` rows) or minor-species file.

    ``group`` is the species: the dict key of the minor-species file, else the folder two
    levels above the mask (``.../Major_spefies_data/<species>/pkl/masks_<id>.png``).
    ``extra`` holds ``image_url``, ``image_name`` and, for minor species, ``symmetry``
    as ``{trait_id: pair_index}`` (traits sharing an index are left/right copies).
    """
    split_file = Path(split_file)
    raw = _read_json(split_file)
    if isinstance(raw, dict):
        rows = [(species, row) for species, items in raw.items() for row in (items if isinstance(items, list) else [items])]
    elif isinstance(raw, list):
        rows = [(None, row) for row in raw]
    else:
        raise DatasetFormatError(
            f"{split_file}: expected a list of [id, image_url, mask_path] rows or a "
            f"{{species: [[id, image_url, mask_path, symmetry], ...]}} mapping, got {type(raw).__name__}"
        )
    first_mask = next((r[2] for _, r in rows if isinstance(r, list) and len(r) >= 3), None)
    root = Path(mask_root) if mask_root is not None else _find_mask_root(split_file.parent, first_mask)
    build = _Builder(f"cambridge_butterfly:{split_file.name}", root, ImageFinder(image_root))
    for n, (species, row) in enumerate(rows):
        if not isinstance(row, list) or len(row) not in (3, 4) or not all(isinstance(v, (str, int)) for v in row[:3]):
            build.bad_row(f"row {n}", f"{split_file}: row {n}: expected [id, image_url, mask_path(, symmetry)], got {row!r:.120}")
            continue
        item_id, url, mask_rel = str(row[0]), str(row[1]), str(row[2])
        extra: dict[str, Any] = {"image_url": url, "image_name": _url_name(url)}
        if len(row) == 4:
            try:
                extra["symmetry"] = {int(k): int(v) for k, v in dict(row[3]).items()}
            except (TypeError, ValueError):
                build.bad_row(item_id, f"{split_file}: row {n}: symmetry must map trait id -> pair index, got {row[3]!r:.120}")
                continue
        group = species if species is not None else PurePosixPath(mask_rel).parent.parent.name
        build.add(item_id, group, extra["image_name"], mask_rel, extra)
    return build.dataset


def load_neon_beetles(
    metadata_file: Path, image_root: Path | None = None, mask_root: Path | None = None
) -> MaskDataset:
    """NEON beetle masks: ``{"url": [...], "mask_path": [...], "species": [...]}``.

    ``item_id`` is the image's file stem (``beetle_900_895``), ``group`` the species;
    images are looked up as ``<root>/<species>/<name>`` first, then by name anywhere.
    ``mask_root`` defaults to the metadata file's folder.
    """
    metadata_file = Path(metadata_file)
    raw = _read_json(metadata_file)
    keys = ("url", "mask_path", "species")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), list) for k in keys):
        raise DatasetFormatError(f"{metadata_file}: expected a mapping with list values for {', '.join(keys)}")
    lengths = {k: len(raw[k]) for k in keys}
    if len(set(lengths.values())) != 1:
        raise DatasetFormatError(f"{metadata_file}: lists differ in length {lengths}")
    root = Path(mask_root) if mask_root is not None else metadata_file.parent
    build = _Builder(f"neon_beetles:{metadata_file.name}", root, ImageFinder(image_root))
    for n, (url, mask_rel, species) in enumerate(zip(*(raw[k] for k in keys))):
        if not all(isinstance(v, str) and v for v in (url, mask_rel, species)):
            build.bad_row(f"entry {n}", f"{metadata_file}: entry {n}: url, mask_path and species must be non-empty strings")
            continue
        name = _url_name(url)
        build.add(PurePosixPath(name).stem, species, name, mask_rel, {"image_url": url, "image_name": name})
    return build.dataset


def _mask_stem(path: Path) -> str:
    return path.name[: -len(MASK_SUFFIX)] if path.name.lower().endswith(MASK_SUFFIX) else path.stem


def load_mask_folder(root: Path) -> MaskDataset:
    """Image/mask pairs from a folder (see the module docstring for both layouts).

    ``group`` is the sub-folder relative to ``root`` (or to ``images/``), "" at the top;
    ``item_id`` is the file stem. Images without a mask are reported, not dropped silently.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    mask_dir = next((root / d for d in MASK_DIRS if (root / d).is_dir()), None)
    image_dir = root / "images" if (root / "images").is_dir() and mask_dir else root
    mask_dir = mask_dir or root
    dataset = MaskDataset(f"folder:{root}")

    def key(path: Path, base: Path) -> tuple[str, str]:
        rel = path.relative_to(base)
        return rel.parent.as_posix().strip("."), _mask_stem(path)

    masks: dict[tuple[str, str], Path] = {}
    for path in sorted(mask_dir.rglob("*.png")):
        if mask_dir is not root or path.name.lower().endswith(MASK_SUFFIX):
            masks[key(path, mask_dir)] = path
    images: dict[tuple[str, str], Path] = {}
    for path in sorted(image_dir.rglob("*")):
        in_mask_tree = mask_dir != root and mask_dir in path.parents
        if path.suffix.lower() in IMAGE_SUFFIXES + RAW_SUFFIXES and not in_mask_tree:
            if path.is_file() and not path.name.lower().endswith(MASK_SUFFIX):
                images.setdefault(key(path, image_dir), path)
    for (group, stem), mask_path in masks.items():
        image, size = images.get((group, stem)), None
        if image is None:
            dataset.problems.append(ItemProblem(stem, group, ProblemKind.IMAGE_MISSING, f"{mask_path}: no image named {stem}.* beside it"))
        elif image.suffix.lower() in RAW_SUFFIXES:
            dataset.problems.append(ItemProblem(stem, group, ProblemKind.RAW_IMAGE, f"{image}: camera raw file cannot be decoded; convert it to JPEG or TIFF"))
            image = None
        else:
            try:
                size = _viewed_size(image)
            except ImageLoadError as exc:
                dataset.problems.append(ItemProblem(stem, group, ProblemKind.IMAGE_UNREADABLE, str(exc)))
                image = None
        dataset.records.append(MaskRecord(stem, group, image, mask_path, {}, size))
    for (group, stem), image in images.items():
        if (group, stem) not in masks:
            dataset.problems.append(ItemProblem(stem, group, ProblemKind.MASK_MISSING, f"{image}: no label mask for this image"))
    return dataset
