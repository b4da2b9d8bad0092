"""Fast-scan lists at rest: a fast-scan index's lists in a file of their own, mapped read-only
by every reader of a real DuckDB + FAISS store; a writer that changes them; a damaged,
missing or half-written lists file; two reader processes sharing the lists' pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import psutil
import pyarrow as pa
import pytest

from sst_search.config import IndexConfig, IndexTier
from sst_search.query import SearchEngine
from sst_search.store import Store
from sst_search.store.snapshots import publish_snapshot, resolve_snapshot
from sst_search.store.verify import verify_files
from sst_search.vector_search.indexes import (
    index_paths,
    ivf_of,
    lists_path,
    load_index,
    map_in_files,
    read_manifest,
)
from sst_search.weights import sha256_file

N, DIM, EMBEDDER, TRAIT = 6_000, 64, "e", "t"
KEY = (EMBEDDER, TRAIT)
FAST_SCAN = IndexConfig(exact_threshold=1_000, nlist_factor=1.0, train_per_list=39,
                        tiers=[IndexTier(factory="IVF{nlist},PQ{dim}x4fs")])  # the default above 2M


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, DIM)).astype(np.float32)
    x = centres[rng.integers(100, size=n)] / np.sqrt(DIM) + 0.05 * rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _add(db: Path, ids: np.ndarray, vectors: np.ndarray) -> None:
    with Store.open(db, index_config=FAST_SCAN) as store:
        store.write_columns(pa.table({"specimen_id": ids, "path": [f"img/{i}.png" for i in ids],
                                      "group_name": ["g"] * len(ids), "status": ["indexed"] * len(ids)}),
                            vectors={KEY: (ids, vectors)})


def _store(db: Path) -> tuple[np.ndarray, np.ndarray]:
    ids = np.arange(1, N + 1, dtype=np.int64) * 7
    vectors = _clustered(N, 0)
    _add(db, ids, vectors)
    return ids, vectors


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    db = tmp_path_factory.mktemp("fast_scan") / "store.duckdb"
    ids, vectors = _store(db)
    publish_snapshot(db)
    return db, ids, vectors


def _faiss_dir(db: Path) -> Path:
    return Path(f"{db}.faiss")


def _mapping(pid: int, path: Path) -> tuple[set[str], int, int]:
    """``(permissions of each mapping, rss, pss)`` of the process's mappings of ``path``."""
    perms = {m.perms for m in psutil.Process(pid).memory_maps(grouped=False) if m.path == str(path)}
    grouped = next(m for m in psutil.Process(pid).memory_maps() if m.path == str(path))
    return perms, grouped.rss, grouped.pss


def test_a_reader_maps_the_lists_file_read_only_and_finds_what_the_in_memory_index_finds(published):
    db, ids, vectors = published
    snapshot = resolve_snapshot(db)
    manifest = read_manifest(_faiss_dir(snapshot), *KEY)
    lists = lists_path(_faiss_dir(snapshot), *KEY, manifest)
    assert manifest["codes"].startswith("IndexIVFPQFastScan") and lists.is_file()
    assert lists.stat().st_size == manifest["lists"]["bytes"] and lists.name.endswith(".lists")
    index_file = index_paths(_faiss_dir(snapshot), *KEY)[0]
    assert index_file.stat().st_size < 0.5 * lists.stat().st_size  # the codes are in the lists file
    in_memory = load_index(_faiss_dir(snapshot), *KEY)
    assert isinstance(faiss.downcast_InvertedLists(ivf_of(in_memory).invlists), faiss.BlockInvertedLists)
    with SearchEngine.open(db) as engine:
        index = engine.store.index(*KEY)
        assert isinstance(faiss.downcast_InvertedLists(ivf_of(index).invlists), faiss.OnDiskInvertedLists)
        assert _mapping(os.getpid(), lists)[0] == {"r--s"}  # read-only, shared
        queries = vectors[::497]
        for found, expected in zip(index.search(queries, 10)[1], in_memory.search(queries, 10)[1], strict=True):
            assert found.tolist() == expected.tolist()
        hits = engine.store.filtered_search(*KEY, vectors[5], 10).hits
        assert len(hits) == 10 and hits[0][0] == int(ids[5])


def test_a_writer_changes_its_lists_in_memory_and_a_published_version_keeps_its_own_file(tmp_path):
    db = tmp_path / "w.duckdb"
    ids, vectors = _store(db)
    first = publish_snapshot(db)
    old = lists_path(_faiss_dir(first), *KEY, read_manifest(_faiss_dir(first), *KEY))
    more_ids, more = np.arange(1, 301, dtype=np.int64) * 7 + 1, _clustered(300, 5)
    _add(db, more_ids, more)  # loads the saved index into memory, adds, saves new lists
    live = lists_path(_faiss_dir(db), *KEY, read_manifest(_faiss_dir(db), *KEY))
    assert live.name != old.name and sorted(p.name for p in _faiss_dir(db).rglob("*.lists")) == [live.name]
    assert old.is_file() and verify_files(first) == []  # the version's link, unchanged
    second = publish_snapshot(db)
    assert verify_files(second) == []
    with SearchEngine.open(db) as engine:
        assert engine.store.index(*KEY).ntotal == N + 300
        assert engine.store.filtered_search(*KEY, more[3], 5).hits[0][0] == int(more_ids[3])


def test_verify_names_a_damaged_short_or_missing_lists_file_and_a_reader_still_answers(tmp_path):
    db = tmp_path / "d.duckdb"
    ids, vectors = _store(db)
    snapshot = publish_snapshot(db)
    lists = lists_path(_faiss_dir(snapshot), *KEY, read_manifest(_faiss_dir(snapshot), *KEY))
    lists.chmod(0o644)
    data = lists.read_bytes()
    with open(lists, "r+b") as fh:  # a flipped byte in the codes
        fh.seek(100)
        fh.write(bytes([data[100] ^ 0xFF]))
    assert [p.what for p in verify_files(snapshot)] == [f"FAISS lists file {lists.name} does not match its manifest's checksum"]
    os.truncate(lists, len(data) - 64)
    assert any("bytes, its manifest says" in p.what for p in verify_files(snapshot))
    with SearchEngine.open(db) as engine:  # the short file is not mapped: the index is rebuilt from the catalog
        assert engine.store.filtered_search(*KEY, vectors[9], 3).hits[0][0] == int(ids[9])
    lists.unlink()
    assert any(p.what == f"FAISS lists file {lists.name} is missing" for p in verify_files(snapshot))


_KILLED_WHILE_WRITING = """
import os, signal, sys
import numpy as np
from sst_search.vector_search import fast_scan_lists
sys.path.insert(0, sys.argv[2])
import test_fast_scan_lists as t

real = fast_scan_lists.write

def killed_half_way(ivf, path):
    real(ivf, path)
    os.truncate(path, os.path.getsize(path) // 2)
    os.kill(os.getpid(), signal.SIGKILL)

fast_scan_lists.write = killed_half_way
t._add(t.Path(sys.argv[1]), np.arange(1, 51, dtype=np.int64) * 7 + 3, t._clustered(50, 8))
"""


@pytest.mark.slow  # a writer process killed mid-write; the publish killed mid-write is tested quickly (test_at_rest.py)
def test_a_writer_killed_while_writing_the_lists_leaves_the_last_good_files(tmp_path):
    db = tmp_path / "k.duckdb"
    ids, vectors = _store(db)
    before = read_manifest(_faiss_dir(db), *KEY)
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_WRITING, str(db), str(Path(__file__).parent)],
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert list(_faiss_dir(db).rglob("*.tmp")), "the child was to die with the lists half written"
    assert read_manifest(_faiss_dir(db), *KEY) == before
    assert lists_path(_faiss_dir(db), *KEY, before).stat().st_size == before["lists"]["bytes"]
    with Store.open(db, index_config=FAST_SCAN) as store:  # the writer's next open clears the leftover
        assert not list(_faiss_dir(db).rglob("*.tmp"))
        assert store.check_consistency() == []  # the killed write's rows were never committed with the index


_READER = """
import sys
import faiss
from sst_search.store import Store
from sst_search.store.snapshots import resolve_snapshot

with Store.open(resolve_snapshot(sys.argv[1]), read_only=True) as store:
    index = store.index("e", "t")
    query = store.vectors_of("e", "t", [int(store.population("e", "t")[7])])[1][0]
    assert len(store.filtered_search("e", "t", query, 10).hits) == 10
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = ivf.nlist
    index.search(query[None], 10)  # every list: every page of the lists file
    print("searched", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="proportional set sizes need Linux's /proc")
def test_two_reader_processes_share_the_pages_of_the_lists_file(published):
    db = published[0]
    snapshot = resolve_snapshot(db)
    lists = lists_path(_faiss_dir(snapshot), *KEY, read_manifest(_faiss_dir(snapshot), *KEY))
    size = lists.stat().st_size
    readers = [subprocess.Popen([sys.executable, "-c", _READER, str(db)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for reader in readers:
            assert reader.stdout.readline().strip() == "searched"
        for reader in readers:
            _, rss, pss = _mapping(reader.pid, lists)
            assert rss > 0.9 * size  # every list was read in each reader...
            assert pss < 0.6 * size  # ...and each is charged about half: one copy in memory
    finally:
        for reader in readers:
            reader.stdin.close()
            reader.wait(30)


def test_a_fast_scan_index_saved_with_its_lists_inside_still_opens_and_verifies(tmp_path):
    """As every fast-scan index was saved before lists files: FAISS reads its lists in."""
    db = tmp_path / "old.duckdb"
    ids, vectors = _store(db)
    index_file, manifest_file = index_paths(_faiss_dir(db), *KEY)
    manifest = read_manifest(_faiss_dir(db), *KEY)
    lists = lists_path(_faiss_dir(db), *KEY, manifest)
    faiss.write_index(load_index(_faiss_dir(db), *KEY), str(index_file))
    lists.unlink()
    del manifest["lists"]
    manifest.update(bytes=index_file.stat().st_size, sha256=sha256_file(index_file))
    manifest_file.write_text(json.dumps(manifest))
    snapshot = publish_snapshot(db)
    assert verify_files(snapshot) == [] and not list(_faiss_dir(snapshot).rglob("*.lists"))
    with SearchEngine.open(db) as engine:
        index = engine.store.index(*KEY)
        assert isinstance(faiss.downcast_InvertedLists(ivf_of(index).invlists), faiss.BlockInvertedLists)
        assert engine.store.filtered_search(*KEY, vectors[11], 3).hits[0][0] == int(ids[11])


def test_warming_a_reader_returns_once_its_lists_file_has_been_read(published, monkeypatch):
    """The app warms its engine on opening: it gets the snapshot's indexes loaded and waits
    for the read of their lists files, which otherwise runs beside the first searches."""
    import threading
    import time

    from sst_search.store import snapshot_catalog
    from sst_search.vector_search import indexes

    read: list[Path] = []

    def slow_read_ahead(path: Path, index: faiss.Index) -> threading.Thread:
        def read_file() -> None:
            time.sleep(0.3)
            read.append(Path(path))

        thread = threading.Thread(target=read_file)
        thread.start()
        return thread

    read_whole: list[Path] = []
    monkeypatch.setattr(indexes, "read_ahead", slow_read_ahead)
    monkeypatch.setattr(snapshot_catalog, "read_through", read_whole.append)
    mapped_in: list[Path] = []
    monkeypatch.setattr(snapshot_catalog, "map_in_files", mapped_in.extend)
    db = published[0]
    with SearchEngine.open(db) as engine:
        engine.warm()
        snapshot = resolve_snapshot(db)
        assert read == [lists_path(_faiss_dir(snapshot), *KEY, read_manifest(_faiss_dir(snapshot), *KEY))]
        engine.warm()  # read already: nothing to wait for
        assert len(read) == 1
    # beside the snapshot: what filters and plans read whole, not what searches read a row at a time
    names = {p.name for p in read_whole}
    assert {"t.ids.npy", "t.group.codes.npy", "t.group.rows.npy", "t.row_lists.npy", "specimens.ids.npy",
            "specimen.s.group_name.codes.npy", "specimens.offsets.npy"} <= names
    assert not names & {"t.npy", "specimens.rows.bin"}
    # ...and then mapped in, as the lists are, but for the counts a filter reads a few rows of
    assert set(mapped_in) == {p for p in read_whole if not p.name.endswith(".counts.npy")}
    assert "t.group.counts.npy" in names and "t.group.rows.npy" in {p.name for p in mapped_in}


def test_warming_searches_each_index_once_for_its_first_stored_vector(published, monkeypatch):
    """A process's first search sets up what later ones find ready; warming pays for it."""
    from sst_search.store.indexed import IndexedStore

    db, ids, vectors = published
    asked: list[tuple] = []
    search = IndexedStore.filtered_search
    monkeypatch.setattr(IndexedStore, "filtered_search",
                        lambda store, *a, **kw: asked.append(a) or search(store, *a, **kw))
    with SearchEngine.open(db) as engine:
        engine.warm()
    assert len(asked) == 1
    (embedder, trait, vector, k), first = asked[0], int(np.argmin(ids))
    assert (embedder, trait, k) == (*KEY, 10)
    np.testing.assert_allclose(vector, vectors[first], atol=1e-3)  # stored as float16


def test_mapping_in_files_fills_the_page_tables_of_their_mappings(tmp_path):
    """What warming does to the files a filter reads whole: their pages are in the page
    cache, and a first touch here and there would map in only its neighbourhood."""
    path, small = tmp_path / "codes.npy", tmp_path / "small.npy"
    np.save(path, np.arange(16 << 20, dtype=np.int32))  # 64 MiB; a touch maps in up to 2 MiB around it
    np.save(small, np.arange(1 << 20, dtype=np.int32))  # 4 MiB: left to fault in as touched
    codes, _ = np.load(path, mmap_mode="r"), np.load(small, mmap_mode="r")
    codes[len(codes) // 2]
    size = path.stat().st_size
    assert _mapping(os.getpid(), path)[1] < 0.1 * size
    map_in_files([tmp_path / "." / "codes.npy", small])  # the same file by another name
    assert _mapping(os.getpid(), path)[1] > 0.99 * size
    assert _mapping(os.getpid(), small)[1] == 0


def test_warming_maps_in_every_page_of_the_lists_before_the_first_search(published):
    """A page that is in the page cache but not in the reader's page tables costs a fault on
    a search's first touch: warming leaves them all mapped."""
    db = published[0]
    snapshot = resolve_snapshot(db)
    lists = lists_path(_faiss_dir(snapshot), *KEY, read_manifest(_faiss_dir(snapshot), *KEY))
    with SearchEngine.open(db) as engine:
        engine.warm()
        assert _mapping(os.getpid(), lists)[1] > 0.95 * lists.stat().st_size
