"""configs/default.yaml documents the defaults; it must not drift from the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from sst_search.config import Config, apply_overrides, load_config

DEFAULTS = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def test_default_yaml_matches_code_defaults():
    assert load_config(DEFAULTS) == Config()


def test_unknown_keys_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("segmentation:\n  imagesize: 512\n")
    with pytest.raises(ValueError, match=r"(?s)bad.yaml.*imagesize"):
        load_config(bad)


def test_overrides_win_over_the_file_and_none_means_not_given():
    base = Config.model_validate({"segmentation": {"image_size": 512, "mode": "chain"}})
    merged = apply_overrides(base, image_size=256, mode=None, embedder_weights="random")
    assert merged.segmentation.image_size == 256 and merged.segmentation.mode == "chain"
    assert merged.embedding.weights == "random"
    with pytest.raises(ValueError, match="imagesize"):
        apply_overrides(base, imagesize=256)
