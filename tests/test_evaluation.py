"""Evaluation: IoU/mIoU definitions, retrieval metrics, folder evaluation, dataset loaders."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from sst_search.commands.evaluate import eval_seg
from sst_search.evaluation import (
    DatasetFormatError,
    PairStatus,
    ProblemKind,
    average_precision_at_k,
    evaluate_folders,
    fit_mask_to_image,
    load_cambridge_butterfly,
    load_mask_folder,
    load_neon_beetles,
    load_record_mask,
    precision_at_k,
    retrieval_scores,
    trait_overlaps,
)
from sst_search.images import load_mask, save_mask

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "annotation-formats"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"shared annotation samples not found at {SAMPLES}")


def square(shape: tuple[int, int], y: int, x: int, side: int, label: int = 1, into: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros(shape, np.uint8) if into is None else into
    out[y : y + side, x : x + side] = label
    return out


def two_trait_mask(shape=(40, 60)) -> np.ndarray:
    m = square(shape, 4, 4, 10, 1)
    return square(shape, 20, 30, 12, 2, into=m)


# ----------------------------------------------------------------- metrics


def test_shifted_square_iou_matches_hand_computation():
    side, shift = 10, 2
    gt = square((32, 32), 5, 5, side)
    pred = square((32, 32), 5, 5 + shift, side)
    # Overlap is side x (side - shift); union is two squares minus that overlap.
    inter = side * (side - shift)  # 80
    union = 2 * side * side - inter  # 120
    [o] = trait_overlaps(pred, gt, "img", "g")
    assert (o.intersection, o.gt_pixels, o.pred_pixels) == (inter, side * side, side * side)
    assert o.iou == pytest.approx(inter / union) == pytest.approx(80 / 120)


def test_false_positive_and_absent_traits_are_not_pairs():
    gt = square((20, 20), 0, 0, 5, 1)
    pred = square((20, 20), 0, 0, 5, 1)
    square((20, 20), 10, 10, 4, 3, into=pred)  # trait 3 predicted, absent in GT
    overlaps = {o.trait_id: o for o in trait_overlaps(pred, gt)}
    assert set(overlaps) == {1, 3}  # trait 2 is in neither: not reported at all
    assert overlaps[3].status is PairStatus.FALSE_POSITIVE and overlaps[3].iou is None
    assert overlaps[1].iou == 1.0


def test_shape_mismatch_is_an_error_naming_the_item():
    with pytest.raises(ValueError, match="img7"):
        trait_overlaps(np.zeros((4, 4), np.uint8), np.zeros((5, 4), np.uint8), "img7")


def test_precision_and_average_precision_by_hand():
    ranked = ["a", "x", "b", "y", "c"]
    relevant = {"a", "b", "c", "d"}  # R = 4
    # Hits at ranks 1, 3, 5. P@5 = 3/5.
    assert precision_at_k(ranked, relevant, 5) == pytest.approx(3 / 5)
    # AP@5 = (P@1 + P@3 + P@5) / min(5, 4) = (1/1 + 2/3 + 3/5) / 4
    assert average_precision_at_k(ranked, relevant, 5) == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)
    # AP@3 = (1/1 + 2/3) / min(3, 4) = (5/3) / 3
    assert average_precision_at_k(ranked, relevant, 3) == pytest.approx((1 + 2 / 3) / 3)
    # Predicate form gives the same numbers when told R.
    assert average_precision_at_k(ranked, lambda i: i in relevant, 5, n_relevant=4) == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)
    with pytest.raises(ValueError, match="n_relevant"):
        average_precision_at_k(ranked, lambda i: i in relevant, 5)


def test_retrieval_edge_cases():
    # A repeated hit earns nothing the second time: P@3 = 2/3, not 1.
    assert precision_at_k(["a", "a", "b"], {"a", "b"}, 3) == pytest.approx(2 / 3)
    # A short ranking is padded with misses: one hit in k = 4 slots.
    assert precision_at_k(["a"], {"a"}, 4) == pytest.approx(1 / 4)
    # One relevant id found at rank 1: AP@4 = (1/1) / min(4, 1) = 1.
    assert average_precision_at_k(["a"], {"a"}, 4) == 1.0
    with pytest.raises(ValueError, match="undefined"):
        average_precision_at_k(["a"], set(), 4)
    scores = retrieval_scores([(["a", "x"], {"a"}), (["x", "b"], {"b"}), (["z"], set())], k=2)
    # AP@2: query 1 = 1/1 = 1; query 2 = (1/2) / 1 = 0.5; query 3 has no relevant id: skipped.
    assert scores.map_at_k == pytest.approx((1 + 0.5) / 2)
    assert scores.precision_at_k == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert (scores.queries, scores.skipped) == (2, 1)


# ----------------------------------------------------------------- folder evaluation


def write_pair_tree(tmp_path: Path, masks: dict[str, dict[str, np.ndarray]]) -> Path:
    gt = tmp_path / "gt"
    for group, items in masks.items():
        for stem, m in items.items():
            save_mask(gt / group / f"{stem}.png", m)
    return gt


def test_perfect_predictions_score_one(tmp_path):
    masks = {"alpha": {"a1": two_trait_mask(), "a2": square((40, 60), 2, 2, 20, 1)}, "beta": {"b1": two_trait_mask()}}
    gt = write_pair_tree(tmp_path, masks)
    pred = tmp_path / "pred"
    for items in masks.values():
        for stem, m in items.items():
            save_mask(pred / f"{stem}.png", m)  # flat folder, matched by stem
            Image.new("RGB", (60, 40)).save(pred / f"{stem}.overlay.png")  # previews are ignored
    report = evaluate_folders(pred, gt)
    assert report.overall_miou == 1.0 and report.pooled_miou == 1.0
    assert report.group_miou == {"alpha": 1.0, "beta": 1.0}
    assert report.missing == [] and report.unmatched_predictions == [] and report.errors == []


def test_missing_predictions_score_zero_and_are_listed(tmp_path):
    gt = write_pair_tree(tmp_path, {"alpha": {"a1": two_trait_mask(), "a2": two_trait_mask()}, "beta": {"b1": two_trait_mask()}})
    pred = tmp_path / "pred"
    save_mask(pred / "a1.mask.png", two_trait_mask())
    save_mask(pred / "b1.png", np.zeros((40, 60), np.uint8))  # predicts nothing: both traits IoU 0
    save_mask(pred / "stray.png", two_trait_mask())  # no GT
    report = evaluate_folders(pred, gt)
    assert report.missing == [("alpha", "a2")]
    # alpha: a1 traits (1, 1), a2 missing (0, 0) -> 2/4; beta: (0, 0) -> 0
    assert report.group_miou == {"alpha": pytest.approx(0.5), "beta": 0.0}
    assert report.overall_miou == pytest.approx((0.5 + 0.0) / 2)
    assert report.pooled_miou == pytest.approx(2 / 6)
    assert [p.name for p in report.unmatched_predictions] == ["stray.png"]
    rows = {(r.group, r.trait_id): r for r in report.scores.trait_rows()}
    assert rows[("alpha", 1)].missing_predictions == 1 and rows[("alpha", 1)].images == 2


def test_overall_is_mean_of_groups_while_pooled_weights_pairs(tmp_path):
    one = square((20, 20), 0, 0, 5, 1)
    three = square((20, 20), 0, 0, 5, 1)
    square((20, 20), 10, 0, 5, 2, into=three)
    square((20, 20), 10, 10, 5, 3, into=three)
    gt = write_pair_tree(tmp_path, {"a": {"x": one}, "b": {"y": three}})
    pred = tmp_path / "pred"
    save_mask(pred / "x.png", one)  # group a: one pair, IoU 1
    fp = np.zeros((20, 20), np.uint8)
    square((20, 20), 0, 14, 5, 4, into=fp)  # group b: three pairs at 0, plus a false positive
    save_mask(pred / "y.png", fp)
    report = evaluate_folders(pred, gt)
    assert report.overall_miou == pytest.approx((1.0 + 0.0) / 2)
    assert report.pooled_miou == pytest.approx(1 / 4)
    rows = {(r.group, r.trait_id): r for r in report.scores.trait_rows()}
    assert rows[("b", 4)].false_positives == 1 and rows[("b", 4)].images == 0


def test_prediction_resized_to_gt_size_and_manifest_groups(tmp_path):
    small = two_trait_mask((20, 30))
    big = np.kron(small, np.ones((4, 4), np.uint8))  # GT at 4x the prediction size
    save_mask(tmp_path / "gt" / "s1.png", big)
    save_mask(tmp_path / "pred" / "s1.png", small)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,group,catalogNumber\nimages/s1.jpg,heliconius,C1\n")
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", manifest)
    assert report.group_miou == {"heliconius": 1.0}
    assert len(report.resized) == 1 and "30x20 -> 120x80" in report.resized[0]


def test_unreadable_prediction_is_reported_and_scored_as_missing(tmp_path):
    gt = write_pair_tree(tmp_path, {"g": {"a": two_trait_mask(), "b": two_trait_mask()}})
    save_mask(tmp_path / "pred" / "a.png", two_trait_mask())
    (tmp_path / "pred" / "b.png").write_bytes(b"\x89PNG not really")
    report = evaluate_folders(tmp_path / "pred", gt)
    assert report.missing == [("g", "b")]
    assert len(report.errors) == 1 and "b.png" in report.errors[0]
    assert report.group_miou["g"] == pytest.approx(0.5)


def test_csv_is_written_and_parseable(tmp_path):
    side, shift = 10, 2
    gt = write_pair_tree(tmp_path, {"g": {"a": square((32, 32), 5, 5, side)}})
    save_mask(tmp_path / "pred" / "a.png", square((32, 32), 5, 5 + shift, side))
    report = evaluate_folders(tmp_path / "pred", gt)
    with report.to_csv(tmp_path / "out" / "traits.csv").open() as fh:
        [row] = list(csv.DictReader(fh))
    assert (row["group"], row["trait_id"], row["images"]) == ("g", "1", "1")
    assert float(row["miou"]) == pytest.approx(80 / 120, abs=1e-6)
    with report.to_csv(tmp_path / "pairs.csv", pairs=True).open() as fh:
        [pair] = list(csv.DictReader(fh))
    assert pair["status"] == "scored" and int(pair["intersection"]) == 80 and float(pair["iou"]) == pytest.approx(80 / 120, abs=1e-6)


def test_cli_prints_table_writes_csv_and_rejects_bad_input(tmp_path):
    app = typer.Typer()
    app.command()(eval_seg)
    runner = CliRunner()
    gt = write_pair_tree(tmp_path, {"alpha": {"a1": two_trait_mask(), "a2": two_trait_mask()}})
    save_mask(tmp_path / "pred" / "a1.png", two_trait_mask())
    result = runner.invoke(app, [str(tmp_path / "pred"), str(gt), "--csv", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    assert "Per-trait IoU" in result.output and "alpha/a2" in result.output and "0.5000" in result.output
    assert (tmp_path / "r.csv").is_file()

    bad = runner.invoke(app, [str(tmp_path / "nope"), str(gt)])
    assert bad.exit_code == 2 and "nope" in bad.output and "does not exist" in bad.output
    (tmp_path / "m.csv").write_text("file,species\nx.png,a\n")
    bad = runner.invoke(app, [str(tmp_path / "pred"), str(gt), "--manifest", str(tmp_path / "m.csv")])
    assert bad.exit_code == 2 and "m.csv" in bad.output and "group" in bad.output


# ----------------------------------------------------------------- dataset loaders


def write_image(path: Path, h: int, w: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path, format=fmt)


@needs_samples
def test_cambridge_split_resolves_images_and_reports_missing_and_raw(tmp_path):
    root = tmp_path / "images"
    write_image(root / "CAM045138_d.JPG", 384, 576, "JPEG")  # exact name
    write_image(root / "cyrbia" / "cam040581_d.jpg", 60, 90, "JPEG")  # other case, sub-folder
    (root / "CAM045312_d.CR2").write_bytes(b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(64))  # undecodable raw
    write_image(root / "CAM045013_d.tif", 50, 70, "TIFF")  # raw converted by the user: same stem
    # CAM045266_d (row 43626) is absent.
    ds = load_cambridge_butterfly(SAMPLES / "cambridge_butterfly" / "test_data.sample.json", image_root=root)

    assert len(ds) == 5 and ds.groups == ["cyrbia"]
    with_images = {r.item_id: r.image_path.name for r in ds if r.image_path is not None}
    assert with_images == {"43119": "CAM045138_d.JPG", "12768": "cam040581_d.jpg", "42616": "CAM045013_d.tif"}
    raw = ds.problems_of(ProblemKind.RAW_IMAGE)
    assert [p.item_id for p in raw] == ["43810"] and "CAM045312_d.CR2" in raw[0].message and "convert" in raw[0].message
    missing = ds.problems_of(ProblemKind.IMAGE_MISSING)
    assert [p.item_id for p in missing] == ["43626"] and "CAM045266_d" in missing[0].message
    assert {p.item_id for p in ds.missing_images} == {"43810", "43626"}
    assert "5 masks, 3 with images" in ds.summary()


@needs_samples
def test_cambridge_mask_is_resized_to_its_image_with_nearest_neighbour(tmp_path):
    write_image(tmp_path / "CAM045138_d.JPG", 384, 576, "JPEG")
    ds = load_cambridge_butterfly(SAMPLES / "cambridge_butterfly" / "test_data.sample.json", image_root=tmp_path)
    record = next(r for r in ds if r.item_id == "43119")
    assert record.image_size == (384, 576)
    original = load_mask(record.mask_path)
    assert original.shape == (1024, 1024)
    fitted = load_record_mask(record)
    assert fitted.shape == (384, 576)
    # Nearest neighbour takes the source pixel under each target pixel's centre (up to
    # rounding where a centre falls exactly on a source pixel edge), so no label is invented.
    rows = ((np.arange(384) + 0.5) * 1024 / 384).astype(int)
    cols = ((np.arange(576) + 0.5) * 1024 / 576).astype(int)
    assert (fitted != original[rows][:, cols]).mean() < 1e-3
    assert set(np.unique(fitted)) == set(np.unique(original)) == set(range(7))
    # Records without an image keep the mask as stored.
    assert load_record_mask(next(r for r in ds if r.image_path is None)).shape == (1024, 1024)


@needs_samples
def test_cambridge_prediction_at_image_size_scores_against_1024_gt(tmp_path):
    write_image(tmp_path / "CAM045138_d.JPG", 384, 576, "JPEG")
    record = next(r for r in load_cambridge_butterfly(SAMPLES / "cambridge_butterfly" / "test_data.sample.json", image_root=tmp_path) if r.item_id == "43119")
    gt_dir = tmp_path / "gt" / "cyrbia"
    gt_dir.mkdir(parents=True)
    (gt_dir / "43119.png").write_bytes(record.mask_path.read_bytes())
    save_mask(tmp_path / "pred" / "43119.png", load_record_mask(record))  # a perfect prediction at photo size
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt")
    assert len(report.resized) == 1
    # Down- then up-sampling only moves boundary pixels: high but not exactly 1.
    assert 0.9 < report.overall_miou < 1.0
    assert {r.trait_id for r in report.scores.trait_rows()} == {1, 2, 3, 4, 5, 6}


@needs_samples
def test_cambridge_minor_species_with_symmetry_and_missing_mask(tmp_path):
    sample = SAMPLES / "cambridge_butterfly" / "minor_species.sample.json"
    rows = json.loads(sample.read_text())
    mask_root = tmp_path / "cambridge_butterfly"
    written = 0
    for species, items in rows.items():
        for item_id, _url, mask_rel, _sym in items:
            if item_id == 9573:
                continue  # leave one mask out
            save_mask(mask_root / mask_rel, square((1024, 1024), 100, 100, 200, 1))
            written += 1
    ds = load_cambridge_butterfly(sample, mask_root=mask_root)
    assert len(ds) == written == 5
    assert ds.groups == ["amaryllis", "notabilis"]
    assert [p.item_id for p in ds.problems_of(ProblemKind.MASK_MISSING)] == ["9573"]
    assert len(ds.problems_of(ProblemKind.IMAGE_MISSING)) == 5  # no image root given
    first = next(r for r in ds if r.item_id == "18949")
    assert first.group == "notabilis" and first.extra["image_name"] == "CAM016703_d.CR2"
    assert first.extra["symmetry"] == {1: 0, 4: 0, 2: 1, 3: 1, 5: 2, 6: 2}


@needs_samples
def test_neon_beetles_resolve_by_species_folder_and_name(tmp_path):
    meta = SAMPLES / "neon_beetles" / "metadata.sample.json"
    root = tmp_path / "beetles"
    sizes = {}
    for rel in json.loads(meta.read_text())["mask_path"]:
        with Image.open(SAMPLES / "neon_beetles" / rel) as m:
            sizes[Path(rel).stem] = (m.height, m.width)
    write_image(root / "advena" / "beetle_900_895.png", *sizes["beetle_900_895"])
    write_image(root / "beetle_894_736.png", *sizes["beetle_894_736"])  # top level, found by name
    write_image(root / "goryi" / "beetle_946_1212.png", *sizes["beetle_946_1212"])
    (root / "goryi" / "beetle_952_25.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ds = load_neon_beetles(meta, image_root=root)

    assert len(ds) == 6 and ds.groups == ["advena", "goryi"]
    assert sum(r.image_path is not None for r in ds) == 3
    assert {p.item_id for p in ds.problems_of(ProblemKind.IMAGE_MISSING)} == {"beetle_91_54", "beetle_969_535"}
    [bad] = ds.problems_of(ProblemKind.IMAGE_UNREADABLE)
    assert bad.item_id == "beetle_952_25" and "beetle_952_25.png" in bad.message
    for r in ds:
        if r.image_path is not None:  # NEON masks are already at the image's size
            assert load_record_mask(r).shape == r.image_size == sizes[r.item_id]
            assert set(np.unique(load_record_mask(r))) == {0, 1, 2, 3, 4, 5}


def test_loaders_reject_malformed_files_naming_them(tmp_path):
    bad = tmp_path / "meta.json"
    bad.write_text(json.dumps({"url": ["a"], "mask_path": []}))
    with pytest.raises(DatasetFormatError, match="meta.json"):
        load_neon_beetles(bad)
    bad.write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        load_cambridge_butterfly(bad)
    rows = tmp_path / "split.json"
    save_mask(tmp_path / "sp" / "pkl" / "m1.png", np.zeros((8, 8), np.uint8))
    rows.write_text(json.dumps([[1, "http://x/y/IMG1.JPG", "sp/pkl/m1.png"], ["only two", 3]]))
    ds = load_cambridge_butterfly(rows)
    assert len(ds) == 1 and ds.records[0].group == "sp"
    assert [p.kind for p in ds.problems if p.kind is ProblemKind.BAD_ROW] == [ProblemKind.BAD_ROW]


def test_plain_folder_layouts(tmp_path):
    side = tmp_path / "side"
    write_image(side / "g1" / "s1.jpg", 20, 30, "JPEG")
    save_mask(side / "g1" / "s1.mask.png", np.ones((20, 30), np.uint8))
    save_mask(side / "g1" / "s2.mask.png", np.ones((20, 30), np.uint8))  # no image
    write_image(side / "g1" / "s3.png", 20, 30, "PNG")  # no mask
    (side / "s4.CR2").write_bytes(b"raw")
    save_mask(side / "s4.mask.png", np.ones((5, 5), np.uint8))
    ds = load_mask_folder(side)
    assert {(r.group, r.item_id) for r in ds} == {("g1", "s1"), ("g1", "s2"), ("", "s4")}
    assert [p.item_id for p in ds.problems_of(ProblemKind.IMAGE_MISSING)] == ["s2"]
    assert [p.item_id for p in ds.problems_of(ProblemKind.MASK_MISSING)] == ["s3"]
    assert [p.item_id for p in ds.problems_of(ProblemKind.RAW_IMAGE)] == ["s4"]

    tree = tmp_path / "tree"
    write_image(tree / "images" / "sp" / "a.png", 16, 24, "PNG")
    save_mask(tree / "ground_truth" / "sp" / "a.png", np.ones((16, 24), np.uint8))
    [rec] = load_mask_folder(tree).records
    assert (rec.group, rec.item_id, rec.image_size) == ("sp", "a", (16, 24)) and rec.image_path.parent.name == "sp"


def test_fit_mask_never_invents_labels():
    m = np.zeros((10, 10), np.uint8)
    m[:5], m[5:] = 1, 3
    out = fit_mask_to_image(m, (7, 13))
    assert out.shape == (7, 13) and set(np.unique(out)) == {1, 3}
    assert math.isclose((out == 1).mean(), 3 / 7) or math.isclose((out == 1).mean(), 4 / 7)
