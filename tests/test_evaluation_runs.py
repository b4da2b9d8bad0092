"""k-shot protocol with the real SAM 2 hiera-t (random weights) and retrieval evaluation
over real indexes (DuckDB + FAISS) built from provided ground-truth masks."""

from __future__ import annotations

import csv
import math
from statistics import fmean, stdev

import numpy as np
import pytest
from typer.testing import CliRunner

from sst_search.cli import app
from sst_search.evaluation import MaskDataset, load_mask_folder
from sst_search.evaluation.kshot import draw_supports, open_dataset, run_kshot
from sst_search.evaluation.retrieval import evaluate_retrieval
from sst_search.store import SPECIMEN_TRAIT, SpecimenRecord, Store
from sst_search.synthetic import generate_collection
from tests.fixtures import TEST_IMAGE_SIZE, index_synthetic

runner = CliRunner()


@pytest.fixture(scope="module")
def kshot_collection(tmp_path_factory):
    return generate_collection(tmp_path_factory.mktemp("kshot"), species=2, per_species=4, seed=0)


def _overlap_keys(result):
    return [(o.group, o.item_id, o.trait_id, o.intersection, o.gt_pixels, o.pred_pixels) for o in result.scores.overlaps]


def test_kshot_is_deterministic_per_seed_and_summarises_seeds(kshot_collection, tracker):
    dataset, names = open_dataset("synthetic", root=kshot_collection.root)
    assert len(dataset) == 8 and dataset.groups == sorted(kshot_collection.groups)
    # Seeds 0 and 2 draw different supports for this collection (checked below).
    report = run_kshot(dataset, tracker, k=1, seeds=[0, 2], trait_names=names)
    first, second = report.seeds
    assert first.supports != second.supports
    # Same seed again, on one group only (draws are per group, and this keeps the test fast):
    # the same support and the same pixel counts.
    group = kshot_collection.groups[0]
    one_group = MaskDataset("one group", [r for r in dataset.records if r.group == group])
    again = run_kshot(one_group, tracker, k=1, seeds=[0], trait_names=names).seeds[0]
    assert again.supports == {group: first.supports[group]}
    assert _overlap_keys(again) == [o for o in _overlap_keys(first) if o[0] == group]

    for result in report.seeds:
        for group, support_ids in result.supports.items():
            assert len(support_ids) == 1
            scored = {o.item_id for o in result.scores.overlaps if o.group == group}
            everyone = {r.item_id for r in dataset.records if r.group == group}
            # Every specimen but the support is scored, and the support never is.
            assert scored == everyone - set(support_ids)
        assert not result.failed and not result.skipped_groups
        assert set(result.group_miou) == set(kshot_collection.groups)

    mean, std = report.overall
    assert mean == pytest.approx(fmean([first.overall_miou, second.overall_miou]))
    assert std == pytest.approx(stdev([first.overall_miou, second.overall_miou]))
    for group, (g_mean, _) in report.groups.items():
        assert g_mean == pytest.approx(fmean([first.group_miou[group], second.group_miou[group]]))
    assert report.weights_random
    # Trait names come from the collection's traits.yaml files.
    assert report.trait_name(group, 1) == names[group][1] != "trait_1"


def test_kshot_draws_depend_only_on_seed_and_group():
    items = list(range(10))
    assert draw_supports(items, "alba", 3, 5) == draw_supports(items, "alba", 3, 5)
    draws = {tuple(draw_supports(items, "alba", 3, seed)) for seed in range(20)}
    assert len(draws) > 5
    assert all(len(set(d)) == 3 and all(0 <= i < 10 for i in d) for d in draws)


def test_kshot_skips_groups_without_queries(kshot_collection, tracker):
    dataset = load_mask_folder(kshot_collection.root)
    report = run_kshot(dataset, tracker, k=4, seeds=[0])
    assert set(report.seeds[0].skipped_groups) == set(kshot_collection.groups)
    assert report.overall == (None, None)
    with pytest.raises(ValueError, match="mode"):
        run_kshot(dataset, tracker, k=1, mode="sideways")


def test_eval_kshot_cli_writes_csv(kshot_collection, tmp_path):
    # k=3 of 4 per species: one query per species keeps SAM 2 work small.
    out = tmp_path / "kshot.csv"
    result = runner.invoke(
        app,
        ["eval-kshot", "--format", "synthetic", "--root", str(kshot_collection.root), "--k", "3", "--seeds", "3",
         "--weights", "random", "--image-size", str(TEST_IMAGE_SIZE), "--device", "cpu", "--csv", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output
    rows = list(csv.DictReader(out.open()))
    overall = [r for r in rows if r["level"] == "overall" and r["seed"] == "3"]
    assert len(overall) == 1 and 0.0 <= float(overall[0]["miou"]) <= 1.0
    traits = {(r["group"], r["trait_name"]) for r in rows if r["level"] == "trait"}
    assert len(traits) >= 4  # 2 species with 2-4 named traits each

    bad = runner.invoke(app, ["eval-kshot", "--format", "cambridge", "--split", str(tmp_path / "nope.json")])
    assert bad.exit_code == 2 and "nope.json" in bad.output


# --------------------------------------------------------------------------- retrieval


@pytest.fixture(scope="module")
def color_index(tmp_path_factory):
    _, db = index_synthetic(tmp_path_factory.mktemp("retrieval"), species=4, per_species=5, seed=0)
    return db


def test_color_pattern_retrieves_same_species_far_above_chance(color_index):
    with Store.open(color_index, read_only=True) as store:
        report = evaluate_retrieval(store, by="group", k=4)
        by_name = evaluate_retrieval(store, by="scientificName", k=4, traits=[SPECIMEN_TRAIT])
    whole = report.row("color-pattern", SPECIMEN_TRAIT)
    assert whole.queries == 20 and whole.labels == 4 and whole.skipped == 0
    # 4 same-species specimens among the 19 others: a random ranking finds 4/19 per rank.
    assert whole.chance_precision_at_k == pytest.approx(4 / 19)
    # Measured on this collection (seed 0): mAP@4 0.708, P@4 0.725 vs chance 0.211
    # (seeds 1 and 2 of the generator: mAP@4 0.494 and 0.569).
    assert whole.map_at_k >= whole.chance_precision_at_k + 0.25
    assert whole.precision_at_k >= whole.chance_precision_at_k + 0.25
    # forewing_band is shared by 3 species: measured mAP@4 0.728 vs chance 0.286.
    band = report.row("color-pattern", "forewing_band")
    assert band.labels == 3 and band.chance_precision_at_k == pytest.approx(4 / 14)
    assert band.map_at_k >= band.chance_precision_at_k + 0.3
    # scientificName is one-to-one with the group in the synthetic collection.
    assert by_name.rows == [whole]
    with Store.open(color_index, read_only=True) as store, pytest.raises(ValueError, match="nosuchcolumn"):
        evaluate_retrieval(store, by="nosuchcolumn")


def test_eval_retrieval_cli(color_index, tmp_path):
    out = tmp_path / "retrieval.csv"
    result = runner.invoke(app, ["eval-retrieval", "--db", str(color_index), "--k", "4", "--csv", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["trait"]: r for r in csv.DictReader(out.open())}
    assert float(rows[SPECIMEN_TRAIT]["map_at_k"]) > float(rows[SPECIMEN_TRAIT]["chance_precision_at_k"])
    bad = runner.invoke(app, ["eval-retrieval", "--db", str(color_index), "--embedder", "bioclip"])
    assert bad.exit_code == 2 and "bioclip" in bad.output


def _unit(degrees: float) -> np.ndarray:
    rad = math.radians(degrees)
    return np.array([math.cos(rad), math.sin(rad)], np.float32)


def test_retrieval_scores_a_hand_made_ranking(tmp_path):
    # Four specimens on the unit circle; cosine ranks by angular distance.
    #   s1 A 0deg, s2 B 10deg, s3 A 30deg, s4 B 90deg.  Rankings without the query itself:
    #   s1: s2 s3 s4 (relevant s3 at rank 2)   s2: s1 s3 s4 (s4 at rank 3)
    #   s3: s2 s1 s4 (s1 at rank 2)            s4: s3 s2 s1 (s2 at rank 2)
    # Trait "spot" only on s1 and s3 (both A): each finds the other at rank 1.
    angles = {1: ("A", 0), 2: ("B", 10), 3: ("A", 30), 4: ("B", 90)}
    records = []
    for sid, (group, deg) in angles.items():
        vectors = {("toy", SPECIMEN_TRAIT): _unit(deg)}
        if group == "A":
            vectors[("toy", "spot")] = _unit(deg)
        records.append(SpecimenRecord(sid, f"s{sid}.png", "indexed", group_name=group, vectors=vectors))
    with Store.open(tmp_path / "toy.duckdb") as store:
        store.write_batch(records)
        at2 = evaluate_retrieval(store, k=2)
        at3 = evaluate_retrieval(store, k=3, traits=[SPECIMEN_TRAIT])

    whole2 = at2.row("toy", SPECIMEN_TRAIT)
    # P@2: 1/2, 0, 1/2, 1/2; AP@2 (R = 1): 1/2, 0, 1/2, 1/2.
    assert whole2.precision_at_k == pytest.approx((0.5 + 0 + 0.5 + 0.5) / 4)
    assert whole2.map_at_k == pytest.approx((0.5 + 0 + 0.5 + 0.5) / 4)
    assert whole2.chance_precision_at_k == pytest.approx(1 / 3)  # 2 of 3 others drawn, 1 relevant, / k=2

    whole3 = at3.row("toy", SPECIMEN_TRAIT)
    # P@3: 1/3 each; AP@3: 1/2, 1/3, 1/2, 1/2.
    assert whole3.precision_at_k == pytest.approx(1 / 3)
    assert whole3.map_at_k == pytest.approx((0.5 + 1 / 3 + 0.5 + 0.5) / 4)
    assert [r.trait for r in at3.rows] == [SPECIMEN_TRAIT]

    spot = at2.row("toy", "spot")
    # One other specimen, relevant, at rank 1: AP@2 = 1, but P@2 = 1/2 (rank 2 is empty).
    assert (spot.queries, spot.map_at_k, spot.precision_at_k) == (2, 1.0, 0.5)
    assert spot.chance_precision_at_k == pytest.approx(0.5)
