"""What tests build their data from: one run configuration (the real SAM 2 with random weights,
the colour-pattern embedder) and one way to make a small indexed store, so that no test restates
either. The session fixtures built from them live in :mod:`tests.conftest`."""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from filelock import FileLock

T = TypeVar("T")

#: Small enough for CPU tests (a query tracks in about 75 ms, 95 ms at 128 px), large enough
#: that traits survive SAM 2's 1/4-resolution (24 x 24) masks.
TEST_IMAGE_SIZE = 96


def random_weights_settings(**sections: dict) -> dict:
    """The tests' run settings as a config file holds them: the real SAM 2 hiera-t with random
    weights at :data:`TEST_IMAGE_SIZE` on the CPU and the weight-free colour-pattern embedder.
    Each keyword is a config section whose values are laid over these (``indexer={"commit_every": 1}``)."""
    settings = {
        "segmentation": {"weights": "random", "image_size": TEST_IMAGE_SIZE, "device": "cpu"},
        "embedding": {"embedder": "color-pattern"},
    }
    for section, values in sections.items():
        settings[section] = {**settings.get(section, {}), **values}
    return settings


def random_weights_config(**sections: dict):
    """:func:`random_weights_settings` as a validated :class:`~sst_search.config.Config`."""
    from sst_search.config import Config

    return Config.model_validate(random_weights_settings(**sections))


def index_synthetic(root: Path, species: int, per_species: int, seed: int, config=None, **collection):
    """``(collection, db)``: a synthetic collection generated under ``root`` and indexed into
    ``root/db.duckdb`` with its ground-truth masks standing in for SAM 2 (segmentation is not what
    the store's readers test), published. ``collection`` goes to ``generate_collection``."""
    from indexer.job import run_index
    from sst_search.synthetic import generate_collection

    coll = generate_collection(root / "syn", species=species, per_species=per_species, seed=seed, **collection)
    db = root / "db.duckdb"
    summary = run_index(coll.manifest, coll.references, db, config or random_weights_config(), masks=coll.ground_truth)
    assert summary.counts["indexed"] == species * per_species, summary.failures
    return coll, db


#: The session's indexed collection (:func:`indexed`): species, specimens per species, seed.
INDEXED_SPECIES, INDEXED_PER_SPECIES, INDEXED_SEED = 3, 5, 11


#: The test this worker runs after the one being torn down (``None`` after its last), set by
#: conftest's ``pytest_runtest_teardown``.
NEXT_TEST: dict = {}


def needed_next(fixture: str) -> bool:
    """Whether the test this worker runs next uses ``fixture``: fixtures of costly services (a
    Ray cluster, the app server, Chromium) stop as soon as it does not, instead of idling,
    using CPU, until the end of the run."""
    following = NEXT_TEST.get("item")
    return following is not None and fixture in following.fixturenames


def build_once_per_run(tmp_path_factory, worker_id: str, name: str, build: Callable[[Path], T]) -> T:
    """``build(folder)``, run once per test run even under xdist: the first worker to ask builds
    it in a folder of the run's temporary directory that every worker shares, the others wait
    for it and get the same result back. For data that costs seconds to build and is only read."""
    base = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        base = base.parent  # .../pytest-N, above each worker's .../pytest-N/popen-gwK
    folder, built = base / name, base / f"{name}.pickle"
    with FileLock(base / f"{name}.lock"):
        if built.is_file():
            return pickle.loads(built.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed half-way left
        folder.mkdir()
        result = build(folder)
        built.write_bytes(pickle.dumps(result))
        return result


class AdmittedIds:
    """A filter given by the ids it admits: the planner's two questions (which of these pass,
    which pass at all) answered from a sorted array, for tests of the planner on its own."""

    def __init__(self, admitted: np.ndarray) -> None:
        self._admitted = np.sort(np.asarray(admitted, np.int64))

    def passes(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, self._admitted)

    def admitted(self) -> np.ndarray:
        return self._admitted
