"""Vectors at rest: a published snapshot's vectors as a memory-mapped float16 file, read by
exact scans and re-ranking on a real DuckDB catalog and real FAISS indexes; a snapshot from
before them; a publish killed while writing them; two reader processes sharing their pages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pytest

from sst_search.config import IndexConfig, PlanConfig
from sst_search.query import Filter, SearchEngine
from sst_search.store import Store
from sst_search.store.snapshots import (
    current_version,
    list_versions,
    publish_snapshot,
    resolve_snapshot,
)
from sst_search.store.verify import verify_files
from sst_search.vector_search.at_rest import RowReader, vector_paths, vectors_dir
from sst_search.vector_search.indexes import index_paths

N, DIM, EMBEDDER, TRAIT = 40_000, 128, "e", "t"
KEY = (EMBEDDER, TRAIT)


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around 400 centres, so an IVF index finds the true neighbours in the lists it probes."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((400, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(400, size=n)] + 0.1 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write(db: Path, n: int, dim: int, config: IndexConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors = _clustered(n, dim, seed=0)
    rng = np.random.default_rng(1)
    ids = rng.choice(1 << 62, size=n, replace=False).astype(np.int64)
    locality = np.where(rng.random(n) < 0.01, "one-percent", "common")
    with Store.open(db, index_config=config) as store:
        store.write_columns(
            pa.table({"specimen_id": ids, "path": [f"img/{i}.png" for i in range(n)],
                      "group_name": [f"g{i % 2}" for i in range(n)], "status": ["indexed"] * n}),
            metadata=pa.table({"specimen_id": ids, "key": ["locality"] * n, "value": locality}),
            vectors={KEY: (ids, vectors)},
        )
    return ids, vectors, locality


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """40k vectors of dim 128 in an IVF-SQ8 index (float16 at rest: 10 MB), published once."""
    db = tmp_path_factory.mktemp("at_rest") / "store.duckdb"
    ids, vectors, locality = _write(db, N, DIM, IndexConfig(exact_threshold=1_000, nlist_factor=1.0))
    publish_snapshot(db)
    return db, ids, vectors, locality


def _exact(vectors, ids, row, passing, k):
    scores = np.where(passing, vectors @ vectors[row], -np.inf)
    scores[row] = -np.inf
    return [int(ids[j]) for j in np.argsort(-scores)[:k]]


@pytest.mark.parametrize(("filters", "plan", "exact_max"), [
    ([], "unfiltered", 20_000),
    ([Filter(field="group", op="==", value="g0")], "postfilter", 20_000),
    ([Filter(field="locality", op="==", value="one-percent")], "selector", 100),
    ([Filter(field="locality", op="==", value="one-percent")], "exact", 20_000),
])
def test_every_plan_reads_the_mapped_float16_vectors_with_recall_and_exactly_k(published, filters, plan, exact_max):
    db, ids, vectors, locality = published
    passing = {"group": np.arange(N) % 2 == 0, "locality": locality == "one-percent"}[filters[0].field] \
        if filters else np.ones(N, bool)
    k, found_all, f32_recall, same = 10, [], [], []
    with SearchEngine.open(db) as engine, Store.open(db, read_only=True) as live:
        table = engine.store.vector_table(*KEY)
        assert isinstance(table.matrix, np.memmap) and table.matrix.dtype == np.float16
        assert live.vector_table(*KEY).matrix.dtype == np.float32  # the live store has no file: the catalog's
        for store in (engine.store, live):
            store.index_cache.config = store.index_config.model_copy(update={"plan": PlanConfig(exact_max=exact_max)})
        admission = engine.admission(filters) if filters else None
        for row in range(0, 400, 20):
            query, skip = vectors[row], int(ids[row])
            outcome = engine.store.filtered_search(*KEY, query, k, admission, skip=skip)
            assert outcome.plan == plan
            assert len(outcome.hits) == k and len({sid for sid, _ in outcome.hits}) == k
            expected = _exact(vectors, ids, row, passing, k)
            found = [sid for sid, _ in outcome.hits]
            assert set(found) <= set(ids[passing].tolist())
            found_all.append(len(set(found) & set(expected)) / k)
            # float16 moves a re-ranked cosine by ~1e-3 at most; the float32 store scores the same hits
            exact_scores = dict(zip(ids.tolist(), (vectors @ query).tolist()))
            assert max(abs(s - exact_scores[sid]) for sid, s in outcome.hits) < 2e-3
            f32 = [sid for sid, _ in live.filtered_search(*KEY, query, k, live.admission(filters) if filters else None,
                                                          skip=skip).hits]
            f32_recall.append(len(set(f32) & set(expected)) / k)
            same.append(len(set(found) & set(f32)) / k)
    assert np.mean(same) >= 0.97  # the same hits as float32 vectors, but for near ties
    assert np.mean(found_all) >= np.mean(f32_recall) - 0.02
    # A 1% filter unrelated to the clusters leaves ~1 admitted vector per cluster: the selector's
    # SQ8 lists then rank far neighbours coarsely (recall ~0.5 here, float32 or float16 alike).
    assert np.mean(found_all) >= {"exact": 0.99, "selector": 0.4}.get(plan, 0.9)


def test_a_few_rows_are_read_from_the_file_and_many_through_the_mapping_and_both_are_the_rows(published):
    db, ids, vectors, _ = published
    with Store.open(resolve_snapshot(db), read_only=True) as store:
        table = store.vector_table(*KEY)
        few = np.array([5, 0, N - 1, 17, 5], np.int64)  # out of order, the last row, one twice
        many = np.random.default_rng(2).choice(N, size=RowReader.MAX_ROWS + 1, replace=False)
        for rows in (few, many):
            assert np.array_equal(table.gather(rows), np.asarray(table.matrix)[rows])
        asked = table.ids[few]
        found, matrix = table.lookup(asked)  # a query's own vector, a re-rank's candidates: read
        original = vectors[np.argsort(ids)][few]
        assert np.array_equal(found, asked) and np.abs(matrix - original).max() < 2**-10  # float16's rounding


@pytest.mark.skipif(not hasattr(os, "POSIX_FADV_DONTNEED"), reason="evicting a file's pages needs posix_fadvise")
def test_rows_read_cold_half_cached_or_without_non_blocking_reads_are_the_rows(published):
    """A re-rank's rows the page cache lacks are asked of the disk all at once, then read."""
    matrix = np.load(vector_paths(vectors_dir(resolve_snapshot(published[0])), KEY)[0], mmap_mode="r")
    rows = np.random.default_rng(4).choice(N, size=200, replace=False)
    with open(matrix.filename, "rb") as fh:
        for cached in (np.array([], np.int64), rows[::2]):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            RowReader(matrix).read(cached)
            assert np.array_equal(RowReader(matrix).read(rows), matrix[rows])
    blocking = RowReader(matrix)
    blocking._nowait = False  # as on a file system without RWF_NOWAIT
    assert np.array_equal(blocking.read(rows[::-1]), matrix[rows[::-1]])


def test_a_snapshot_published_before_vectors_at_rest_opens_and_the_next_publish_writes_them(tmp_path):
    db = tmp_path / "old.duckdb"
    ids, vectors, _ = _write(db, 300, 16, IndexConfig())
    snapshot = publish_snapshot(db)
    shutil.rmtree(vectors_dir(snapshot))  # as a publish from before this change left it
    assert verify_files(snapshot) == []
    with SearchEngine.open(db) as engine:
        table = engine.store.vector_table(*KEY)
        assert not isinstance(table.matrix, np.memmap) and table.matrix.dtype == np.float32
        hits = engine.store.filtered_search(*KEY, vectors[0], 5).hits
    assert hits[0][0] == int(ids[0]) and hits[0][1] == pytest.approx(1.0, abs=1e-3)  # float16 in the catalog
    snapshot = publish_snapshot(db)
    assert vector_paths(vectors_dir(snapshot), KEY)[0].is_file()
    with SearchEngine.open(db) as engine:
        assert engine.store.vector_table(*KEY).matrix.dtype == np.float16
        assert [h[0] for h in engine.store.filtered_search(*KEY, vectors[0], 5).hits] == [h[0] for h in hits]


_KILLED_WHILE_WRITING = """
import os, signal, sys
import numpy as np
from sst_search.store import vectors_at_rest as at_rest
from sst_search.store.snapshots import publish_snapshot

def killed_half_way(con, key, ids, dim, path, record):
    with open(path, "wb") as fh:
        header = {"descr": "<f2", "fortran_order": False, "shape": (len(ids), dim)}
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(np.full((len(ids) // 2, dim), 0.5, np.float16).tobytes())
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)

at_rest._write_matrix = killed_half_way
publish_snapshot(sys.argv[1])
"""


def test_a_publish_killed_while_writing_vectors_at_rest_moves_no_pointer_and_verify_catches_damage(tmp_path):
    db = tmp_path / "crash.duckdb"
    ids, vectors, _ = _write(db, 300, 16, IndexConfig())
    good = publish_snapshot(db)
    version = current_version(db)
    with Store.open(db) as store:  # a change the killed publish was to carry
        store.remove_specimens([int(ids[0])])
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_WRITING, str(db)], env={**os.environ},
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    leftovers = list(vectors_dir(db).parent.glob("*.versions/.*/*.vectors/*/*.tmp"))
    assert leftovers, "the child was to die while the matrix was half written"
    assert current_version(db) == version and list_versions(db) == [version]
    assert resolve_snapshot(db) == good and verify_files(good) == []

    # Damage to a published file: verify names it, a reader reads the catalog's vectors instead.
    matrix = vector_paths(vectors_dir(good), KEY)[0]
    with open(matrix, "r+b") as fh:
        fh.seek(-64, os.SEEK_END)
        fh.write(b"\x7f" * 64)
    assert any("checksum" in p.what for p in verify_files(good))
    os.truncate(matrix, matrix.stat().st_size - 100)
    assert any("bytes" in p.what and p.path == str(matrix) for p in verify_files(good))
    with SearchEngine.open(db) as engine:
        assert engine.store.vector_table(*KEY).matrix.dtype == np.float32
        assert engine.store.filtered_search(*KEY, vectors[1], 3).hits[0][0] == int(ids[1])
    assert publish_snapshot(db) != good and verify_files(resolve_snapshot(db)) == []
    assert not any(p.exists() for p in leftovers)  # the next publish clears what the killed one left


_READER = """
import sys
import numpy as np
from sst_search.store import Store
from sst_search.store.snapshots import resolve_snapshot

def anonymous():
    with open("/proc/self/smaps_rollup") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("Anonymous:"))

with Store.open(resolve_snapshot(sys.argv[1]), read_only=True) as store:
    store.index("e", "t")
    before = anonymous()
    query = store.vectors_of("e", "t", [int(store.population("e", "t")[7])])[1][0]
    assert len(store.filtered_search("e", "t", query, 10).hits) == 10
    print("searched", anonymous() - before, flush=True)
    sys.stdin.readline()
    float(np.asarray(store.vector_table("e", "t").matrix, np.float32).sum())  # every page, as exact scans would
    print("touched", flush=True)
    sys.stdin.readline()
"""


def _mapped(pid: int, path: Path) -> tuple[int, int]:
    """``(rss, pss)`` of the process's mapping of ``path``."""
    for m in psutil.Process(pid).memory_maps(grouped=True):
        if m.path == str(path):
            return m.rss, m.pss
    return 0, 0


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="proportional set sizes need Linux's /proc")
def test_two_reader_processes_share_the_mapped_vector_pages_and_copy_none_of_them(published):
    db = published[0]
    matrix = vector_paths(vectors_dir(resolve_snapshot(db)), KEY)[0]
    index_file = index_paths(Path(f"{resolve_snapshot(db)}.faiss"), *KEY)[0]
    size = matrix.stat().st_size
    readers = [subprocess.Popen([sys.executable, "-c", _READER, str(db)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for reader in readers:  # the first search maps the file: no float32 copy of the vectors (20 MB) appears
            said, grown = reader.stdout.readline().split()
            assert said == "searched" and int(grown) < N * DIM * 4 / 4
            # its re-rank read its few dozen rows: no page of the mapping, nor the 64 KB the kernel
            # maps in around each page touched, became resident
            assert _mapped(reader.pid, matrix)[0] < 64 * 1024
            assert _mapped(reader.pid, index_file)[0] > 0  # the index is mapped, not read into the process
        for reader in readers:
            reader.stdin.write("\n")
            reader.stdin.flush()
            assert reader.stdout.readline().strip() == "touched"
        for reader in readers:
            rss, pss = _mapped(reader.pid, matrix)
            assert rss > 0.95 * size  # the whole file is resident in each reader...
            assert pss < 0.6 * size  # ...and each is charged about half of it: the pages are shared
    finally:
        for reader in readers:
            reader.stdin.close()
            reader.wait(30)


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="bytes read per process need Linux's /proc")
def test_a_mapped_index_file_is_read_into_the_page_cache_in_the_background(published):
    faiss_dir = Path(f"{resolve_snapshot(published[0])}.faiss")
    size = index_paths(faiss_dir, *KEY)[0].stat().st_size

    def bytes_read() -> int:
        return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["rchar"])

    with SearchEngine.open(published[0]) as engine:
        before = bytes_read()
        index = engine.store.index(*KEY)  # mapped for searching
        for thread in [t for t in threading.enumerate() if t.name.startswith("read-ahead")]:
            thread.join(30)
        assert index.ntotal == N and bytes_read() - before >= size
