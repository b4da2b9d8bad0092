"""Measurements against shapes whose geometry is known exactly, colours computed by hand,
the mm conversion, and a re-measure of an existing store without re-segmenting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sst_search.measure import (
    FIELD_NAMES,
    Scale,
    colour_stats,
    measure_label_map,
    measure_mask,
    resolve_scale,
)
from sst_search.remeasuring import remeasure
from sst_search.store import SpecimenRecord, Store, masks_from_label_map, specimen_id


def _rectangle(w: int, h: int, shape=(120, 200), at=(30, 20)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[at[1] : at[1] + h, at[0] : at[0] + w] = True
    return m


def _disc(r: int, shape=(160, 160), centre=(80, 70)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= r * r


def test_rectangle_geometry_is_exact_up_to_rasterisation():
    w, h = 100, 20
    m = measure_mask(_rectangle(w, h), None)
    assert m["area_px"] == w * h
    assert m["bbox_width_px"] == w and m["bbox_height_px"] == h
    assert (m["centroid_x"], m["centroid_y"]) == (30 + (w - 1) / 2, 20 + (h - 1) / 2)
    # perimeter through boundary pixel centres: 2 (w - 1 + h - 1), at most 4 px short of 2 (w + h)
    assert abs(m["perimeter_px"] - 2 * (w + h)) <= 4
    # the ellipse with the rectangle's second moments: axis = 4 sqrt(var), var = (n^2 - 1) / 12 per side
    assert m["major_axis_px"] == pytest.approx(4 * math.sqrt((w * w - 1) / 12), rel=1e-6)
    assert m["minor_axis_px"] == pytest.approx(4 * math.sqrt((h * h - 1) / 12), rel=1e-6)
    assert m["orientation_deg"] == pytest.approx(0.0, abs=1e-6)
    assert m["solidity"] == pytest.approx(1.0)
    upright = measure_mask(_rectangle(h, w, shape=(160, 100)), None)
    assert upright["orientation_deg"] == pytest.approx(90.0, abs=1e-6)
    assert m["area_mm2"] is None and m["L_mean"] is None  # no scale, no image: nothing invented


def test_disc_geometry_and_mm_conversion():
    r = 40
    px = measure_mask(_disc(r), None)
    assert px["area_px"] == pytest.approx(math.pi * r * r, rel=0.01)
    assert px["perimeter_px"] == pytest.approx(2 * math.pi * r, rel=0.06)
    assert px["major_axis_px"] == pytest.approx(2 * r, rel=0.01) and px["minor_axis_px"] == pytest.approx(2 * r, rel=0.01)
    assert px["eccentricity"] == pytest.approx(0.0, abs=0.05)
    assert (px["centroid_x"], px["centroid_y"]) == (pytest.approx(80), pytest.approx(70))
    mm = measure_mask(_disc(r), None, Scale(8.0, "collection"))
    assert mm["area_mm2"] == pytest.approx(px["area_px"] / 64) and mm["perimeter_mm"] == pytest.approx(px["perimeter_px"] / 8)
    assert mm["major_axis_mm"] == pytest.approx(px["major_axis_px"] / 8)
    assert mm["area_px"] == px["area_px"]  # px columns stay px


def test_colour_statistics_match_hand_computed_values():
    # 7 pure red pixels and 3 pure blue: means, medians and the dominant bin are known exactly.
    pixels = np.array([[255, 0, 0]] * 7 + [[0, 0, 255]] * 3, np.uint8)
    c = colour_stats(pixels)
    assert (c["red_mean"], c["green_mean"], c["blue_mean"]) == (pytest.approx(178.5), 0.0, pytest.approx(76.5))
    assert (c["red_median"], c["blue_median"]) == (255.0, 0.0)
    assert c["dominant_color"] == "#ff0000" and c["dominant_share"] == pytest.approx(0.7)
    # CIELAB (D65) of sRGB red is L* 53.24, a* 80.09, b* 67.20; of blue L* 32.30, a* 79.19, b* -107.86.
    assert c["L_median"] == pytest.approx(53.24, abs=0.01) and c["b_median"] == pytest.approx(67.20, abs=0.01)
    assert c["L_mean"] == pytest.approx(0.7 * 53.24 + 0.3 * 32.30, abs=0.01)
    assert c["b_mean"] == pytest.approx(0.7 * 67.20 - 0.3 * 107.86, abs=0.01)


def test_label_map_rows_and_scale_sources():
    label_map = np.zeros((50, 60), np.uint8)
    label_map[5:15, 5:25] = 1
    label_map[30:40, 30:35] = 3
    image = np.zeros((50, 60, 3), np.uint8)
    image[label_map == 1] = (10, 200, 30)
    rows = measure_label_map(label_map, image, {1: "band", 2: "absent", 3: "spot"}, Scale(2.0, "metadata:pixelsPerMM"))
    assert [(r["trait_id"], r["trait_name"], r["unit"]) for r in rows] == [(1, "band", "mm"), (3, "spot", "mm")]
    assert rows[0]["area_mm2"] == 200 / 4 and rows[0]["green_mean"] == 200.0 and rows[0]["dominant_color"] == "#0ac81e"
    assert set(FIELD_NAMES) <= set(rows[0])
    assert resolve_scale({"pixelsPerMM": "12.5"}, pixels_per_mm=3.0) == Scale(12.5, "metadata:pixelsPerMM")
    assert resolve_scale({}, pixels_per_mm=3.0) == Scale(3.0, "collection")
    assert resolve_scale({"scale": "4"}, column="scale") == Scale(4.0, "metadata:scale")
    assert resolve_scale({}).unit == "px"
    bad = resolve_scale({"pixelsPerMM": "-1"}, pixels_per_mm=3.0)  # never silently swapped for another scale
    assert bad.pixels_per_mm is None and "invalid" in bad.source
    with pytest.raises(ValueError, match="positive"):
        resolve_scale({}, pixels_per_mm=0.0)


def test_store_keeps_measurements_and_remeasures_without_segmenting(tmp_path):
    from sst_search.images import save_image

    image = np.full((40, 50, 3), 90, np.uint8)
    save_image(tmp_path / "a.png", image)
    label_map = np.zeros((40, 50), np.uint8)
    label_map[10:20, 10:30] = 1
    names = {1: "band"}
    sid = specimen_id("a.png")
    rec = SpecimenRecord(sid, str(tmp_path / "a.png"), "indexed", group_name="g", width=50, height=40,
                         metadata={"pixelsPerMM": "2"}, masks=masks_from_label_map(label_map, names),
                         measurements=measure_label_map(label_map, image, names))  # written without a scale
    db = tmp_path / "db.duckdb"
    with Store.open(db) as store:
        store.write_batch([rec])
        before = store.measurements_frame()
        assert before.loc[0, "unit"] == "px" and before.loc[0, "area_px"] == 200 and np.isnan(before.loc[0, "area_mm2"])
        measured, problems = remeasure(store)
        assert (measured, problems) == (1, [])
        after = store.measurements_frame()
        assert after.loc[0, "area_mm2"] == 50 and after.loc[0, "scale_source"] == "metadata:pixelsPerMM"
        assert after.loc[0, "L_mean"] == pytest.approx(before.loc[0, "L_mean"])
        (tmp_path / "a.png").unlink()  # an unreadable image still gets its shape measured, and is listed
        measured, problems = remeasure(store, pixels_per_mm=4.0)
        assert measured == 1 and "a.png" in problems[0][0]
        assert store.measurements_frame().loc[0, "area_mm2"] == 50  # the item's own scale wins
        assert store.measured_traits() == ["band"]


def test_measure_command_applies_a_collection_scale_and_publishes(tmp_path):
    from typer.testing import CliRunner

    from sst_search.cli import app
    from sst_search.store.snapshots import resolve_snapshot

    label_map = np.zeros((20, 20), np.uint8)
    label_map[2:6, 2:12] = 1
    db = tmp_path / "db.duckdb"
    with Store.open(db) as store:
        store.write_batch([SpecimenRecord(1, str(tmp_path / "missing.png"), "indexed",
                                          masks=masks_from_label_map(label_map, {1: "band"}))])
    result = CliRunner().invoke(app, ["measure", "--db", str(db), "--pixels-per-mm", "2", "--quiet"])
    assert result.exit_code == 1, result.output  # the image is gone: shapes measured, colour not, and said so
    assert "missing.png" in result.output
    with Store.open(resolve_snapshot(db), read_only=True) as snapshot:
        row = snapshot.measurements_frame().iloc[0]
    assert (row["area_mm2"], row["scale_source"], row["unit"]) == (10.0, "collection", "mm")
    assert CliRunner().invoke(app, ["measure", "--db", str(tmp_path / "nope.duckdb")]).exit_code == 2
    assert CliRunner().invoke(app, ["measure", "--db", str(db), "--pixels-per-mm", "-3"]).exit_code == 2


NASTY_TRAIT = "o'brien \"band\"; DROP TABLE specimens; --"


@pytest.fixture(scope="module")
def measured_engine(tmp_path_factory):
    """A published store of four specimens whose one trait has areas 100, 200, 300, 400 px at 10 px/mm."""
    from sst_search.query import SearchEngine
    from sst_search.store.snapshots import publish_snapshot

    db = tmp_path_factory.mktemp("measured") / "db.duckdb"
    rng = np.random.default_rng(0)
    records = []
    for i in range(1, 5):
        label_map = np.zeros((40, 40), np.uint8)
        label_map[:10, : 10 * i] = 1
        image = np.zeros((40, 40, 3), np.uint8)
        image[label_map == 1] = (50 * i, 0, 0)
        names = {1: NASTY_TRAIT}
        vec = rng.normal(size=4).astype(np.float32)
        records.append(SpecimenRecord(
            i, f"s{i}.png", "indexed", group_name="g", metadata={"catalogNumber": f"C-{i}"},
            masks=masks_from_label_map(label_map, names),
            measurements=measure_label_map(label_map, image, names, Scale(10.0, "collection")),
            vectors={("test", "__specimen__"): vec / np.linalg.norm(vec)},
        ))
    with Store.open(db) as store:
        store.write_batch(records)
    publish_snapshot(db)
    with SearchEngine.open(db) as engine:
        yield engine


def test_measurement_filters_compile_to_parameters_and_select_the_right_specimens(measured_engine):
    from sst_search.query import Filter, QueryError, compile_filters, parse_filter

    engine = measured_engine
    ids = lambda *texts: sorted(engine.filter_ids([parse_filter(t) for t in texts]).tolist())  # noqa: E731
    assert ids(f"{NASTY_TRAIT}.area_mm2 > 2.5") == [3, 4]  # 300 and 400 px at 10 px/mm = 3 and 4 mm2
    assert ids(f"{NASTY_TRAIT}.area_px <= 200", "catalogNumber != C-1") == [2]
    assert ids(f"{NASTY_TRAIT}.red_mean >= 150") == [3, 4]
    assert ids(f"{NASTY_TRAIT}.dominant_color == #c80000") == [4]
    hits = engine.search("__specimen__", k=5, specimen_id=1, embedder="test",
                         filters=[Filter(field=f"{NASTY_TRAIT}.area_mm2", op="<", value=3.5)])
    assert sorted(h.specimen_id for h in hits) == [2, 3]
    where, params = compile_filters([parse_filter(f"{NASTY_TRAIT}.L_mean < 50")], set(), engine.store.filter_traits())
    assert NASTY_TRAIT not in where and "'" not in where and params == [NASTY_TRAIT, 50.0]
    for bad, why in [(f"{NASTY_TRAIT}.area_mm2 > 1; DROP TABLE specimens", "not a number"),
                     ("band'; --.area_px > 1", "no trait"), (f"{NASTY_TRAIT}.area_px; -- > 1", "unknown filter field"),
                     (f"{NASTY_TRAIT}.area_px contains 1", "compares with")]:
        with pytest.raises(QueryError, match=why):
            engine.filter_ids([parse_filter(bad)])
    assert ids(f"{NASTY_TRAIT}.area_px > 0") == [1, 2, 3, 4]  # the tables are still there


def test_shape_measurements_equal_regionprops_definitions():
    """Moments, axes, angle and perimeter computed from OpenCV equal scikit-image's regionprops
    on rotated ellipses and blob unions; solidity uses the exact hull of the pixel squares,
    so it never exceeds 1 and stays close to regionprops' rasterised hull."""
    from skimage.measure import regionprops

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:90, :120]
    for _ in range(25):
        mask = np.zeros((90, 120), bool)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy, rx, ry, ang = rng.uniform(20, 100), rng.uniform(20, 70), rng.uniform(2, 30), rng.uniform(2, 20), rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
            v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
            mask |= (u / rx) ** 2 + (v / ry) ** 2 <= 1
        ours, ref = measure_mask(mask, None), regionprops(mask.astype(np.uint8))[0]
        angle = math.degrees(ref.orientation) - 90.0
        angle += 180.0 if angle <= -90.0 else 0.0
        assert ours["area_px"] == ref.area and ours["perimeter_px"] == pytest.approx(ref.perimeter, rel=1e-12)
        assert (ours["centroid_y"], ours["centroid_x"]) == pytest.approx(ref.centroid, rel=1e-9)
        assert ours["major_axis_px"] == pytest.approx(ref.axis_major_length, rel=1e-9)
        assert ours["minor_axis_px"] == pytest.approx(ref.axis_minor_length, rel=1e-9, abs=1e-9)
        assert ours["eccentricity"] == pytest.approx(ref.eccentricity, rel=1e-9, abs=1e-9)
        assert ours["orientation_deg"] == pytest.approx(angle, abs=1e-6)
        assert 0 < ours["solidity"] <= 1 and ours["solidity"] == pytest.approx(ref.solidity, abs=0.25)
    assert measure_mask(_disc(30), None)["solidity"] == pytest.approx(regionprops(_disc(30).astype(np.uint8))[0].solidity, abs=0.02)
