"""Shared fixtures: a small synthetic collection, the real SAM 2 hiera-t with random weights, and
one indexed, published collection for every test that only reads an index."""

from __future__ import annotations

import os

if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    # Each xdist worker (and the CLI runs it starts) gets its share of the cores: torch's default,
    # one thread per core in every worker, oversubscribes the machine and stalls in thread barriers.
    # Set before anything imports torch, which reads it once. numba (under umap) shares torch's
    # OpenMP runtime and sets its thread count to NUMBA_NUM_THREADS (all cores) when its
    # threading layer starts: torch in that worker would then run two threads from there on.
    share = str(max(1, (os.cpu_count() or 1) // workers))
    os.environ.setdefault("OMP_NUM_THREADS", share)
    os.environ.setdefault("NUMBA_NUM_THREADS", share)

import pytest

from tests.app_server import (  # noqa: F401  (fixtures of the app tests)
    app_server,
    app_server_process,
    chromium,
    chromium_process,
    ui_db,
)
from tests.fixtures import (
    INDEXED_PER_SPECIES,
    INDEXED_SEED,
    INDEXED_SPECIES,
    NEXT_TEST,
    TEST_IMAGE_SIZE,
    build_once_per_run,
    index_synthetic,
    needed_next,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The CLI's rich output wraps at the console width (80 columns without a terminal); tests look for
# whole paths in it, and temporary paths (longer under xdist: .../popen-gw0/...) must not be cut.
os.environ.setdefault("COLUMNS", "300")
os.environ.setdefault("SST_SEARCH_ALLOW_DOWNLOAD", "0")


#: Fixtures that take seconds to set up and serve every test of the run (or module) that asks for
#: them: the app server and Chromium; a Ray cluster, and the fine-tuned SAM 2 of test_finetune.py.
FIRST_WORKER_FIXTURES, SECOND_WORKER_FIXTURES = {"app_server", "chromium"}, {"ray_cluster", "trained"}


def pytest_collection_modifyitems(items):
    """Order the tests so that each costly fixture is set up by one xdist worker, not by both:
    ``--dist worksteal`` hands the first half of the collection to one worker and the second half
    to the other, then steals only from the tail of a queue. The tests using the app and the
    browser go first (the head of the first half), those using Ray or the fine-tuned model at
    the middle (the head of the second half). (``--dist loadgroup`` would say this directly,
    but it does not group under pytest 9: xdist rewrites a node id pytest no longer reads.)
    Under ``-n 0`` only the order changes."""
    first = [item for item in items if FIRST_WORKER_FIXTURES & set(item.fixturenames)]
    second = [item for item in items if SECOND_WORKER_FIXTURES & set(item.fixturenames) and item not in first]
    rest = [item for item in items if item not in first and item not in second]
    cut = max(0, len(items) // 2 - len(first))
    items[:] = [*first, *rest[:cut], *second, *rest[cut:]]


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


def pytest_unconfigure(config):
    """The worker's interpreter would walk every object torch and the model libraries created
    in a last garbage collection at exit (a second or more, after the last test): as
    ``sst-search`` does (:func:`sst_search.cli.main`), freeze them out of it."""
    import gc

    gc.freeze()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    NEXT_TEST["item"] = nextitem  # for the fixtures that stop a service early (tests.fixtures.needed_next)
    return (yield)


@pytest.fixture
def ray_cluster():
    """One local Ray cluster of 2 CPUs for the tests that need Ray, which run one after another
    on one worker (:func:`pytest_collection_modifyitems`): starting one costs seconds, and
    runners join an initialised cluster instead of starting their own. It is shut down after
    the last of them, not at the end of the run: its seven idle processes keep using CPU."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if not needed_next("ray_cluster"):
        ray.shutdown()


@pytest.fixture(scope="session")
def indexed(tmp_path_factory, worker_id):
    """``(collection, db)``: a synthetic collection indexed once per run with its ground-truth
    masks (no SAM 2 needed) and colour-pattern vectors, published (:func:`tests.fixtures.index_synthetic`).
    Read it (``SearchEngine.open``, ``Store.open(read_only=True)``); copy it before writing."""
    return build_once_per_run(tmp_path_factory, worker_id, "indexed",
                              lambda root: index_synthetic(root, INDEXED_SPECIES, INDEXED_PER_SPECIES, INDEXED_SEED))
