"""``segment --instances`` writes each photo's instances (id map, COCO, cut-outs) and
``eval-instances`` scores id maps against ground truth (random SAM 2 weights: plumbing only;
recall and precision with real weights cannot be produced here)."""

from __future__ import annotations

import json
import shutil

import numpy as np
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from sst_search.cli import app
from sst_search.evaluation.instance_scores import evaluate_instance_folders
from sst_search.images import load_mask, save_mask
from sst_search.synthetic import generate_drawers
from tests.ui_index import IMAGE_SIZE

OPEN = """instances:
  points_per_side: 2
  pred_iou_thresh: 0.0
  stability_score_thresh: 0.0
  min_area: 0.0
  max_area: 1.0
  min_score: 0.0
  max_candidates: 2
"""


def test_segment_instances_writes_id_map_coco_and_cutouts(tmp_path):
    drawers = generate_drawers(tmp_path / "d", counts=(3,), size=(128, 160), reference_count=1)
    (tmp_path / "open.yaml").write_text(OPEN)
    refs = drawers.instance_references
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "segment", str(drawers.root / "images"), "--instances", "--support", str(refs / "tray-ref.png"),
        "--support-mask", str(refs / "tray-ref.mask.png"), "--traits", str(refs / "traits.yaml"), "--out", str(out),
        "--weights", "random", "--image-size", str(IMAGE_SIZE), "--device", "cpu", "--config", str(tmp_path / "open.yaml"),
        "--background", "black",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["photos"]["drawer-000"]
    assert summary["kind"] == "specimen" and entry["status"] == "ok" and entry["count"] >= 1
    id_map = load_mask(out / "drawer-000.instances.png")
    coco = json.loads((out / "drawer-000.coco.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "specimen"}]
    assert [a["id"] for a in coco["annotations"]] == [i["number"] for i in entry["instances"]]
    for ann, inst in zip(coco["annotations"], entry["instances"]):
        decoded = mask_utils.decode(ann["segmentation"]).astype(bool)
        x0, y0, x1, y1 = inst["box"]
        assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0] and int(decoded.sum()) == ann["area"] == inst["area"]
        assert not ((id_map == inst["number"]) & ~decoded).any()  # an id only ever paints its own mask
        if inst["score"] == max(i["score"] for i in entry["instances"]):
            assert (id_map[decoded] == inst["number"]).all()  # where instances overlap, the better one shows
    assert sorted(p.name for p in (out / "drawer-000").iterdir()) == [f"{i['number']:03d}.png" for i in entry["instances"]]

    # eval-instances on the CLI, and the scoring itself on known answers.
    gt = drawers.ground_truth / "instances"
    scored = CliRunner().invoke(app, ["eval-instances", str(out), str(gt)])
    assert scored.exit_code == 0 and "recall" in scored.output
    perfect = tmp_path / "perfect"
    shutil.copytree(gt, perfect)
    report = evaluate_instance_folders(perfect, gt)
    assert (report.truth, report.recall, report.precision, report.count_error) == (3, 1.0, 1.0, 0.0)
    truth = load_mask(gt / "drawer-000.png")
    half = np.where(truth == 1, 0, truth)  # specimen 1 missed
    half[:4, :4] = 9  # and a false positive
    save_mask(perfect / "drawer-000.png", half)
    report = evaluate_instance_folders(perfect, gt)
    assert (report.matched, report.predicted, report.recall, report.precision) == (2, 3, 2 / 3, 2 / 3)
    (tmp_path / "none").mkdir()
    nothing = evaluate_instance_folders(tmp_path / "none", gt)
    assert nothing.missing == ["drawer-000"] and (nothing.recall, nothing.precision) == (0.0, 1.0)
    assert CliRunner().invoke(app, ["eval-instances", str(tmp_path / "nope"), str(gt)]).exit_code == 2
