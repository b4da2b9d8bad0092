"""The review queue finds low-confidence, unusual and missing masks; decisions survive re-indexing;
promoting a specimen to a support changes only its group's fingerprint."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sst_search.cli import app
from sst_search.images import save_mask
from sst_search.mask_review import decide, promote
from sst_search.references import load_references, references_fingerprint
from sst_search.store import Store, vector_column
from sst_search.store.review_tables import decisions, review_queue
from tests.review_store import LOW_QUALITY, WIDTHS, build_review_store, records
from tests.review_store import sid as _sid


@pytest.fixture
def db(tmp_path) -> Path:
    return build_review_store(tmp_path)


def _flags(store) -> dict[tuple[int, str], str]:
    return {(item.specimen_id, item.trait_name): "; ".join(item.reasons) for item in review_queue(store)}


def test_queue_flags_low_confidence_unusual_area_and_missing_traits(db):
    with Store.open(db, read_only=True) as store:
        flags = _flags(store)
    assert set(flags) == {(_sid(LOW_QUALITY), "band"), (_sid(4), "band"), (_sid(5), "spot")}
    assert flags[(_sid(LOW_QUALITY), "band")].startswith("low quality (0.20")
    assert "area large for its group" in flags[(_sid(4), "band")]
    assert flags[(_sid(5), "spot")].startswith("trait missing")


def test_decisions_leave_the_queue_and_corrections_survive_reindexing(db):
    corrected = np.zeros((20, 48), bool)
    corrected[2:12, 2:12] = True
    decide(db, _sid(4), "band", "correct", "ana", mask=corrected, publish=False)
    decide(db, _sid(LOW_QUALITY), "band", "accept", "ben", publish=False)
    with Store.open(db) as store:
        assert set(_flags(store)) == {(_sid(5), "spot")}
        (band,) = [m for m in store.trait_masks(_sid(4)) if m.trait_name == "band"]
        assert band.source == "corrected" and np.array_equal(band.mask(), corrected)
        assert {(d["trait_name"], d["decision"], d["reviewer"]) for d in decisions(store)} == {
            ("band", "correct", "ana"), ("band", "accept", "ben")}

        store.write_batch(records(db.parent))  # a re-index of the same images brings back SST's masks...
        (band,) = [m for m in store.trait_masks(_sid(4)) if m.trait_name == "band"]
        assert band.source == "corrected" and np.array_equal(band.mask(), corrected)  # ...but the correction wins
        assert len(decisions(store)) == 2

        store.write_batch(records(db.parent, content="v2"))  # the image itself changed: the old correction no longer applies
        (band,) = [m for m in store.trait_masks(_sid(4)) if m.trait_name == "band"]
        assert band.source == "sst" and band.area == 10 * WIDTHS[4]
        assert len(decisions(store)) == 2


def test_review_cli_lists_accepts_rejects_and_corrects(db, tmp_path):
    runner = CliRunner()
    listed = runner.invoke(app, ["review", "list", "--db", str(db)])
    assert listed.exit_code == 0, listed.output
    rows = [line.split("\t") for line in listed.stdout.splitlines()[1:]]
    assert {(int(r[0]), r[2]) for r in rows} == {(_sid(LOW_QUALITY), "band"), (_sid(4), "band"), (_sid(5), "spot")}

    assert runner.invoke(app, ["review", "reject", str(_sid(4)), "band", "--db", str(db), "--by", "ana"]).exit_code == 0
    mask = tmp_path / "fix.png"
    fix = np.zeros((20, 48), np.uint8)
    fix[15:18, 40:44] = 255
    save_mask(mask, fix)
    done = runner.invoke(app, ["review", "correct", str(_sid(5)), "spot", "--mask", str(mask), "--db", str(db)])
    assert done.exit_code == 0, done.output
    bad = runner.invoke(app, ["review", "accept", str(_sid(1)), "wings", "--db", str(db)])
    assert bad.exit_code == 2 and "trait 'wings' is unknown in its group" in bad.output

    remaining = runner.invoke(app, ["review", "list", "--db", str(db)]).stdout.splitlines()[1:]
    assert [line.split("\t")[:3] for line in remaining] == [[str(_sid(LOW_QUALITY)), "g", "band"]]
    decided = runner.invoke(app, ["review", "list", "--db", str(db), "--all"]).stdout.splitlines()[1:]
    assert {(line.split("\t")[2], line.split("\t")[4]) for line in decided} == {("band", ""), ("band", "reject")}
    with Store.open(db, read_only=True) as store:
        (spot,) = [m for m in store.trait_masks(_sid(5)) if m.trait_name == "spot"]
        assert spot.source == "corrected" and spot.area == 12  # the added trait no longer counts as missing


def test_promotion_adds_a_support_and_changes_only_that_groups_fingerprint(ui_db, tmp_path):
    from indexer.collection import load_collection
    from indexer.plan import make_plan
    from tests.ui_index import UI_CONFIG

    source = ui_db
    db = tmp_path / "index.duckdb"
    shutil.copy(source, db)
    refs = tmp_path / "refs"
    shutil.copytree(source.parent / "collection" / "references", refs)
    before = {g: references_fingerprint(s) for g, s in load_references(refs).items()}
    with Store.open(db, read_only=True) as store:
        group = sorted(before)[-1]
        sid = next(s for s in store.filter_specimens(group=group) if store.trait_masks(s))
        stem = Path(store.get_specimen(sid)["path"]).stem
        embedder = store.get_specimen(sid)["fingerprint"]["embedder"]
        states = store.specimen_states()
        indexed = {s for s, (_, _, status) in states.items() if status == "indexed"}
        in_group = set(store.filter_specimens(group=group))

    def replanned() -> set[int]:
        """Indexed specimens the next index run would re-do."""
        items = load_collection(source.parent / "collection" / "manifest.csv")
        plan = make_plan(items, states, UI_CONFIG, refs, embedder)
        return {u.specimen_ids[i.key] for u in plan.units for i in u.items} & indexed

    assert replanned() == set()

    support = promote(db, sid, refs, reviewer="ana", publish=False)
    after_refs = load_references(refs)
    assert stem in [s.id for s in after_refs[group]] and Path(support.image_path).parent == refs / group
    after = {g: references_fingerprint(s) for g, s in after_refs.items()}
    assert {g for g in before if before[g] != after[g]} == {group}
    assert replanned() == in_group
    with Store.open(db, read_only=True) as store:
        assert [(d["decision"], d["note"]) for d in decisions(store, sid)] == [("promote", support.image_path)]
    # promoting the same masks again adds nothing
    again = promote(db, sid, refs, publish=False)
    assert again.image_path == support.image_path and len(load_references(refs)[group]) == len(after_refs[group])
    # corrected since: promoted anew, never over the first support
    with Store.open(db, read_only=True) as store:
        trait = store.trait_masks(sid)[0]
        corrected = np.zeros(store.label_map(sid).shape, bool)
    corrected[2:9, 3:11] = True
    decide(db, sid, trait.trait_name, "correct", "ana", mask=corrected, publish=False)
    third = promote(db, sid, refs, publish=False)
    assert Path(third.image_path).stem == f"{stem}-2" and len(load_references(refs)[group]) == len(after_refs[group]) + 1


def test_a_correction_is_remeasured_and_reembedded(ui_db, tmp_path):
    from sst_search.builder import create_embedder
    from sst_search.images import load_image

    source = ui_db
    db = tmp_path / "index.duckdb"
    shutil.copy(source, db)
    with Store.open(db, read_only=True) as store:
        sid = next(s for s in store.filter_specimens() if store.trait_masks(s))
        trait = store.trait_masks(sid)[0]
        image = load_image(store.get_specimen(sid)["path"])
    corrected = np.zeros(image.shape[:2], bool)
    corrected[5:25, 10:40] = True
    embedder = create_embedder("color-pattern")

    assert decide(db, sid, trait.trait_name, "correct", "ana", mask=corrected, embedder=embedder, publish=False) == []
    with Store.open(db) as store:
        label_map = store.label_map(sid)
        (mask,) = [m for m in store.trait_masks(sid) if m.trait_id == trait.trait_id]
        assert mask.source == "corrected"
        want = embedder.embed_traits(image, label_map, [trait.trait_id])[trait.trait_id]
        ids, matrix = store.get_vectors(embedder.name, trait.trait_name, [sid])
        assert list(ids) == [sid] and np.array_equal(matrix[0], vector_column.rounded(want))
        assert store.search(embedder.name, trait.trait_name, want[None], k=1)[0][0][0] == sid  # FAISS follows
        frame = store.measurements_frame(specimen_ids=[sid])
        row = frame[frame["trait_id"] == trait.trait_id].iloc[0]
        assert row["area_px"] == np.count_nonzero(label_map == trait.trait_id) and row["source"] == "corrected"
    assert decide(db, sid, trait.trait_name, "correct", "ana", mask=corrected, publish=False)[0].startswith(
        f"the vector of {trait.trait_name!r} still describes the earlier mask")


def test_a_reindex_keeps_the_corrected_mask_vector_and_measurements(tmp_path):
    """Masks are provided (no SAM 2 needed); --force re-does every item, the correction wins."""
    from indexer.job import run_index
    from sst_search.builder import create_embedder
    from sst_search.config import Config
    from sst_search.images import load_image
    from sst_search.synthetic import generate_collection

    coll = generate_collection(tmp_path / "syn", species=1, per_species=2, seed=1)
    config = Config.model_validate({"embedding": {"embedder": "color-pattern"}})
    db = tmp_path / "db.duckdb"
    run_index(coll.manifest, coll.references, db, config, masks=coll.ground_truth / coll.groups[0])
    with Store.open(db, read_only=True) as store:
        sid = store.filter_specimens()[0]
        trait = store.trait_masks(sid)[0]
        image = load_image(store.get_specimen(sid)["path"])
    corrected = np.zeros(image.shape[:2], bool)
    corrected[4:20, 6:30] = True
    embedder = create_embedder("color-pattern")
    decide(db, sid, trait.trait_name, "correct", "ana", mask=corrected, embedder=embedder, publish=False)
    with Store.open(db, read_only=True) as store:
        before = store.get_vectors(embedder.name, trait.trait_name, [sid])[1][0]

    summary = run_index(coll.manifest, coll.references, db, config, masks=coll.ground_truth / coll.groups[0], force=True)
    assert summary.counts["indexed"] == 2
    with Store.open(db, read_only=True) as store:
        (mask,) = [m for m in store.trait_masks(sid) if m.trait_id == trait.trait_id]
        assert mask.source == "corrected" and np.array_equal(mask.mask(), corrected & (store.label_map(sid) == trait.trait_id))
        after = store.get_vectors(embedder.name, trait.trait_name, [sid])[1][0]
        assert np.allclose(after, before, atol=1e-6)
        frame = store.measurements_frame(specimen_ids=[sid]).set_index("trait_id")
        assert frame.loc[trait.trait_id, "area_px"] == mask.area
        assert [d["decision"] for d in decisions(store, sid)] == ["correct"]
