"""Exports of an index for analysis outside sst-search: measurements, masks, failures.

Curators take trait measurements into R or a spreadsheet, masks into other segmentation
tools, and the list of failed items back to whoever fixes the images. Every export but the
crops reads the catalog only (never the image files), so it works on a published snapshot anywhere.

- :func:`measurements_table`: one row per (specimen, trait) with the Darwin Core metadata
  as columns and every trait measurement; :func:`to_csv_bytes` / :func:`to_parquet_bytes`
  serialise it.
- Darwin Core Archives are :mod:`sst_search.dwca_export`'s.
- :func:`iter_crops` / :func:`crops_zip`: each specimen or trait cut out of its image
  (alpha = mask, or black outside), as the published SST tool's segment-and-crop does.
- :func:`masks_zip`: one single-channel PNG label map per specimen (0 = background,
  k = trait k of its group) plus ``labels.csv`` naming every label value.
- :func:`coco_dataset`: a COCO-style dict whose annotations carry the stored RLE masks and
  whose categories are the traits (by name, so one trait shared by several groups is one
  category).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone

import cv2
import numpy as np
import pandas as pd

from .measure import FIELD_NAMES
from .store import Store, decode_mask

#: Darwin Core terms shown first; other metadata columns follow alphabetically.
DWC_COLUMNS = ("catalogNumber", "scientificName", "institutionCode", "eventDate", "locality")
#: Per-trait columns of a measurements table, after the specimen's ids and metadata.
PER_TRAIT_COLUMNS = ("trait_id", "trait", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "quality", "source",
                     "unit", "pixels_per_mm", "scale_source", *FIELD_NAMES)


def _metadata_columns(metadata: Iterable[dict]) -> list[str]:
    keys = set().union(*metadata) if metadata else set()
    return [k for k in DWC_COLUMNS if k in keys] + sorted(keys - set(DWC_COLUMNS))


def measurements_table(
    store: Store, groups: Iterable[str] | None = None, specimen_ids: Iterable[int] | None = None
) -> pd.DataFrame:
    """One row per trait mask of every indexed specimen in scope: ids, metadata, the mask's area
    (pixels), bbox (exclusive ends), cycle-consistency quality and source, then the trait's
    measurements (:data:`sst_search.measure.FIELDS`; ``unit`` says whether the mm columns are filled)."""
    frame = store.measurements_frame(specimen_ids=specimen_ids, groups=groups)
    metadata = [json.loads(m) if m else {} for m in frame["metadata"]]
    meta_cols = _metadata_columns(metadata)
    meta = pd.DataFrame.from_records([{k: md.get(k) for k in meta_cols} for md in metadata], columns=meta_cols)
    df = pd.concat([frame[["specimen_id", "path", "group"]], meta, frame[list(PER_TRAIT_COLUMNS)]], axis=1)
    df["quality"] = df["quality"].astype("float64")
    for col in ("specimen_id", "trait_id", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"):
        df[col] = df[col].astype("int64")
    return df


def failures_table(store: Store) -> pd.DataFrame:
    """Items that could not be indexed, with the reason, for whoever fixes the images."""
    return store.failures()


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def to_parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _specimen_masks(
    store: Store, groups: Iterable[str] | None, specimen_ids: Iterable[int] | None
) -> Iterator[tuple[tuple, list[tuple]]]:
    """``((specimen_id, path, group, width, height, image URL), [(trait_id, trait_name, rle, area, bbox...,
    quality), ...])`` per specimen with masks."""
    current, masks = None, []
    for r in store.mask_rows(groups=groups, specimen_ids=specimen_ids):
        if current is not None and r[0] != current[0]:
            yield current, masks
            masks = []
        current = (*r[:5], r[16])
        masks.append(r[6:15])
    if current is not None:
        yield current, masks


def mask_file_names(specimens: Iterable[tuple[int, str, str | None, str | None]], suffix: str = ".png") -> dict[int, str]:
    """``specimen_id -> "<group>/<image stem>.png"`` for ``(specimen_id, path, group, image URL)``: the
    layout of a ground-truth folder, so ``sst-search eval-seg`` matches exported masks by group and
    stem (:func:`~sst_search.sources.naming.image_stem`: a URL image by its URL, not its cached
    file). Two images of one group with the same stem get ``<stem>-<specimen_id>.png``."""
    from .sources.naming import image_stem

    stems = {sid: (group or "", image_stem(path, source)) for sid, path, group, source in specimens}
    counts: dict[tuple[str, str], int] = {}
    for key in stems.values():
        counts[key] = counts.get(key, 0) + 1
    return {sid: f"{group or '_'}/{stem if counts[(group, stem)] == 1 else f'{stem}-{sid}'}{suffix}"
            for sid, (group, stem) in stems.items()}


def masks_zip(store: Store, groups: Iterable[str] | None = None, specimen_ids: Iterable[int] | None = None) -> bytes:
    """A zip of one PNG label map per specimen, ``<group>/<stem>.png`` (see :func:`mask_file_names`),
    plus ``labels.csv`` (file, specimen, label value, trait)."""
    per_specimen = list(_specimen_masks(store, groups, specimen_ids))
    names = mask_file_names((row[0], row[1], row[2], row[5]) for row, _ in per_specimen)
    buf = io.BytesIO()
    labels = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for (sid, path, group, *_), masks in per_specimen:
            first = decode_mask(masks[0][2])
            label_map = np.zeros(first.shape, np.uint8)
            for trait_id, trait_name, rle, *_ in masks:
                label_map[decode_mask(rle)] = trait_id
                labels.append({"file": names[sid], "specimen_id": sid, "group": group,
                               "label": trait_id, "trait": trait_name})
            ok, png = cv2.imencode(".png", label_map)
            if not ok:
                raise RuntimeError(f"specimen {sid} ({path}): PNG encoding of its label map failed")
            zf.writestr(names[sid], png.tobytes())
        zf.writestr("labels.csv", pd.DataFrame(labels, columns=["file", "specimen_id", "group", "label", "trait"])
                    .to_csv(index=False))
    return buf.getvalue()


def coco_dataset(store: Store, groups: Iterable[str] | None = None, specimen_ids: Iterable[int] | None = None) -> dict:
    """COCO-style dict: images = specimens (id = specimen_id), one annotation per trait mask with
    its compressed RLE, categories = trait names. Loadable by ``pycocotools.coco.COCO``."""
    per_specimen = list(_specimen_masks(store, groups, specimen_ids))
    names = sorted({m[1] for _, masks in per_specimen for m in masks})
    category = {name: i for i, name in enumerate(names, start=1)}
    images, annotations = [], []
    for (sid, path, group, width, height, _), masks in per_specimen:
        images.append({"id": sid, "file_name": path, "width": width, "height": height, "group": group})
        for trait_id, trait_name, rle, area, x0, y0, x1, y1, quality in masks:
            annotations.append({
                "id": len(annotations) + 1, "image_id": sid, "category_id": category[trait_name],
                "segmentation": json.loads(rle), "area": area, "bbox": [x0, y0, x1 - x0, y1 - y0],
                "iscrowd": 0, "trait_id": trait_id, "quality": quality,
            })
    return {
        "info": {"description": "sst-search trait masks", "date_created": datetime.now(timezone.utc).isoformat()},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "trait"} for n, i in category.items()],
    }


def to_json_bytes(obj: dict) -> bytes:
    return json.dumps(obj).encode("utf-8")


# -- crops ----------------------------------------------------------------------------------

BACKGROUNDS = ("transparent", "black")


def iter_crops(
    store: Store, trait: str | None = None, background: str = "transparent",
    groups: Iterable[str] | None = None, specimen_ids: Iterable[int] | None = None,
    skipped: list[tuple[str, str]] | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """``(file name, crop)`` per specimen: the specimen (all its traits) or one ``trait`` cut out
    of its image at the mask's box, at full resolution (:class:`~sst_search.originals.Originals`:
    an IIIF image indexed at the model's size is fetched in full, once). ``transparent``: RGBA
    whose alpha is the mask; ``black``: RGB with everything outside the mask black. An
    unreadable image is skipped and appended to ``skipped`` as ``(path, reason)``: one moved
    file must not stop an export."""
    from .images import ImageLoadError
    from .masks import cutout
    from .originals import Originals, fit_mask
    from .sources.naming import image_stem

    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, not {background!r}")
    with Originals(store) as originals:
        for (sid, path, _, _, _, source), masks in _specimen_masks(store, groups, specimen_ids):
            chosen = [m for m in masks if trait is None or m[1] == trait]
            if not chosen:
                continue
            mask = np.zeros(decode_mask(chosen[0][2]).shape, bool)
            for m in chosen:
                mask |= decode_mask(m[2])
            try:
                image = originals.load(sid, path)
                mask = fit_mask(mask, image.shape[:2], path)
            except ImageLoadError as exc:
                if skipped is not None:
                    skipped.append((exc.path, exc.reason))
                continue
            ys, xs = np.nonzero(mask)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            crop = cutout(image[y0:y1, x0:x1], mask[y0:y1, x0:x1], background)
            yield f"{image_stem(path, source)}{'_' + _safe(trait) if trait else ''}_{sid}.png", crop


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG of an RGB or RGBA uint8 array (Pillow keeps the alpha channel exactly)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def crops_zip(store: Store, trait: str | None = None, background: str = "transparent",
              groups: Iterable[str] | None = None, skipped: list[tuple[str, str]] | None = None) -> bytes:
    """Every crop of :func:`iter_crops` in one zip (what the app offers for download)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, crop in iter_crops(store, trait, background, groups, skipped=skipped):
            zf.writestr(name, png_bytes(crop))
    return buf.getvalue()
