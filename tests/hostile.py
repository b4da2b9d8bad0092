"""The third round of hostile inputs, as small files written on demand: annotation files whose
geometry would exhaust memory or crash the rasteriser, image headers declaring gigapixels,
file names with markup, a Latin-1 file declared UTF-8.

Each generator writes into a folder and returns what the test needs. ``python -m
tests.hostile OUT`` writes the whole set into OUT, so the next round starts from it."""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

#: The annotated photo every annotation file below refers to.
PHOTO, H, W = "spec_001.png", 24, 32


def png_header(width: int, height: int, colour_type: int = 0) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (grey, or RGB with ``colour_type=2``)
    and whose data is one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose frame header (SOF0) is rewritten to declare ``width`` x ``height``."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def photo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PHOTO
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
    return path


def _coco(segmentation, height: object = H, width: object = W, annotations: int = 1, categories: int = 1) -> str:
    return json.dumps({
        "images": [{"id": 1, "file_name": PHOTO, "height": height, "width": width}],
        "categories": [{"id": c, "name": f"trait{c}"} for c in range(1, categories + 1)],
        "annotations": [{"id": a, "image_id": 1, "category_id": 1 + a % categories, "segmentation": segmentation}
                        for a in range(annotations)],
    })


def _cvat(shape: str, height: object = H, width: object = W) -> str:
    return (f'<annotations><image id="0" name="{PHOTO}" width="{width}" height="{height}">{shape}</image>'
            "</annotations>")


def _labelstudio(result: dict, height: object = H, width: object = W) -> str:
    return json.dumps([{"id": 1, "data": {"image": f"/data/upload/1/{PHOTO}"}, "annotations": [{"result": [
        {"id": "r", "original_width": width, "original_height": height, **result}]}]}])


#: name -> (file name, content, what the one-line error must say). Every one is under 1 kB
#: except where a count itself is the attack; all of them made the import grow without
#: bound, crash or print a traceback before the checks existed.
ANNOTATIONS: dict[str, tuple[str, str, str]] = {
    "coco_nan_vertex": ("nan.json", _coco([[1, 1, float("nan"), 5, 9, 9]]), "not a finite number"),
    "coco_inf_vertex": ("inf.json", _coco([[1, 1, float("inf"), 5, 9, 9]]), "not a finite number"),
    "coco_1e30_vertex": ("far.json", _coco([[1, 1, 1e30, 5, 9, 9]]), "far outside"),
    "coco_two_points": ("two.json", _coco([[1, 1, 9, 9]]), "at least 3 points"),
    "coco_string_vertex": ("str.json", _coco([["a" * 100, 1, 2, 3, 4, 5]]), "not numbers"),
    "coco_many_vertices": ("many.json", _coco([[1, 2] * 150_001]), "over the limit"),
    "coco_rle_1e12": ("rle.json", _coco({"size": [H, W], "counts": [0, 10**12]}), "runs cover"),
    "coco_rle_short": ("short.json", _coco({"size": [H, W], "counts": [10, 10]}), "runs cover"),
    "coco_rle_negative": ("neg.json", _coco({"size": [H, W], "counts": [H * W + 5, -5]}), "non-negative"),
    "coco_rle_size_mismatch": ("size.json", _coco({"size": [10**6, 10**6], "counts": [0, 10**12]}), "differs"),
    "coco_rle_string_overrun": ("str_rle.json", _coco({"size": [H, W], "counts": "Z" * 200}), "RLE"),
    "coco_negative_width": ("negw.json", _coco([[1, 1, 9, 1, 9, 9]], width=-32), "not positive"),
    "coco_gigapixel_declared": ("giga.json", _coco([[1, 1, 9, 1, 9, 9]], 100_000, 100_000), "exceeds the limit"),
    "coco_nan_height": ("nanh.json", _coco([[1, 1, 9, 1, 9, 9]], height=float("nan")), "image size"),
    "coco_not_the_image_size": ("cats.json", _coco([[1, 1, 9, 1, 9, 9]], 15_000, 15_000, annotations=3, categories=3),
                                "annotated as 15000x15000, the image is 32x24"),
    "coco_many_categories": ("cats.json", _coco([[1, 1, 9, 1, 9, 9]], annotations=40, categories=40),
                             "split the file"),  # with the limit lowered by the test
    "cvat_nan_polygon": ("nan.xml", _cvat('<polygon label="band" points="1,1;nan,5;9,9"/>'), "not a finite number"),
    "cvat_1e30_polygon": ("far.xml", _cvat('<polygon label="band" points="1,1;1e30,5;9,9"/>'), "far outside"),
    "cvat_box_inf": ("box.xml", _cvat('<box label="band" xtl="0" ytl="0" xbr="inf" ybr="5"/>'), "not a finite number"),
    "cvat_rle_1e12": ("rle.xml", _cvat('<mask label="band" rle="0,1000000000000" left="0" top="0" width="1000000" '
                                       'height="1000000"/>'), "leaves"),
    "cvat_rle_sum": ("rle2.xml", _cvat('<mask label="band" rle="0,5,3" left="0" top="0" width="4" height="4"/>'),
                     "runs cover"),
    "cvat_negative_size": ("negs.xml", _cvat('<box label="band" xtl="0" ytl="0" xbr="5" ybr="5"/>', width=-1),
                           "not positive"),
    "cvat_huge_coordinate": ("huge.xml", _cvat('<mask label="band" rle="1" left="1e400" top="0" width="1" height="1"/>'),
                             "band"),
    "labelstudio_nan_points": ("nan_ls.json", _labelstudio({"type": "polygonlabels", "value": {
        "points": [[1, 1], [float("nan"), 5], [9, 9]], "polygonlabels": ["band"]}}), "not a finite number"),
    "labelstudio_string_x": ("str_ls.json", _labelstudio({"type": "rectanglelabels", "value": {
        "x": "x" * 1000, "y": 0, "width": 5, "height": 5, "rectanglelabels": ["band"]}}), "could not convert"),
    "labelstudio_gigapixel_brush": ("brush.json", _labelstudio({"type": "brushlabels", "value": {
        "format": "rle", "rle": [0, 0, 0, 0], "brushlabels": ["band"]}}, 10**6, 10**6), "exceeds the limit"),
}


def write_annotations(folder: Path) -> dict[str, tuple[Path, str]]:
    """Every hostile annotation file beside the photo they annotate: name -> (file, expected message)."""
    photo(folder)
    out = {}
    for name, (file_name, content, needle) in ANNOTATIONS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        path = folder / name / file_name
        path.write_text(content)
        (folder / name / PHOTO).write_bytes((folder / PHOTO).read_bytes())
        out[name] = (path, needle)
    return out


#: Image headers that declare far more pixels than any specimen: refused before decoding.
BOMBS = {"bomb.png": png_header(60_000, 60_000), "bomb.jpg": jpeg_header(60_000, 60_000),
         "label_bomb.png": png_header(60_000, 60_000)}


def write_bombs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, data in BOMBS.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-round3")
    for name, (path, needle) in write_annotations(root / "annotations").items():
        print(f"{path}\texpect: {needle}")
    for path in write_bombs(root / "images").values():
        print(f"{path}\texpect: exceeds the limit")
