"""The one filter compiler has two backends: SQL (writers, exports) and masks over a read-only
snapshot's columns held in memory (searches). They must select the same specimens, NULLs,
missing keys, text that is not a number and metacharacters included."""

from __future__ import annotations

import numpy as np
import pytest

from sst_search.query import Filter, QueryError
from sst_search.store import Store
from sst_search.store.columns import MaskAdmission, SqlAdmission
from sst_search.store.records import SpecimenRecord, TraitMask

NASTY = "x'); DROP TABLE specimens; --"
LOCALITIES = ("Río Napo", "O'Brien's \"Ridge\"", "ridge top", "50%_off", NASTY, "")
WIDTHS = ("4.0", "2", "n/a", "1e1", " 3 ", "-0.5")


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    db = tmp_path_factory.mktemp("filters") / "f.duckdb"
    rng = np.random.default_rng(2)
    records = []
    for i in range(1, 241):
        metadata = {"locality": LOCALITIES[i % 6], "eventDate": f"{1950 + i % 70}-0{1 + i % 9}-1{i % 10}"}
        if i % 4:  # a quarter of the specimens lack the key altogether
            metadata["width_mm"] = WIDTHS[i % 6]
        masks, measurements = [], []
        failed = i % 13 == 0
        if i % 5 and not failed:
            masks = [TraitMask(1, "band", '{"size": [4, 4], "counts": "04"}', 4, (0, 0, 2, 2),
                               quality=None if i % 7 == 0 else float(rng.random()))]
            measurements = [{"trait_id": 1, "trait_name": "band", "unit": "px",
                             "area_px": None if i % 11 == 0 else float(i), "dominant_color": f"#{i % 3}0{i % 3}0aa"}]
            if i % 9 == 0:  # two traits drawn under one name: a condition holds when either passes
                masks.append(TraitMask(2, "band", '{"size": [4, 4], "counts": "04"}', 4, (0, 0, 2, 2), quality=0.25))
                measurements.append({"trait_id": 2, "trait_name": "band", "unit": "px", "area_px": float(300 - i),
                                     "dominant_color": "#202020aa"})
        records.append(SpecimenRecord(
            specimen_id=int(rng.integers(1 << 62)), path=f"/c/{i}.png", status="failed" if failed else "indexed",
            group_name=None if i % 17 == 0 else f"g{i % 3}", metadata=metadata, masks=masks, measurements=measurements))
    with Store.open(db) as store:
        store.write_batch(records)
    return db


FILTERS = [
    [Filter(field="group", op="==", value="g1")],
    [Filter(field="group", op="!=", value="g1")],  # NULL groups pass neither
    [Filter(field="group", op="not in", value=["g0", "g2"])],
    [Filter(field="locality", op="contains", value="RIDGE")],
    [Filter(field="locality", op="contains", value="0%_")],
    [Filter(field="locality", op="contains", value="no such place")],
    [Filter(field="locality", op="==", value=NASTY)],
    [Filter(field="locality", op="!=", value="")],
    [Filter(field="locality", op="in", value=["Río Napo", "ridge top"])],
    [Filter(field="width_mm", op=">", value=3.5)],  # numeric: "n/a" never passes, " 3 " and "1e1" are numbers
    [Filter(field="width_mm", op="<=", value=2.0)],
    [Filter(field="width_mm", op="!=", value="2")],  # missing keys never pass a negation either
    [Filter(field="width_mm", op="not in", value=["2", "n/a"])],
    [Filter(field="eventDate", op=">=", value="2001-05-1")],  # text: ISO dates compare chronologically
    [Filter(field="eventDate", op="<", value=1990.0)],  # a number against dates: none is numeric
    [Filter(field="band.area_px", op=">", value=100)],
    [Filter(field="band.area_px", op="!=", value=50)],  # NULL measurements never pass
    [Filter(field="band.dominant_color", op="in", value=["#101010aa", "#000000aa"])],
    [Filter(field="band.dominant_color", op="contains", value="20")],
    [Filter(field="band.quality", op="<", value=0.5)],
    [Filter(field="path", op="contains", value="/1")],
    [Filter(field="group", op="==", value="g2"), Filter(field="band.area_px", op="<=", value=120),
     Filter(field="locality", op="!=", value="ridge top")],
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda fs: " & ".join(f"{f.field} {f.op} {f.value!r}" for f in fs))
def test_memory_and_sql_backends_admit_the_same_specimens(snapshot, filters):
    with Store.open(snapshot, read_only=True) as reader, Store.open(snapshot, read_only=True) as other:
        admission = reader.admission(filters)
        assert isinstance(admission, MaskAdmission)
        in_memory = admission.admitted()
        in_sql = other.specimen_ids(filters)
        assert in_memory.tolist() == in_sql.tolist()
        every = reader.specimen_ids(status=None)
        assert every[admission.passes(every)].tolist() == in_sql.tolist()
        assert not admission.passes(np.array([7, -1], np.int64)).any()  # unknown ids never pass


def test_both_backends_reject_the_same_bad_filters(snapshot):
    with Store.open(snapshot, read_only=True) as reader:
        for bad in (Filter(field="nope", op="==", value="x"), Filter(field="band.area_px", op="contains", value="1"),
                    Filter(field="wing.area_px", op=">", value=1)):
            with pytest.raises(QueryError):
                reader.admission([bad])
            with pytest.raises(QueryError):
                reader.specimen_ids([bad])


def test_a_writer_asks_sql_because_its_catalog_changes(snapshot, tmp_path):
    db = tmp_path / "w.duckdb"
    with Store.open(db) as writer:
        writer.write_batch([SpecimenRecord(specimen_id=1, path="/a.png", status="indexed", group_name="g")])
        admission = writer.admission([Filter(field="group", op="==", value="g")])
        assert isinstance(admission, SqlAdmission) and admission.admitted().tolist() == [1]
        writer.write_batch([SpecimenRecord(specimen_id=2, path="/b.png", status="indexed", group_name="g")])
        assert admission.admitted().tolist() == [1, 2]


def test_one_snapshot_answers_filter_after_filter_from_remembered_masks(snapshot, monkeypatch):
    """Masks are remembered per condition for the snapshot's lifetime; with room for only
    three, every filter twice over (evictions included) still admits what SQL admits."""
    import sst_search.store.columns as columns

    monkeypatch.setattr(columns, "MASKS_KEPT", 3)
    with Store.open(snapshot, read_only=True) as reader, Store.open(snapshot, read_only=True) as other:
        for filters in FILTERS + FILTERS[::-1]:
            assert reader.admission(filters).admitted().tolist() == other.specimen_ids(filters).tolist()
        # the mask doubles as an index's row mask over the snapshot's specimens or some of
        # them (a trait not every specimen has, a shard), the same array search after search
        every, admission = reader.specimen_ids(status=None), reader.admission(FILTERS[0])
        assert admission.table_mask(every).tolist() == np.isin(every, admission.admitted()).tolist()
        some = every[1::2]
        rows_mask = admission.table_mask(some)
        assert rows_mask.tolist() == np.isin(some, admission.admitted()).tolist()
        assert reader.admission(FILTERS[0]).table_mask(some) is rows_mask
        assert admission.table_mask(np.append(some, every.max() + 1)) is None  # an id that is no specimen


def test_the_snapshot_joins_the_masks_sql_joins(snapshot, tmp_path):
    """Search hits get their trait's mask from memory on a snapshot and from SQL on a writer:
    the same mask, the lower trait id where two traits share a name."""
    import shutil

    writable = tmp_path / "copy.duckdb"
    shutil.copy(snapshot, writable)
    with Store.open(snapshot, read_only=True) as reader, Store.open(writable) as writer:
        ids = reader.specimen_ids(status=None).tolist() + [7]
        in_memory, in_sql = reader.trait_mask_of("band", ids), writer.trait_mask_of("band", ids)
        assert in_memory == in_sql and 7 not in in_memory
        doubled = [sid for sid in ids if len(reader.trait_masks(sid)) == 2]
        assert doubled and {in_memory[sid].trait_id for sid in doubled} == {1}


def test_a_warmed_snapshot_answers_its_first_filter_without_asking_the_catalog(snapshot, tmp_path, monkeypatch):
    """What every filtered search asks first (the metadata keys, the measured traits, the
    indexed specimens' mask) is asked when the reader warms, not on the first query's path;
    the field's values are the columns published with the snapshot."""
    import shutil

    from sst_search.store.snapshot_catalog import SnapshotStore
    from sst_search.store.snapshots import publish_snapshot, resolve_snapshot

    db = tmp_path / "p.duckdb"
    shutil.copy(snapshot, db)
    publish_snapshot(db)
    with Store.open(resolve_snapshot(db), read_only=True) as reader, Store.open(snapshot, read_only=True) as other:
        expected = other.specimen_ids(FILTERS[3]).tolist()
        reader.warm()

        def no_sql(self):
            raise AssertionError("a query asked the catalog")

        monkeypatch.setattr(SnapshotStore, "con", property(no_sql))
        assert reader.admission(FILTERS[3]).admitted().tolist() == expected
        assert reader.admission([Filter(field="group", op="==", value="g1")]).admitted().tolist()


def test_the_warm_up_runs_every_operator_s_kernels(monkeypatch):
    """A reader's warm-up (``prepare_conditions``) evaluates each operator once, on text and
    on numbers where it applies, so no first search under a filter initialises Arrow's kernels."""
    from sst_search.store import filters

    seen = []
    evaluate = filters.condition_mask
    monkeypatch.setattr(filters, "condition_mask",
                        lambda c, col, n: seen.append((c.op, c.numeric)) or evaluate(c, col, n))
    filters.prepare_kernels()
    assert {op for op, _ in seen} == set(filters.OPS)
    assert {op for op, numeric in seen if numeric} == {"==", "!=", ">=", "<=", ">", "<"}
