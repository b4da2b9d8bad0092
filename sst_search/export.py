"""Exports of an index for analysis outside sst-search: measurements, masks, failures.

Curators take trait measurements into R or a spreadsheet, masks into other segmentation
tools, and the list of failed items back to whoever fixes the images. Every export reads
the catalog only (never the image files), so it works on a published snapshot anywhere.

- :func:`measurements_table`: one row per (specimen, trait) with the Darwin Core metadata
  as columns; :func:`to_csv_bytes` / :func:`to_parquet_bytes` serialise it.
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
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .store import Store, decode_mask

#: Darwin Core terms shown first; other metadata columns follow alphabetically.
DWC_COLUMNS = ("catalogNumber", "scientificName", "institutionCode", "eventDate", "locality")
MEASUREMENT_COLUMNS = ("trait_id", "trait", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "quality", "source")


def _scope(groups: Iterable[str] | None, specimen_ids: Iterable[int] | None) -> tuple[str, list]:
    """WHERE clause over ``specimens s`` for indexed specimens in the given groups / ids."""
    clauses, params = ["s.status = 'indexed'"], []
    if groups is not None:
        clauses.append("s.group_name IN (SELECT unnest(?::VARCHAR[]))")
        params.append([str(g) for g in groups])
    if specimen_ids is not None:
        clauses.append("s.specimen_id IN (SELECT unnest(?::BIGINT[]))")
        params.append([int(i) for i in specimen_ids])
    return " AND ".join(clauses), params


def _metadata_columns(metadata: Iterable[dict]) -> list[str]:
    keys = set().union(*metadata) if metadata else set()
    return [k for k in DWC_COLUMNS if k in keys] + sorted(keys - set(DWC_COLUMNS))


def measurements_table(
    store: Store, groups: Iterable[str] | None = None, specimen_ids: Iterable[int] | None = None
) -> pd.DataFrame:
    """One row per trait mask of every indexed specimen in scope: ids, metadata, area (pixels),
    bbox (exclusive ends), cycle-consistency quality and mask source."""
    where, params = _scope(groups, specimen_ids)
    rows = store.con.execute(
        "SELECT s.specimen_id, s.path, s.group_name, s.metadata, t.trait_id, t.trait_name, t.area, "
        "t.bbox_x0, t.bbox_y0, t.bbox_x1, t.bbox_y1, t.quality, t.source "
        f"FROM trait_masks t JOIN specimens s USING (specimen_id) WHERE {where} "
        "ORDER BY s.group_name, s.path, t.trait_id",
        params,
    ).fetchall()
    metadata = [json.loads(r[3]) if r[3] else {} for r in rows]
    meta_cols = _metadata_columns(metadata)
    records = [
        {"specimen_id": r[0], "path": r[1], "group": r[2], **{k: md.get(k) for k in meta_cols},
         **dict(zip(MEASUREMENT_COLUMNS, r[4:]))}
        for r, md in zip(rows, metadata)
    ]
    columns = ["specimen_id", "path", "group", *meta_cols, *MEASUREMENT_COLUMNS]
    df = pd.DataFrame.from_records(records, columns=columns)
    df["quality"] = df["quality"].astype("float64")
    for col in ("specimen_id", "trait_id", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"):
        df[col] = df[col].astype("int64")
    return df


def failures_table(store: Store) -> pd.DataFrame:
    """Items that could not be indexed, with the reason, for whoever fixes the images."""
    return store.con.execute(
        "SELECT specimen_id, path, group_name AS \"group\", status, error, updated_at FROM specimens "
        "WHERE status IN ('failed', 'no_reference') ORDER BY group_name, path"
    ).df()


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def to_parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _specimen_masks(
    store: Store, groups: Iterable[str] | None, specimen_ids: Iterable[int] | None
) -> Iterator[tuple[tuple, list[tuple]]]:
    """``(specimen row, [(trait_id, trait_name, rle, area, bbox..., quality), ...])`` per specimen with masks."""
    where, params = _scope(groups, specimen_ids)
    rows = store.con.execute(
        "SELECT s.specimen_id, s.path, s.group_name, s.width, s.height, t.trait_id, t.trait_name, t.rle, t.area, "
        "t.bbox_x0, t.bbox_y0, t.bbox_x1, t.bbox_y1, t.quality "
        f"FROM trait_masks t JOIN specimens s USING (specimen_id) WHERE {where} ORDER BY s.specimen_id, t.trait_id",
        params,
    ).fetchall()
    current, masks = None, []
    for r in rows:
        if current is not None and r[0] != current[0]:
            yield current, masks
            masks = []
        current = r[:5]
        masks.append(r[5:])
    if current is not None:
        yield current, masks


def mask_file_name(specimen_id: int, path: str) -> str:
    """``<specimen_id>_<image stem>.png``: unique by id, recognisable by stem."""
    return f"{specimen_id}_{Path(path).stem}.png"


def masks_zip(store: Store, groups: Iterable[str] | None = None, specimen_ids: Iterable[int] | None = None) -> bytes:
    """A zip of one PNG label map per specimen plus ``labels.csv`` (file, specimen, label value, trait)."""
    buf = io.BytesIO()
    labels = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for (sid, path, group, _, _), masks in _specimen_masks(store, groups, specimen_ids):
            first = decode_mask(masks[0][2])
            label_map = np.zeros(first.shape, np.uint8)
            for trait_id, trait_name, rle, *_ in masks:
                label_map[decode_mask(rle)] = trait_id
                labels.append({"file": mask_file_name(sid, path), "specimen_id": sid, "group": group,
                               "label": trait_id, "trait": trait_name})
            ok, png = cv2.imencode(".png", label_map)
            if not ok:
                raise RuntimeError(f"specimen {sid} ({path}): PNG encoding of its label map failed")
            zf.writestr(mask_file_name(sid, path), png.tobytes())
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
    for (sid, path, group, width, height), masks in per_specimen:
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
