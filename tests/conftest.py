"""Shared fixtures: a small synthetic collection and the real SAM 2 hiera-t with random weights."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SST_SEARCH_ALLOW_DOWNLOAD", "0")

#: Small enough for CPU tests, large enough that traits survive SAM 2's 1/4-resolution masks.
TEST_IMAGE_SIZE = 256


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    from sst_search.synthetic import generate_collection

    return generate_collection(tmp_path_factory.mktemp("synthetic"), species=3, per_species=4, seed=7)


@pytest.fixture(scope="session")
def tracker():
    from sst_search.builder import build_tracker

    return build_tracker("sam2.1-hiera-tiny", weights="random", image_size=TEST_IMAGE_SIZE, device="cpu")


@pytest.fixture(scope="session")
def references(synthetic):
    from sst_search.references import load_references

    return load_references(synthetic.references)
