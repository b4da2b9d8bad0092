"""configs/default.yaml documents the defaults; it must not drift from the code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sst_search.config import Config, apply_overrides, load_config, recorded

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


def test_a_recorded_configuration_drops_what_this_version_does_not_know():
    """A run recorded by a newer writer still reads (file configs stay strict, above)."""
    data = Config(segmentation={"image_size": 256}).model_dump()
    data["segmentation"]["temporal_smoothing"] = True
    data["gallery"] = {"columns": 4}
    config = recorded(Config, json.dumps(data), "run 3")
    assert config.segmentation.image_size == 256 and config == Config(segmentation={"image_size": 256})
    with pytest.raises(ValueError, match="image_size"):
        recorded(Config, {"segmentation": {"image_size": "big"}})  # a known setting is still validated
