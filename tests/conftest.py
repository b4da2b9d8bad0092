"""Shared fixtures: a small synthetic collection, the real SAM 2 hiera-t with random weights, and
one indexed, published collection for every test that only reads an index."""

from __future__ import annotations

import os

if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    # Each xdist worker (and the CLI runs it starts) gets its share of the cores: torch's default,
    # one thread per core in every worker, oversubscribes the machine and stalls in thread barriers.
    # Set before anything imports torch, which reads it once.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

import pytest

from tests.app_server import app_server, chromium, ui_db  # noqa: F401  (session fixtures of the app tests)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The CLI's rich output wraps at the console width (80 columns without a terminal); tests look for
# whole paths in it, and temporary paths (longer under xdist: .../popen-gw0/...) must not be cut.
os.environ.setdefault("COLUMNS", "300")
os.environ.setdefault("SST_SEARCH_ALLOW_DOWNLOAD", "0")

#: Small enough for CPU tests (a quarter of the compute of 256 px), large enough that traits
#: survive SAM 2's 1/4-resolution (32 x 32) masks.
TEST_IMAGE_SIZE = 128

#: The session's indexed collection (:func:`indexed`): species, specimens per species, seed.
INDEXED_SPECIES, INDEXED_PER_SPECIES, INDEXED_SEED = 3, 5, 11
#: Its run configuration: random SAM 2 at the test size, the weight-free colour-pattern embedder.
INDEXED_CONFIG = {
    "segmentation": {"weights": "random", "image_size": TEST_IMAGE_SIZE, "device": "cpu"},
    "embedding": {"embedder": "color-pattern"},
}


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


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster of 2 CPUs for every test that needs Ray: starting one costs
    seconds, and runners join an initialised cluster instead of starting their own."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def indexed(tmp_path_factory):
    """``(collection, db)``: a synthetic collection indexed once per session with its
    ground-truth masks (no SAM 2 needed) and colour-pattern vectors, published. Read it (``SearchEngine.open``,
    ``Store.open(read_only=True)``); copy it before writing."""
    from indexer.job import run_index
    from sst_search.config import Config
    from sst_search.synthetic import generate_collection

    root = tmp_path_factory.mktemp("indexed")
    coll = generate_collection(root / "syn", species=INDEXED_SPECIES, per_species=INDEXED_PER_SPECIES, seed=INDEXED_SEED)
    db = root / "db.duckdb"
    summary = run_index(coll.manifest, coll.references, db, Config.model_validate(INDEXED_CONFIG), masks=coll.ground_truth)
    assert summary.counts["indexed"] == INDEXED_SPECIES * INDEXED_PER_SPECIES
    return coll, db
