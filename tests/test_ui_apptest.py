"""Every page of the Streamlit app, driven by Streamlit's AppTest on a real (random-weights) index."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from sst_search.query import SearchEngine

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"
TIMEOUT = 60
SCORE = re.compile(r"\*\*#(\d+)\*\* · score \*\*(-?\d+\.\d+)\*\*")


@pytest.fixture(scope="module")
def engine(ui_db):
    engine = SearchEngine.open(ui_db)
    yield engine
    engine.close()


@pytest.fixture
def app(ui_db, monkeypatch):
    monkeypatch.setenv("SST_SEARCH_DB", str(ui_db))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    return at


def _scores(at: AppTest) -> list[tuple[int, float]]:
    return [(int(m[1]), float(m[2])) for m in (SCORE.fullmatch(md.value) for md in at.markdown) if m]


def _goto(at: AppTest, page: str) -> AppTest:
    at.sidebar.radio(key="page").set_value(page).run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    return at


def _a_trait(engine: SearchEngine, group: str) -> str:
    return next(t for t in engine.traits(group) if not t.startswith("__"))


def test_search_by_specimen_shows_k_ranked_results_and_opens_one(app, engine):
    group = engine.groups()[0]
    trait = _a_trait(engine, group)
    app.selectbox(key="group").set_value(group).run(timeout=TIMEOUT)
    app.selectbox(key="trait").set_value(trait)
    app.number_input(key="k").set_value(4)
    app.button(key="run_search").click().run(timeout=TIMEOUT)
    assert not app.exception and not app.error, (app.exception, app.error)

    query = app.selectbox(key="query_specimen").value
    expected = engine.search(trait, 4, specimen_id=query)
    shown = _scores(app)
    assert [rank for rank, _ in shown] == [1, 2, 3, 4]
    assert [s for _, s in shown] == pytest.approx([round(r.score, 3) for r in expected], abs=1e-3)
    assert len(app.image) == 4 and len(app.get("button")) >= 4
    catalog_numbers = "\n".join(c.value for c in app.caption)
    assert all(r.metadata["catalogNumber"] in catalog_numbers for r in expected)
    assert app.warning and "Random model weights" in app.sidebar.warning[0].value

    app.button(key=f"search-open-1-{expected[0].specimen_id}").click().run(timeout=TIMEOUT)
    assert app.sidebar.radio(key="page").value == "Specimen"
    assert app.selectbox(key="specimen_id").value == expected[0].specimen_id
    assert app.query_params["specimen"] == str(expected[0].specimen_id)


def test_search_filters_directions_and_clear_errors(app, engine):
    group = engine.groups()[0]
    trait = _a_trait(engine, group)
    app.selectbox(key="group").set_value(group).run(timeout=TIMEOUT)
    app.selectbox(key="trait").set_value(trait)
    query = app.selectbox(key="query_specimen").value
    others = engine.search(trait, 10, specimen_id=query)
    keep = others[-1].metadata["catalogNumber"]
    app.number_input(key="filter_count").set_value(1).run(timeout=TIMEOUT)
    options = app.selectbox(key="filter_field_0").options
    assert f"{trait}.area_mm2" in options and f"{trait}.object_score" in options  # measurements and confidences too
    app.selectbox(key="filter_field_0").set_value("catalogNumber")
    app.selectbox(key="filter_op_0").set_value("in")
    app.text_input(key="filter_value_0").input(f"{keep}, NO-SUCH-NUMBER")
    app.radio(key="direction").set_value("different")
    app.button(key="run_search").click().run(timeout=TIMEOUT)
    assert not app.error, app.error
    assert [rank for rank, _ in _scores(app)] == [1]
    assert keep in "\n".join(c.value for c in app.caption)

    app.radio(key="query_mode").set_value("Text").run(timeout=TIMEOUT)
    app.text_input(key="query_text").input("a red band").run(timeout=TIMEOUT)
    app.button(key="run_search").click().run(timeout=TIMEOUT)
    assert app.error and "Search failed" in app.error[0].value and "text" in app.error[0].value.lower()


def test_upload_is_type_limited_decoded_and_searched(app, engine, ui_db):
    group = engine.groups()[0]
    app.selectbox(key="group").set_value(group).run(timeout=TIMEOUT)
    app.selectbox(key="trait").set_value("__specimen__")
    app.radio(key="query_mode").set_value("Upload").run(timeout=TIMEOUT)
    uploader = app.get("file_uploader")[0]
    assert set(uploader.allowed_type) >= {".jpg", ".png", ".tif"} and ".gif" not in uploader.allowed_type

    uploader.set_value(("scan.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")).run(timeout=TIMEOUT)
    assert app.error and app.error[0].value.startswith("scan.png:")
    assert app.button(key="run_search").disabled

    path = engine.store.get_specimen(engine.store.filter_specimens(group=group)[0])["path"]
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="JPEG", quality=95)
    app.get("file_uploader")[0].set_value(("photo.jpg", buf.getvalue(), "image/jpeg")).run(timeout=TIMEOUT)
    app.number_input(key="k").set_value(3)
    app.button(key="run_search").click().run(timeout=TIMEOUT)
    assert not app.error, app.error
    scores = [s for _, s in _scores(app)]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert scores[0] > 0.9  # the photo's own specimen, re-encoded as JPEG, comes first


def test_specimen_page_lists_traits_with_legend_and_neighbours(app, engine):
    ids = engine.store.filter_specimens(group=engine.groups()[-1])
    # Prefer a specimen that was segmented turned, so the page must say so.
    sid = next((i for i in ids if engine.store.get_specimen(i)["orientation"]), ids[0])
    app.session_state["specimen_id"] = sid
    _goto(app, "Specimen")
    masks = engine.store.trait_masks(sid)
    assert masks
    table = app.dataframe[0].value
    assert table["trait"].tolist() == [m.trait_name for m in masks]
    assert table["area"].tolist() == [m.area for m in masks]
    confidence = app.dataframe[1].value
    assert confidence["object score"].tolist() == [m.object_score for m in masks]
    assert confidence["predicted IoU"].notna().all()
    turned = engine.store.get_specimen(sid)["orientation"]
    assert turned in (0, 90, 180, 270)
    said = any(f"**Segmented turned by:** {turned} degrees" in md.value for md in app.markdown)
    assert said == bool(turned)
    legend = next(md.value for md in app.markdown if "background:rgb" in md.value)
    assert all(m.trait_name in legend for m in masks)
    assert "Nearest neighbours" in [h.value for h in app.subheader]
    neighbour_titles = {md.value for md in app.markdown}
    assert {"**whole specimen**"} | {f"**{m.trait_name}**" for m in masks} <= neighbour_titles
    n_neighbours = len(_scores(app))
    assert n_neighbours >= len(masks) + 1
    assert len(app.image) == 1 + n_neighbours  # the overlay plus one card per neighbour
    groups = tuple(f"({g})" for g in engine.groups())
    named = [c.value for c in app.caption if c.value.split("  \n")[0].endswith(groups)]
    assert len(named) >= n_neighbours  # every neighbour card says whose it is (catalogNumber · stem (group))


def test_collection_page_warns_loudly_and_counts(app):
    _goto(app, "Collection")
    banner = next(e.value for e in app.error if "RANDOM WEIGHTS" in e.value)
    assert "SAM 2 sam2.1-hiera-tiny: random weights" in banner  # the embedder is named, not "embedder: none"
    assert "embedder color-pattern: no learned weights" in banner
    spec = json.loads(app.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["y"]["axis"]["labelLimit"] == 0  # species names are never cut
    metrics = {m.label: m.value for m in app.metric}
    assert metrics == {"failed": "1", "indexed": "6"}
    failures = next(df.value for df in app.dataframe if "error" in df.value.columns)
    assert len(failures) == 1 and failures["path"].iloc[0].endswith("broken.png")
    assert "broken.png" in failures["error"].iloc[0]
    counts = app.dataframe[0].value
    assert counts.sum().sum() == 7 and counts["indexed"].sum() == 6


def test_export_page_offers_non_empty_downloads(app, engine):
    _goto(app, "Export")
    labels = [b.label for b in app.get("download_button")]
    assert labels[:4] == ["Measurements (CSV)", "Measurements (Parquet)", "Masks (PNG zip)", "Masks (COCO RLE JSON)"]
    assert labels[4].startswith("Darwin Core Archive") and labels[5].startswith("Trait regions")
    assert labels[6].startswith("Failed items (1")
    app.button(key="make_crops").click().run(timeout=TIMEOUT)
    assert "Crops (PNG zip)" in [b.label for b in app.get("download_button")]
    sizes = {m[1]: int(m[2].replace(",", "")) for m in (re.fullmatch(r"(\S+): ([\d,]+) bytes", c.value) for c in app.caption) if m}
    assert set(sizes) == {"measurements.csv", "measurements.parquet", "masks.zip", "masks_coco.json", "dwca.zip",
                          "trait_regions.csv", "crops.zip", "failures.csv"}
    assert all(size > 100 for size in sizes.values())
    n_masks = sum(len(engine.store.trait_masks(sid)) for sid in engine.store.specimen_ids(status=None))
    assert f"**6** specimens, **{n_masks}** trait masks" in [md.value for md in app.markdown]


@pytest.mark.parametrize("db_env", [None, "no/such/index.duckdb"])
def test_app_explains_a_missing_index(db_env, monkeypatch):
    if db_env is None:
        monkeypatch.delenv("SST_SEARCH_DB", raising=False)
    else:
        monkeypatch.setenv("SST_SEARCH_DB", db_env)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    message = at.error[0].value
    assert ("--db" in message) if db_env is None else ("no/such/index.duckdb" in message)


def test_ui_command_refuses_a_missing_index_and_finds_the_app(tmp_path):
    from typer.testing import CliRunner

    from sst_search.cli import app
    from sst_search.commands.ui import app_path, streamlit_command

    result = CliRunner().invoke(app, ["ui", "--db", str(tmp_path / "none.duckdb")])
    assert result.exit_code != 0 and "none.duckdb" in result.output
    assert app_path() == APP
    cmd = streamlit_command(tmp_path / "x.duckdb", 8765)
    assert cmd[cmd.index("run") + 1] == str(APP)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1" and cmd[-2:] == ["--db", str(tmp_path / "x.duckdb")]


def test_every_page_imports_outside_a_streamlit_runtime():
    # Tooling and tests import the pages without a running app; components that need the
    # runtime at import time are imported where a page uses them.
    import importlib
    import pkgutil

    import ui.views

    pages = [m.name for m in pkgutil.iter_modules(ui.views.__path__)]
    assert {"references", "review", "search"} <= set(pages)
    for page in pages:
        importlib.import_module(f"ui.views.{page}")
