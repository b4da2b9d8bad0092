"""What a reader of a published snapshot reads, on a real DuckDB catalog and real FAISS
indexes: a search joins only its hits' listing and masks (nothing loaded for the whole
trait); a locality, date, measurement or confidence filter is answered from the columns
written at publish, with the catalog's exact answer (missing values included), and from the
catalog as before where a snapshot lacks them or a trait has several entries per specimen; a
publish that dies writing them publishes nothing, and verify names a damaged one."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sst_search.config import IndexConfig, PlanConfig
from sst_search.errors import QueryError
from sst_search.query import Filter, SearchEngine
from sst_search.store import Store, published_columns
from sst_search.store.snapshots import (
    current_version,
    list_versions,
    publish_snapshot,
    resolve_snapshot,
)
from sst_search.store.verify import verify_files
from sst_search.store.writer import replace_measurements
from sst_search.vector_search import postings
from sst_search.vector_search.at_rest import save_array, vectors_dir
from sst_search.vector_search.postings import layout_paths

N, DIM, EMBEDDER, TRAIT = 600, 16, "e", "band"
CONFIG = IndexConfig(exact_threshold=300, nlist_factor=0.5, train_per_list=39)  # IVF, 12 lists
LOCALITIES = np.array(["Blue Ridge", "Ridgeway Hollow", "Cape May", "Lake Erie shore", "Big Sur"])
FILTERS = {
    "locality contains": [Filter(field="locality", op="contains", value="ridge")],
    "locality equals": [Filter(field="locality", op="==", value="Cape May")],
    "date range": [Filter(field="eventDate", op=">=", value="2021-10-01")],
    "date and group": [Filter(field="eventDate", op="<", value="2020-03-01"), Filter(field="group", op="==", value="g1")],
    "area above": [Filter(field=f"{TRAIT}.area_mm2", op=">", value=60.0)],
    "area not equal": [Filter(field=f"{TRAIT}.area_mm2", op="!=", value=50.0)],  # a missing area never passes
    "colour and quality": [Filter(field=f"{TRAIT}.dominant_color", op="in", value=["#e0a040", "#202020"]),
                           Filter(field=f"{TRAIT}.quality", op="<", value=0.7)],
    "object score": [Filter(field=f"{TRAIT}.object_score", op=">=", value=0.5)],
    "quality of a trait never measured": [Filter(field="wing.quality", op=">", value=0.3)],
    "instances' area": [Filter(field="spot.area_mm2", op=">", value=3.0)],  # two spots measured apart: the catalog's
}
#: Fields read from the catalog however the snapshot was published (traits with several entries per specimen).
UNPUBLISHED = {"area_mm2 of spot"}


def write_store(db):
    rng = np.random.default_rng(0)
    ids = np.arange(1, N + 1, dtype=np.int64) * 7
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    days = rng.integers(0, 730, N)
    dates = (np.datetime64("2020-01-01") + days.astype("timedelta64[D]")).astype(str)
    dated = rng.random(N) < 0.9  # some specimens have no date: a missing value never passes
    specimens = pa.table({"specimen_id": ids, "path": [f"img/{i}.png" for i in ids],
                          "group_name": [f"g{i % 3}" for i in range(N)], "status": ["indexed"] * N,
                          "metadata": [f'{{"catalogNumber": "C-{i}", "n": {i}}}' for i in ids]})
    metadata = pa.table({"specimen_id": np.concatenate([ids, ids[dated]]),
                         "key": ["locality"] * N + ["eventDate"] * int(dated.sum()),
                         "value": np.concatenate([LOCALITIES[rng.integers(0, len(LOCALITIES), N)], dates[dated]])})
    masks = pa.table({"specimen_id": ids, "trait_id": np.ones(N, np.int32), "trait_name": [TRAIT] * N,
                      "area": rng.integers(10, 99, N), "bbox_x0": np.zeros(N, np.int32), "bbox_y0": np.zeros(N, np.int32),
                      "bbox_x1": np.full(N, 9, np.int32), "bbox_y1": np.full(N, 9, np.int32),
                      "rle": [f'{{"size": [9, 9], "counts": "{i}"}}' for i in ids], "quality": rng.random(N),
                      "source": ["sst"] * N})
    lacking = (np.arange(N) % 20 == 3) | ((np.arange(N) >= 200) & (np.arange(N) < 400))  # incl. whole chunks
    masks = masks.filter(pa.array(~lacking))
    colours = np.array(["#e0a040", "#202020", "#f0f0f0"])
    measured = {int(sid): [{"trait_id": 1, "trait_name": TRAIT, "unit": "mm", "dominant_color": colours[i % 3],
                            "area_mm2": None if i % 11 == 0 else float(rng.uniform(20, 90))}]
                for i, sid in enumerate(ids) if i % 7 != 0}
    for i, sid in enumerate(ids[:30]):  # instances: two spots per specimen, measured apart
        measured.setdefault(int(sid), []).extend(
            {"trait_id": t, "trait_name": "spot", "unit": "mm", "area_mm2": float(i + t)} for t in (2, 3))
    masks = masks.append_column("object_score", pa.array(np.where(np.arange(len(masks)) % 4 == 0, np.nan, 1.0) *
                                                         rng.uniform(0, 1, len(masks)), from_pandas=True))
    wings = masks.slice(0, 250).set_column(1, "trait_id", pa.array(np.full(250, 4, np.int32)))  # masks, never measured
    masks = pa.concat_tables([masks, wings.set_column(2, "trait_name", pa.array(["wing"] * 250))
                              .set_column(9, "quality", pa.array(rng.random(250)))])
    with Store.open(db, index_config=CONFIG) as store:
        store.write_columns(specimens, metadata=metadata, masks=masks, vectors={(EMBEDDER, TRAIT): (ids, vectors)})
        replace_measurements(store, measured)
        run = store.begin_run({"embedder": {"embedder": EMBEDDER, "model": "synthetic", "weights": "none"}})
        store.finish_run(run, {"indexed": N})
    return ids


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    db = tmp_path_factory.mktemp("reader-columns") / "c.duckdb"
    ids = write_store(db)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(published_columns, "CHUNK", 100)  # the rows written over several chunks
        patch.setattr(published_columns, "TRAIT_QUERY_BYTES", 8 * N)  # a trait's columns one per query
        publish_snapshot(db)
    return db, ids


@pytest.fixture(scope="module")
def published_before(tmp_path_factory):
    """The same collection published as before the filter columns existed."""
    db = tmp_path_factory.mktemp("reader-columns-before") / "c.duckdb"
    write_store(db)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(published_columns, "write_snapshot", lambda con, db_path: None)
        patch.setattr(postings, "write_layout", lambda *args: None)
        publish_snapshot(db)
    assert not published_columns.columns_dir(resolve_snapshot(db)).exists()
    return db


@pytest.mark.parametrize("which", ["published", "published before"])
def test_a_search_reads_only_its_hits_listing_and_masks(published, published_before, which):
    """The hits' rows are sliced out of the files written at publish, or asked of the catalog
    for a snapshot without them: the same rows as the catalog's either way."""
    db = published[0] if which == "published" else published_before
    ids = published[1]
    with SearchEngine.open(db) as engine, Store.open(db, read_only=True) as live:
        results = engine.search(TRAIT, 10, specimen_id=int(ids[5]), embedder=EMBEDDER)
        assert len(results) == 10
        assert engine.store.loaded_columns() is None  # no filter: not even the specimen ids were read
        hits = [r.specimen_id for r in results]
        assert (engine.store.published().rows(hits, TRAIT) is not None) == (which == "published")
        truth, listing = live.trait_mask_of(TRAIT, hits), live.listing(hits)
        assert [(r.trait_id, r._rle, r.area, r.bbox, r.quality) for r in results] == [
            (truth[s].trait_id, truth[s].rle, truth[s].area, tuple(truth[s].bbox), truth[s].quality) if s in truth
            else (None, None, None, None, None) for s in hits]
        everyone = ids.tolist()
        assert engine.store.trait_mask_of(TRAIT, everyone) == live.trait_mask_of(TRAIT, everyone)
        assert engine.store.listing(everyone) == live.listing(everyone)
        assert engine.store.listing(everyone[:1])[ids[0]]["metadata"] == {"catalogNumber": f"C-{ids[0]}", "n": int(ids[0])}
        assert len(live.trait_mask_of(TRAIT, everyone)) == N - 200 - (N - 200) // 20
        if which == "published":  # and not by falling back to the catalog
            published_masks = engine.store.published().rows(everyone, TRAIT)
            assert {r["specimen_id"]: r["rle"] for r in published_masks} == {
                s: m.rle for s, m in live.trait_mask_of(TRAIT, everyone).items()}
        assert [(r.path, r.group) for r in results] == [(listing[s]["path"], listing[s]["group_name"]) for s in hits]
        assert engine.store.listing([*hits, 12345]).keys() == set(hits)  # an unknown id is left out
        if which == "published":  # rows of other specimens than asked (files out of step): asked of the catalog
            published = engine.store.published()
            located = published.rows
            published.rows = lambda ids, trait=None: located([i + 7 for i in ids], trait)
            assert engine.store.listing(hits) == listing and engine.store.trait_mask_of(TRAIT, hits) == truth


def test_a_search_asks_the_disk_for_its_hits_listing_and_mask_rows_before_reading_either(published, monkeypatch):
    """From a cold page cache each file's rows wait one disk read; both files are asked for
    first, so the two waits overlap."""
    import os

    db, ids = published
    events: list[tuple[str, int]] = []
    asked = published_columns.will_need
    monkeypatch.setattr(published_columns, "will_need", lambda fd, spans: (events.append(("ask", fd)), asked(fd, spans)))
    read = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, size, offset: (events.append(("read", fd)), read(fd, size, offset))[1])
    with SearchEngine.open(db) as engine, Store.open(db, read_only=True) as live:
        results = engine.search(TRAIT, 10, specimen_id=int(ids[5]), embedder=EMBEDDER)
        hits = [r.specimen_id for r in results]
        assert engine.store.hits_rows(TRAIT, hits) == live.hits_rows(TRAIT, hits)
    first_read = next(i for i, (what, _) in enumerate(events) if what == "read")
    assert len({fd for what, fd in events[:first_read] if what == "ask"}) == 2  # the listing's file and the masks'


def _from_files(files, key, column) -> bool:
    """Whether a loaded field came from the snapshot's files: a text field's codes are mapped,
    a trait's number is a row of its mapped set."""
    if isinstance(column.codes, np.memmap):
        return True
    source, name, trait = key
    numbers = files._sets.get((published_columns.trait_stem(source, trait), "numbers", "valid")) if trait else None
    return numbers is not None and name in numbers["manifest"]["columns"]


def _answers(db, filters):
    """What a reader of the current snapshot admits under ``filters`` and finds searching under
    them on IVF plans, and which of the fields and list layout it used came from files."""
    with SearchEngine.open(db) as engine:
        store = engine.store
        admitted = engine.admission(filters).admitted()
        store.index_cache.config = store.index_config.model_copy(update={"plan": PlanConfig(exact_max=5)})
        for sid in admitted[:3]:
            found = engine.search(TRAIT, 10, specimen_id=int(sid), filters=filters, embedder=EMBEDDER)
            assert len(found) == 10 and {r.specimen_id for r in found} <= set(admitted.tolist())
        columns, files = store.loaded_columns(), store.published()
        mapped = {(key[1] if key[2] is None else f"{key[1]} of {key[2]}"): _from_files(files, key, column)
                  for key, column in columns._columns.items()}
        mapped["ids"] = isinstance(columns.ids, np.memmap)
        mapped["layout"] = isinstance(store.vector_table(EMBEDDER, TRAIT).layout(store.index(EMBEDDER, TRAIT)).rows,
                                      np.memmap)
    return admitted, mapped


@pytest.mark.parametrize("name", FILTERS)
def test_metadata_measurement_and_confidence_filters_give_the_catalogs_answer_mapped_and_not(published, published_before, name):
    db, _ = published
    filters = FILTERS[name]
    with Store.open(db, read_only=True) as live:
        exact = live.specimen_ids(filters)  # the catalog's answer, in SQL
    assert 0 < len(exact) < N
    admitted, mapped = _answers(db, filters)
    assert np.array_equal(admitted, exact)
    assert mapped and all(v for k, v in mapped.items() if k not in UNPUBLISHED), mapped  # all from files
    assert not any(mapped.get(k) for k in UNPUBLISHED)
    admitted, mapped = _answers(published_before, filters)  # from the catalog, as before
    assert np.array_equal(admitted, exact) and not any(mapped.values())


def test_a_confidence_needs_masks_and_a_measurement_needs_measurements(published):
    with SearchEngine.open(published[0]) as engine:
        fields = engine.trait_fields()  # what the Search page offers
        assert {"wing.object_score", "wing.quality", "band.area_mm2", "band.predicted_iou", "spot.area_mm2"} <= set(fields)
        assert not {"wing.area_mm2", "spot.quality"} & set(fields)
        for field in fields:
            engine.filter_ids([Filter(field=field, op="!=", value="#000000" if "color" in field else -1.0)])
        assert len(engine.filter_ids([Filter(field="wing.object_score", op=">", value=0.1)])) > 0
        with pytest.raises(QueryError, match="no trait 'wing' measured; measured traits: \\['band', 'spot'\\]"):
            engine.filter_ids([Filter(field="wing.area_mm2", op=">", value=1.0)])
        with pytest.raises(QueryError, match="no trait 'tail' has masks; traits with masks: \\['band', 'wing'\\]"):
            engine.filter_ids([Filter(field="tail.quality", op=">", value=0.1)])


def test_a_publish_dying_mid_columns_publishes_nothing_and_verify_names_a_damaged_one(tmp_path, monkeypatch):
    db = tmp_path / "d.duckdb"
    write_store(db)
    publish_snapshot(db)
    before, versions = current_version(db), list_versions(db)
    writes = []

    def dies_on_the_third(path, write):
        writes.append(path)
        if len(writes) == 3:
            raise KeyboardInterrupt  # the process stopped half-way through the columns
        real(path, write)

    real = published_columns.atomic_write
    monkeypatch.setattr(published_columns, "atomic_write", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        publish_snapshot(db)
    monkeypatch.undo()
    assert current_version(db) == before and list_versions(db) == versions
    snapshot = resolve_snapshot(db)
    assert verify_files(snapshot) == []
    root = published_columns.columns_dir(snapshot)
    damaged = published_columns.file_paths(root, "metadata.locality", ["codes"])["codes"]
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.chmod(0o644)
    damaged.write_bytes(bytes(data))
    problems = verify_files(snapshot)
    assert [p.path for p in problems] == [str(damaged.with_name("metadata.locality.json"))]
    assert "codes.npy does not match its manifest's checksum" in problems[0].what
    with Store.open(snapshot, read_only=True) as reader:  # the store's own check says the same
        assert [p.path for p in reader.verify()] == [problems[0].path]
    damaged.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 0xFF]))  # repaired
    layout = layout_paths(vectors_dir(snapshot), (EMBEDDER, TRAIT))
    layout["rows"].chmod(0o644)
    rows = np.load(layout["rows"])
    save_array(layout["rows"], rows[::-1].copy())  # the same bytes' size, another order
    problems = verify_files(snapshot)
    assert [(p.path, p.kind) for p in problems] == [(str(layout["manifest"]), "index")], problems
    rows = published_columns.file_paths(root, published_columns.masks_stem(TRAIT), ["rows"])["rows"]
    rows.chmod(0o644)
    rows.write_bytes(b"x" * rows.stat().st_size)  # garbled in place: a reader's search still gets the catalog's masks
    with Store.open(snapshot, read_only=True) as reader, Store.open(db, read_only=True) as live:
        some = live.population(EMBEDDER, TRAIT)[:5].tolist()
        assert reader.trait_mask_of(TRAIT, some) == live.trait_mask_of(TRAIT, some) != {}
