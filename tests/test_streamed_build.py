"""The streamed bulk write (``Store.write_chunks``) on a real DuckDB catalog and real FAISS
indexes: chunk by chunk it builds what one chunk builds, it consumes its stream lazily and
keeps no earlier chunk, a stream that fails leaves nothing published and no partial file,
and the store answers searches right after the build."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sst_search.config import IndexConfig
from sst_search.query import Filter, SearchEngine
from sst_search.store import Store, writer
from sst_search.store.snapshots import current_version, publish_snapshot
from sst_search.store.verify import verify_files
from sst_search.store.writer import Chunk
from sst_search.vector_search.at_rest import live_dir, vector_paths, vectors_dir
from sst_search.vector_search.indexes import index_paths

N, DIM, KEY = 3_000, 32, ("e", "t")
#: IVF above 500 vectors: the stream's index is trained on a sample, then filled chunk by chunk.
CONFIG = IndexConfig(exact_threshold=500, nlist_factor=1.0)


def _data(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((30, DIM)).astype(np.float32)
    x = centres[rng.integers(30, size=n)] + 0.2 * rng.standard_normal((n, DIM), dtype=np.float32)
    return rng.choice(1 << 62, size=n, replace=False).astype(np.int64), x / np.linalg.norm(x, axis=1, keepdims=True)


def _chunk(ids: np.ndarray, vectors: np.ndarray, start: int, stop: int) -> Chunk:
    part, stop = ids[start:stop], min(stop, len(ids))
    return Chunk(
        pa.table({"specimen_id": part, "path": [f"img/{i}.png" for i in part], "status": ["indexed"] * len(part),
                  "group_name": [f"g{i % 3}" for i in range(start, stop)]}),
        metadata=pa.table({"specimen_id": part, "key": ["locality"] * len(part),
                           "value": ["ridge" if i % 10 == 0 else "valley" for i in range(start, stop)]}),
        vectors={KEY: (part, vectors[start:stop])},
    )


def _chunks(ids, vectors, size):
    for start in range(0, len(ids), size):
        yield _chunk(ids, vectors, start, start + size)


def _answers(db: Path, ids: np.ndarray) -> list[list[tuple[int, float]]]:
    with SearchEngine.open(db) as engine:
        out = []
        for row in range(0, N, 150):
            for filters in ([], [Filter(field="group", op="==", value="g1")],
                            [Filter(field="locality", op="==", value="ridge")]):
                hits = engine.search(KEY[1], 10, specimen_id=int(ids[row]), filters=filters, embedder=KEY[0])
                out.append([(h.specimen_id, round(h.score, 5)) for h in hits])
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The same collection written in one chunk and in seven (the last one short), each published."""
    ids, vectors = _data()
    dbs = {}
    for size in (N, 450):
        db = tmp_path_factory.mktemp(f"chunks{size}") / "store.duckdb"
        with Store.open(db, index_config=CONFIG) as store:
            assert store.write_chunks(_chunks(ids, vectors, size)) == N
        dbs[size] = db
    return ids, vectors, dbs


def test_a_chunked_build_equals_a_one_shot_build(built):
    ids, vectors, dbs = built
    answers, matrices = [], []
    for db in dbs.values():
        with Store.open(db, read_only=True) as store:
            assert np.array_equal(np.sort(store.population(*KEY)), np.sort(ids))
            assert store.index(*KEY).ntotal == N
        snapshot = publish_snapshot(db)  # moves the build's float16 file into the snapshot, verified
        assert verify_files(snapshot) == []
        assert not live_dir(Path(f"{snapshot}.faiss")).exists()
        matrix_path, ids_path, _ = vector_paths(vectors_dir(snapshot), KEY)
        matrices.append((np.load(ids_path), np.load(matrix_path)))
        answers.append(_answers(db, ids))
    (ids_one, one), (ids_many, many) = matrices
    order = np.argsort(ids)
    assert np.array_equal(ids_one, ids[order]) and np.array_equal(ids_many, ids_one)
    assert one.dtype == np.float16 and np.array_equal(one, many)
    assert np.abs(one.astype(np.float32) - vectors[order]).max() < 1e-3
    assert answers[0] == answers[1]
    assert all(len(a) == 10 for a in answers[0])
    # The first answer of an unfiltered search from a query's own vector is its nearest neighbour.
    first = answers[0][0][0][0]
    row = int(np.flatnonzero(ids == first)[0])
    scores = vectors @ vectors[0]
    scores[0] = -np.inf
    assert row == int(np.argmax(scores))


def test_the_stream_is_consumed_lazily_and_no_earlier_chunk_is_kept(tmp_path):
    ids, vectors = _data()
    previous: list[weakref.ref] = []
    pulled = []

    def stream():
        for i, start in enumerate(range(0, N, 500)):
            # every chunk handed over before is gone when the next is asked for
            assert all(ref() is None for ref in previous), f"chunk {i - 1} is still held"
            matrix = vectors[start : start + 500].copy()
            previous.append(weakref.ref(matrix))
            pulled.append(i)
            yield Chunk(pa.table({"specimen_id": ids[start : start + 500], "path": ["p"] * len(matrix),
                                  "status": ["indexed"] * len(matrix)}), vectors={KEY: (ids[start : start + 500], matrix)})
            assert len(pulled) == i + 1  # nothing was read ahead
            del matrix

    with Store.open(tmp_path / "s.duckdb", index_config=CONFIG) as store:
        assert store.write_chunks(stream()) == N
        # the index built from the stream is the store's at the committed generation: nothing rebuilds it
        streamed = store.index_cache.in_memory(KEY, store.generations()[KEY])
        assert streamed is not None and streamed.ntotal == N and store.index(*KEY) is streamed
    assert pulled == list(range(6))


def test_a_stream_that_fails_publishes_nothing_leaves_no_partial_file_and_a_rerun_completes(tmp_path):
    ids, vectors = _data()
    db = tmp_path / "s.duckdb"

    def failing(after: int):
        for i, chunk in enumerate(_chunks(ids, vectors, 500)):
            if i == after:
                raise OSError("the source went away")
            yield chunk

    with Store.open(db, index_config=CONFIG) as store:
        with pytest.raises(OSError, match="went away"):
            store.write_chunks(failing(3))
        assert len(store.population(*KEY)) == 1_500  # the three chunks committed before it
    assert current_version(db) is None
    left = [p for p in Path(f"{db}.faiss").rglob("*") if p.is_file()]
    assert left == [], left  # no spill, no matrix, no manifest: nothing vouches for a partial file

    with Store.open(db, index_config=CONFIG) as store:
        assert store.write_chunks(failing(-1)) == N
        assert store.index(*KEY).ntotal == N
        # searchable at once, by this writer, with nothing else run
        hits = store.filtered_search(*KEY, vectors[7], 5, skip=int(ids[7])).hits
        assert len(hits) == 5
    assert vector_paths(live_dir(Path(f"{db}.faiss")), KEY)[2].is_file()
    assert verify_files(db) == []
    with SearchEngine.open(db) as engine:  # nothing published: a reader opens the live store
        assert len(engine.search(KEY[1], 5, specimen_id=int(ids[7]), embedder=KEY[0])) == 5
    assert [h[0] for h in hits][:1] == [
        int(ids[j]) for j in np.argsort(-(vectors @ vectors[7]))[1:2]]


def test_a_stream_checkpoints_once_at_its_end_and_leaves_duckdb_s_threshold_as_it_was(tmp_path):
    ids, vectors = _data()
    db = tmp_path / "s.duckdb"

    def threshold(store: Store) -> str:
        return store.con.execute("SELECT current_setting('checkpoint_threshold')").fetchone()[0]

    with Store.open(db, index_config=CONFIG) as store:
        before, during = threshold(store), []

        def watched():
            for chunk in _chunks(ids, vectors, 500):
                during.append((threshold(store), Path(f"{db}.wal").stat().st_size if Path(f"{db}.wal").exists() else 0))
                yield chunk

        assert store.write_chunks(watched()) == N
        assert {t for t, _ in during} == {"1.0 GiB"} and before != "1.0 GiB" and threshold(store) == before
        assert during[-1][1] > during[1][1] > 0  # the log grew chunk by chunk, no checkpoint between
        wal = Path(f"{db}.wal")
        assert not wal.exists() or wal.stat().st_size == 0  # checkpointed at the end
    with Store.open(db, read_only=True) as store:
        assert len(store.population(*KEY)) == N


def test_a_failing_insert_is_the_error_told_even_when_its_spill_fails_too(tmp_path, monkeypatch):
    ids, vectors = _data()

    def full_disk(*args, **kwargs):
        raise OSError("no space left for the spill")

    def refused(*args, **kwargs):
        raise RuntimeError("the catalog refused the chunk")

    monkeypatch.setattr(writer, "_spill", full_disk)
    with Store.open(tmp_path / "s.duckdb", index_config=CONFIG) as store:
        with pytest.raises(OSError, match="no space left"):  # alone, the spill's error is raised
            store.write_chunks(_chunks(ids, vectors, 500))
        monkeypatch.setattr(writer, "_insert", refused)
        with pytest.raises(RuntimeError, match="catalog refused"):
            store.write_chunks(_chunks(ids, vectors, 500))
    assert current_version(tmp_path / "s.duckdb") is None


def test_a_specimen_in_two_chunks_is_upserted_and_its_index_rebuilt_from_the_catalog(tmp_path):
    ids, vectors = _data(1_000)
    db = tmp_path / "s.duckdb"
    with Store.open(db, index_config=CONFIG) as store:
        assert store.write_chunks([_chunk(ids, vectors, 0, 600), _chunk(ids, vectors, 590, 1_000)]) == 1_010
        assert len(store.population(*KEY)) == 1_000  # the later chunk's rows replaced the earlier's
        assert store.index(*KEY).ntotal == 1_000  # rebuilt from the catalog, not from the stream
    assert not vector_paths(live_dir(Path(f"{db}.faiss")), KEY)[0].exists()
    snapshot = publish_snapshot(db)  # the snapshot's vectors at rest come from the catalog instead
    assert len(np.load(vector_paths(vectors_dir(snapshot), KEY)[1])) == 1_000


def test_a_publish_links_the_build_files_and_a_later_write_leaves_the_published_ones_as_they_were(tmp_path):
    """The published FAISS file and the streamed build's vectors at rest share the live files'
    blocks instead of being stored twice; the writer replaces a live file rather than rewriting
    it, so the version keeps the bytes it verified."""
    ids, vectors = _data()
    db = tmp_path / "store.duckdb"
    with Store.open(db, index_config=CONFIG) as store:
        store.write_chunks(_chunks(ids, vectors, 1000))
    snapshot = publish_snapshot(db)
    live_faiss, published_faiss = Path(f"{db}.faiss"), Path(f"{snapshot}.faiss")
    live_index, published_index = (index_paths(folder, *KEY)[0] for folder in (live_faiss, published_faiss))
    assert live_index.samefile(published_index)
    assert vector_paths(live_dir(live_faiss), KEY)[0].samefile(vector_paths(vectors_dir(snapshot), KEY)[0])
    before = published_index.read_bytes()
    changed = _chunk(ids, vectors[::-1].copy(), 0, 10)  # ten specimens get other vectors
    with Store.open(db) as store:
        store.write_columns(changed.specimens, changed.metadata, vectors=changed.vectors)
    assert not live_index.samefile(published_index)
    assert published_index.read_bytes() == before and verify_files(snapshot) == []


def test_an_index_build_that_fails_beside_the_sorted_write_leaves_no_file_and_no_thread(tmp_path, monkeypatch):
    """The index is built while the vectors at rest are written in id order, in another
    thread: when the build raises, the write is waited for and its files removed all the same."""
    import threading

    from sst_search.vector_search import indexes

    def failing_build(rows, ids, dim, config, chunk):
        rows(slice(0, 100))  # reads the spill while the sorted write reads it too
        raise MemoryError("no room for the index")

    monkeypatch.setattr(indexes, "build_index_from", failing_build)
    ids, vectors = _data()
    db = tmp_path / "s.duckdb"
    with Store.open(db, index_config=CONFIG) as store:
        with pytest.raises(MemoryError, match="no room"):
            store.write_chunks(_chunks(ids, vectors, 500))
    assert [p for p in Path(f"{db}.faiss").rglob("*") if p.is_file()] == []
    assert not [t for t in threading.enumerate() if t.name.startswith("sorted vectors")]
