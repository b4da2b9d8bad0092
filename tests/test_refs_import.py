"""Annotations from COCO, CVAT, Label Studio and label images become supports whose masks equal
the source annotation; bad files fail naming the file and write nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from sst_search.annotations import AnnotationError, import_annotations
from sst_search.cli import app
from sst_search.images import save_image
from sst_search.references import (
    MASK_SUFFIX,
    TRAITS_FILE,
    Trait,
    load_group_references,
    load_traits,
    write_traits,
)
from sst_search.store import encode_mask

H, W = 24, 32
#: Boxes (x0, y0, x1, y1), exclusive ends: COCO tools rasterise integer-corner polygons to exactly these pixels.
BOXES = {"forewing_band": (2, 3, 14, 10), "apical_spot": (18, 12, 29, 20)}


def _truth() -> dict[str, np.ndarray]:
    out = {}
    for name, (x0, y0, x1, y1) in BOXES.items():
        m = np.zeros((H, W), bool)
        m[y0:y1, x0:x1] = True
        out[name] = m
    # an irregular mask (not a box) for the formats that carry masks, not polygons
    out["apical_spot"][12, 29:31] = True
    out["apical_spot"][19:23, 20] = True
    return out


def _polygon(name: str) -> list[float]:
    x0, y0, x1, y1 = BOXES[name]
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _box_truth(name: str) -> np.ndarray:
    x0, y0, x1, y1 = BOXES[name]
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "ann" / "spec_001.jpg"
    save_image(path, np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))
    return path


def _loaded_masks(refs: Path, group: str, stem: str) -> dict[str, np.ndarray]:
    (support,) = [s for s in load_group_references(refs / group) if s.id == stem]
    return {support.traits[t].name: support.mask == t for t in support.trait_ids}


def _assert_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), name


def _coco(photo: Path, segmentations: dict[str, object]) -> Path:
    names = list(segmentations)
    data = {
        "images": [{"id": 7, "file_name": photo.name, "height": H, "width": W}],
        "categories": [{"id": 10 + i, "name": n} for i, n in enumerate(names)],
        "annotations": [{"id": i, "image_id": 7, "category_id": 10 + i, "segmentation": seg, "iscrowd": 0}
                        for i, seg in enumerate(segmentations.values())],
    }
    path = photo.parent / "coco.json"
    path.write_text(json.dumps(data))
    return path


def _runs(flat: np.ndarray) -> list[int]:
    """Run lengths alternating background / foreground, starting with background (COCO and CVAT both do)."""
    counts, current, run = [], False, 0
    for value in flat.astype(bool):
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    return [*counts, run]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    return {"size": [H, W], "counts": _runs(mask.flatten(order="F"))}  # COCO runs are column-major


def test_coco_polygons_compressed_and_uncompressed_rle_round_trip(photo, tmp_path):
    truth = _truth()
    refs = tmp_path / "refs"
    coco = _coco(photo, {"forewing_band": [_polygon("forewing_band")], "apical_spot": json.loads(encode_mask(truth["apical_spot"]))})
    (support,) = import_annotations(coco, refs, "papilio")
    assert Path(support.image_path) == refs / "papilio" / "spec_001.jpg"
    assert (refs / "papilio" / "spec_001.jpg").read_bytes() == photo.read_bytes()  # the original file, not a re-encode
    _assert_equal(_loaded_masks(refs, "papilio", "spec_001"), {"forewing_band": truth["forewing_band"], "apical_spot": truth["apical_spot"]})

    other = photo.with_name("spec_002.png")
    save_image(other, np.zeros((H, W, 3), np.uint8))
    coco2 = _coco(other, {"apical_spot": _uncompressed_rle(truth["apical_spot"]), "hindwing_eye": [_polygon("forewing_band")]})
    import_annotations(coco2, refs, "papilio")
    traits = load_traits(refs / "papilio" / TRAITS_FILE)
    assert {t.name: k for k, t in traits.items()} == {"forewing_band": 1, "apical_spot": 2, "hindwing_eye": 3}
    _assert_equal(_loaded_masks(refs, "papilio", "spec_002"), {"apical_spot": truth["apical_spot"], "hindwing_eye": truth["forewing_band"]})


def test_cvat_polygon_box_and_mask_round_trip(photo, tmp_path):
    truth = _truth()
    spot = truth["apical_spot"]
    ys, xs = np.nonzero(spot)
    left, top, right, bottom = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    runs = _runs(spot[top:bottom, left:right].flatten())  # CVAT runs are row-major, inside the box
    x0, y0, x1, y1 = BOXES["forewing_band"]
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
  <image id="0" name="{photo.name}" width="{W}" height="{H}">
    <polygon label="forewing_band" points="{x0},{y0};{x1},{y0};{x1},{y1};{x0},{y1}" occluded="0"/>
    <mask label="apical_spot" rle="{', '.join(map(str, runs))}" left="{left}" top="{top}" width="{right - left}" height="{bottom - top}"/>
    <box label="thorax" xtl="20" ytl="1" xbr="30" ybr="6" occluded="0"/>
  </image>
</annotations>"""
    path = tmp_path / "cvat.xml"
    path.write_text(xml)
    import_annotations(path, tmp_path / "refs", "g", images_dir=photo.parent)
    thorax = np.zeros((H, W), bool)
    thorax[1:6, 20:30] = True
    _assert_equal(_loaded_masks(tmp_path / "refs", "g", "spec_001"),
                  {"forewing_band": truth["forewing_band"], "apical_spot": spot, "thorax": thorax})


def test_labelstudio_polygons_and_rectangles_round_trip(photo, tmp_path):
    x0, y0, x1, y1 = BOXES["forewing_band"]
    sx0, sy0, sx1, sy1 = BOXES["apical_spot"]
    pct = lambda v, s: v * 100.0 / s  # noqa: E731
    tasks = [{
        "id": 1, "data": {"image": f"/data/upload/1/3f2a9c1e-{photo.name}"},
        "annotations": [{"result": [
            {"id": "a", "type": "polygonlabels", "original_width": W, "original_height": H,
             "value": {"points": [[pct(x, W), pct(y, H)] for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))],
                       "polygonlabels": ["forewing_band"]}},
            {"id": "b", "type": "rectanglelabels", "original_width": W, "original_height": H,
             "value": {"x": pct(sx0, W), "y": pct(sy0, H), "width": pct(sx1 - sx0, W), "height": pct(sy1 - sy0, H),
                       "rotation": 0, "rectanglelabels": ["apical_spot"]}},
        ]}],
    }]
    path = photo.parent / "ls.json"
    path.write_text(json.dumps(tasks))
    import_annotations(path, tmp_path / "refs", "g")
    _assert_equal(_loaded_masks(tmp_path / "refs", "g", "spec_001"),
                  {"forewing_band": _box_truth("forewing_band"), "apical_spot": _box_truth("apical_spot")})


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_label_images_round_trip_with_names_from_a_traits_file(photo, tmp_path, suffix):
    truth = _truth()
    labels = np.zeros((H, W), np.uint16 if suffix == ".tif" else np.uint8)
    labels[truth["forewing_band"]] = 4
    labels[truth["apical_spot"]] = 9
    path = photo.parent / f"spec_001_labels{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, labels)  # napari saves labels as integer TIFFs
    else:
        Image.fromarray(labels, "L").save(path)
    names = tmp_path / "names.yaml"
    write_traits(names, {4: Trait(id=4, name="forewing_band"), 9: Trait(id=9, name="apical_spot")})
    import_annotations(path, tmp_path / "refs", "g", label_names=names)
    _assert_equal(_loaded_masks(tmp_path / "refs", "g", "spec_001"), truth)


def test_bad_files_name_the_file_and_write_nothing(photo, tmp_path):
    refs = tmp_path / "refs"
    broken = photo.parent / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(AnnotationError, match=r"broken\.json: not valid JSON"):
        import_annotations(broken, refs, "g")

    unknown = _coco(photo, {"band": [_polygon("forewing_band")]})
    data = json.loads(unknown.read_text())
    data["annotations"][0]["category_id"] = 99
    unknown.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"coco\.json: annotation 0: missing or unknown"):
        import_annotations(unknown, refs, "g")

    missing = _coco(photo.with_name("nowhere.jpg"), {"band": [_polygon("forewing_band")]})
    with pytest.raises(AnnotationError, match=r"coco\.json: annotated image unusable: .*nowhere\.jpg: file does not exist"):
        import_annotations(missing, refs, "g")

    labels = photo.parent / "spec_001.mask.png"
    Image.fromarray(np.full((H, W), 3, np.uint8), "L").save(labels)
    with pytest.raises(AnnotationError, match=r"spec_001\.mask\.png: label values \[3\] have no name"):
        import_annotations(labels, refs, "g")
    assert not refs.exists()


def test_an_existing_support_is_never_overwritten_and_the_cli_says_why(photo, tmp_path):
    refs = tmp_path / "refs"
    coco = _coco(photo, {"band": [_polygon("forewing_band")]})
    runner = CliRunner()
    first = runner.invoke(app, ["refs", "import", str(coco), "--refs", str(refs), "--group", "g"])
    assert first.exit_code == 0, first.output
    mask_before = (refs / "g" / f"spec_001{MASK_SUFFIX}").read_bytes()

    again = _coco(photo, {"band": [_polygon("apical_spot")]})
    second = runner.invoke(app, ["refs", "import", str(again), "--refs", str(refs), "--group", "g"])
    assert second.exit_code == 2
    assert "coco.json" in second.output and "already has a different support named 'spec_001'" in second.output
    assert (refs / "g" / f"spec_001{MASK_SUFFIX}").read_bytes() == mask_before
    assert [s.id for s in load_group_references(refs / "g")] == ["spec_001"]


def _brush_rle(alpha: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of an RGBA image with this alpha (repeat runs only, 8-bit words)."""
    values = np.zeros((*alpha.shape, 4), np.uint8)
    values[..., 3] = alpha
    flat = values.ravel()
    widths = [3, 4, 8, 16]
    bits = f"{flat.size:032b}{7:05b}" + "".join(f"{x - 1:04b}" for x in widths)
    i = 0
    while i < flat.size:
        j = i
        while j < flat.size and flat[j] == flat[i] and j - i < 1 << 16:
            j += 1
        k = next(k for k, width in enumerate(widths) if j - i - 1 < 1 << width)
        bits += f"1{k:02b}{j - i - 1:0{widths[k]}b}{flat[i]:08b}"
        i = j
    bits += "0" * (-len(bits) % 8)
    return [int(bits[n : n + 8], 2) for n in range(0, len(bits), 8)]


def test_labelstudio_brush_masks_round_trip(photo, tmp_path):
    truth = _truth()
    result = [{"id": name, "type": "brushlabels", "original_width": W, "original_height": H,
               "value": {"format": "rle", "rle": _brush_rle(mask.astype(np.uint8) * 255), "brushlabels": [name]}}
              for name, mask in truth.items()]
    path = photo.parent / "ls.json"
    path.write_text(json.dumps([{"id": 1, "data": {"image": photo.name}, "annotations": [{"result": result}]}]))
    import_annotations(path, tmp_path / "refs", "g")
    _assert_equal(_loaded_masks(tmp_path / "refs", "g", "spec_001"), truth)

    result[0]["value"]["rle"] = result[0]["value"]["rle"][:10]
    path.write_text(json.dumps([{"id": 1, "data": {"image": photo.name}, "annotations": [{"result": result}]}]))
    with pytest.raises(AnnotationError, match=r"ls\.json: task 1, result forewing_band \(brushlabels\).*ends early"):
        import_annotations(path, tmp_path / "refs2", "g")


_KILLED_IMPORT = """
import os, sys
from sst_search import references
from sst_search.annotations import import_annotations

save_mask, calls = references.save_mask, []

def killed(path, label_map):  # the third support's mask is in its staging folder, nothing linked yet
    save_mask(path, label_map)
    calls.append(path)
    if len(calls) == 3:
        os._exit(9)

references.save_mask = killed
import_annotations(sys.argv[1], sys.argv[2], "g")
"""


def test_an_import_killed_part_way_is_finished_by_running_it_again(tmp_path):
    import os
    import subprocess
    import sys

    folder = tmp_path / "ann"
    names = [f"spec_{i:03d}.jpg" for i in range(6)]
    for i, name in enumerate(names):
        save_image(folder / name, np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8))
    coco = folder / "coco.json"
    coco.write_text(json.dumps({
        "images": [{"id": i, "file_name": n, "height": H, "width": W} for i, n in enumerate(names)],
        "categories": [{"id": 1, "name": "forewing_band"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "segmentation": [_polygon("forewing_band")]}
                        for i in range(len(names))]}))
    refs = tmp_path / "refs"
    killed = subprocess.run([sys.executable, "-c", _KILLED_IMPORT, str(coco), str(refs)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert len(load_group_references(refs / "g")) == 2 and [p for p in (refs / "g").iterdir() if p.name.startswith(".")]

    rest = import_annotations(coco, refs, "g")
    assert sorted(Path(s.image_path).name for s in rest) == names[2:]
    supports = load_group_references(refs / "g")
    assert sorted(Path(s.image_path).name for s in supports) == names
    assert not [p for p in (refs / "g").iterdir() if p.name.startswith(".")]  # no staging folder left
    assert all(np.array_equal(s.mask == 1, _box_truth("forewing_band")) for s in supports)
    assert import_annotations(coco, refs, "g") == []  # a third run has nothing left to do


def test_labelstudio_brush_literal_runs_keep_only_alpha():
    from sst_search.annotations import _labelstudio_brush

    values = [9, 9, 9, 255, 9, 9, 9, 0, 1, 2, 3, 4]  # a 3x1 RGBA image listed word by word: alpha 255, 0, 4
    bits = f"{len(values):032b}" + f"{7:05b}" + f"{3:04b}" * 4  # count, 8-bit words, run widths of 4 bits
    bits += "0" + "00" + f"{len(values) - 1:04b}" + "".join(f"{v:08b}" for v in values)  # one literal run
    bits += "0" * (-len(bits) % 8)
    rle = [int(bits[k:k + 8], 2) for k in range(0, len(bits), 8)]
    assert _labelstudio_brush(rle, 1, 3).tolist() == [[True, False, True]]
