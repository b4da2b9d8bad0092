"""`sst-search segment` end to end on synthetic specimens (random SAM 2 weights, the test image size)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sst_search.cli import app
from sst_search.images import load_mask
from tests.fixtures import TEST_IMAGE_SIZE

runner = CliRunner()


def _support_args(synthetic, group):
    ref_dir = synthetic.references / group
    image = next(p for p in sorted(ref_dir.glob("*.png")) if not p.name.endswith(".mask.png"))
    return ["--support", str(image), "--support-mask", str(image.with_name(image.stem + ".mask.png")), "--traits", str(ref_dir / "traits.yaml")]


def _common(out):
    return ["--out", str(out), "--weights", "random", "--image-size", str(TEST_IMAGE_SIZE), "--device", "cpu", "--quiet"]


def test_segment_writes_masks_overlays_summary_and_survives_bad_query(synthetic, tmp_path):
    group = synthetic.groups[0]
    queries = sorted((synthetic.root / "images" / group).glob("*.png"))[:2]
    bad = tmp_path / "bad_query.jpg"
    bad.write_text("this is not a picture")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["segment", *map(str, queries), str(bad), *_support_args(synthetic, group), *_common(out), "--overlay", "--quality"]
    )
    assert result.exit_code == 1, result.output  # one query failed, the others are done
    assert "bad_query" in result.output and "WARNING" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] == {"sha256": "random", "path": None, "random": True}
    assert summary["mode"] == "pairwise" and summary["model"] == "sam2.1-hiera-tiny"
    assert summary["counts"] == {"ok": 2, "failed": 1, "total": 3}
    assert summary["images"]["bad_query"]["status"] == "failed"
    assert str(bad) in summary["images"]["bad_query"]["error"]
    for q in queries:
        mask = load_mask(out / f"{q.stem}.png")
        assert mask.shape == np.asarray(Image.open(q)).shape[:2]
        assert (out / f"{q.stem}.overlay.png").exists()
        entry = summary["images"][q.stem]
        assert entry["orientation"] == 0
        for name, stats in entry["traits"].items():
            assert stats["area"] == int((mask == stats["id"]).sum())
            assert stats["quality"] is not None and 0.0 <= stats["quality"] <= 1.0
            assert stats["object_score"] is not None and 0.0 <= stats["predicted_iou"] <= 1.0
            if stats["area"]:
                x0, y0, x1, y1 = stats["bbox"]
                ys, xs = np.nonzero(mask == stats["id"])
                assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_segment_chain_mode_and_folder_input(synthetic, tmp_path):
    group = synthetic.groups[1]
    out = tmp_path / "chain"
    folder = tmp_path / "queries"  # two images: a chain of more adds time, not behaviour
    folder.mkdir()
    for image in sorted((synthetic.root / "images" / group).glob("*.png"))[:2]:
        shutil.copy(image, folder)
    result = runner.invoke(app, ["segment", str(folder), *_support_args(synthetic, group), *_common(out), "--mode", "chain"])
    assert result.exit_code == 0, result.output
    written = sorted(p.stem for p in out.glob("*.png"))
    assert written == sorted(p.stem for p in folder.glob("*.png"))
    assert json.loads((out / "summary.json").read_text())["mode"] == "chain"


def test_bad_support_mask_is_a_clear_error(synthetic, tmp_path):
    group = synthetic.groups[0]
    args = _support_args(synthetic, group)
    small = tmp_path / "small.mask.png"
    Image.fromarray(np.ones((10, 10), np.uint8)).save(small)
    args[3] = str(small)
    query = next((synthetic.root / "images" / group).glob("*.png"))
    result = runner.invoke(app, ["segment", str(query), *args, *_common(tmp_path / "o")])
    assert result.exit_code == 2
    assert "small.mask.png" in result.output and "differs from image size" in result.output


@pytest.mark.parametrize("option", [["--mode", "zigzag"], ["--orientation", "45"]])
def test_unknown_mode_or_orientation_is_rejected(synthetic, tmp_path, option):
    group = synthetic.groups[0]
    query = next((synthetic.root / "images" / group).glob("*.png"))
    result = runner.invoke(app, ["segment", str(query), *_support_args(synthetic, group), *_common(tmp_path / "o"), *option])
    assert result.exit_code == 2 and option[0] in result.output


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "sst_search.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "segment" in proc.stdout
