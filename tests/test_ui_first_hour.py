"""The app in the first hour: readable names in pick lists, drawing by hand without SAM 2
weights, and a way to hand the app a checkpoint (`sst-search ui --weights`)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from sst_search.cli import app as cli
from sst_search.commands.ui import streamlit_command
from sst_search.query import SearchEngine
from ui.state import specimen_label, weights_from_args


def test_pick_list_labels_name_a_specimen_once():
    row = {"path": "/c/0010007.jpg", "source": None, "group_name": "Lycorma delicatula", "status": "indexed",
           "metadata": {"catalogNumber": "0010007"}}
    assert specimen_label(row) == "0010007 (Lycorma delicatula)"
    other = {**row, "path": "/c/IMG_4411.jpg"}
    assert specimen_label(other) == "0010007 · IMG_4411 (Lycorma delicatula)"
    assert specimen_label({**other, "status": "failed", "metadata": {}}) == "IMG_4411 (Lycorma delicatula) [failed]"


def _editor_without_sam2():
    import numpy as np

    from ui.editor import mask_editor

    mask_editor(None, np.zeros((40, 60, 3), np.uint8), "k")


def test_the_editor_draws_by_hand_without_sam2():
    at = AppTest.from_function(_editor_without_sam2, default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    assert at.radio(key="k-tool").options == ["Brush", "Eraser"]  # no clicks to ask a model that is not there


def test_ui_weights_reach_the_app_and_a_missing_checkpoint_is_refused(indexed, tmp_path):
    _, ui_db = indexed
    bad = CliRunner().invoke(cli, ["ui", "--db", str(ui_db), "--weights", str(tmp_path / "sam2.pt")])
    assert bad.exit_code == 2 and "sam2.pt: no such checkpoint file" in bad.output
    command = streamlit_command(ui_db, 8600, weights="/ckpt/sam2.1_hiera_tiny.pt")
    assert weights_from_args(command[command.index("--") + 1:]) == "/ckpt/sam2.1_hiera_tiny.pt"
    with SearchEngine.open(ui_db, weights="/ckpt/sam2.1_hiera_tiny.pt") as engine:
        assert engine.config.segmentation.weights == "/ckpt/sam2.1_hiera_tiny.pt"
    with SearchEngine.open(ui_db) as engine:
        assert engine.config.segmentation.weights == "random"  # what the run recorded
