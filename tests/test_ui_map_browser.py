"""The Map page in a real browser: the map is built from the page, a lasso dragged over part of it
collects exactly the specimens inside, the gallery shows them and the export holds them; a point
clicked is shown beside the map and opens its specimen page."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest

expect = pytest.importorskip("playwright.sync_api").expect

from sst_search.store import Store
from sst_search.store.snapshots import resolve_snapshot
from tests.app_server import ARTIFACTS
from ui.render import trait_label

pytestmark = pytest.mark.browser
expect.set_options(timeout=30_000)

#: Every point of the map with its position on the screen and its hover label (catalogNumber<br>group).
POINTS_JS = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const area = gd.querySelector('.nsewdrag').getBoundingClientRect();
  return gd._fullData.flatMap(t => Array.from(t.x).map((x, i) => ({
    px: area.left + xa.l2p(x), py: area.top + ya.l2p(t.y[i]), label: String(t.text[i]).split('<br>')[0]})));
}"""


def lasso(page, polygon):
    page.locator(".modebar-btn[data-title='Lasso Select']").click()  # the map opens in zoom mode
    page.mouse.move(*polygon[0])
    page.mouse.down()
    for x, y in [*polygon[1:], polygon[0]]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def test_lasso_on_the_map_shows_exactly_the_specimens_inside(app_server, chromium, ui_db, tmp_path):
    with Store.open(resolve_snapshot(ui_db), read_only=True) as store:  # the index with the most points
        embedder, trait = max(store.index_keys(), key=lambda key: (len(store.population(*key)), key))
    page = chromium.new_page(viewport={"width": 1400, "height": 1400})
    page.set_default_timeout(30_000)
    page.goto(f"{app_server}/?page=map")
    page.get_by_role("heading", name="Map", exact=True).wait_for()
    page.locator("[data-testid='stSelectbox']").filter(has_text="Trait").click()
    page.get_by_role("option", name=trait_label(trait), exact=True).click()
    page.get_by_text("pca", exact=True).click()
    page.get_by_role("button", name="Build the map").click()
    page.locator(".js-plotly-plot .nsewdrag").wait_for()
    page.wait_for_function("() => document.querySelector('.js-plotly-plot')._fullData.length > 0")
    expect(page.get_by_text("the map's neighbourhoods are not meaningful")).to_be_visible()

    points = page.evaluate(POINTS_JS)
    assert len(points) >= 4

    xs = sorted({round(p["px"], 1) for p in points})
    split = (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2  # between two columns of points: none on the edge
    top, bottom = min(p["py"] for p in points) - 15, max(p["py"] for p in points) + 15
    left = min(p["px"] for p in points) - 15
    inside = {p["label"] for p in points if p["px"] < split}
    assert 0 < len(inside) < len({p["label"] for p in points})
    lasso(page, [(left, top), (split, top), (split, bottom), (left, bottom)])

    page.get_by_text(f"Selection: {len(inside)} specimens").wait_for()
    cards = page.locator("[class*='st-key-map-sel-']:not([class*='open'])")
    expect(cards).to_have_count(len(inside))
    shown = {cards.nth(i).locator("[data-testid='stCaptionContainer']").inner_text().strip() for i in range(len(inside))}
    assert shown == inside
    page.wait_for_function("n => [...document.querySelectorAll(\"[class*='st-key-map-sel-'] img\")]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length === n", arg=len(inside))
    expect(page.get_by_role("button", name="Selection: Darwin Core Archive (MeasurementOrFact)")).to_be_visible()
    with page.expect_download() as download:  # the export holds the selection, not the collection
        page.get_by_role("button", name="Selection: measurements (CSV)").click()
    exported = set(pd.read_csv(download.value.path())["catalogNumber"])
    assert exported and exported <= inside
    page.screenshot(path=str(tmp_path / "map.png"), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "map.png", ARTIFACTS / "ui_map.png")

    # A point clicked (here one outside the first selection, back in zoom mode) shows its crop and
    # catalogNumber beside the map, and opens its specimen page.
    alone = [p for p in points if p["px"] > split  # no other point under the cursor
             and all(q is p or abs(q["px"] - p["px"]) + abs(q["py"] - p["py"]) > 12 for q in points)]
    label = alone[0]["label"]
    page.locator(".js-plotly-plot").scroll_into_view_if_needed()  # the download button scrolled the page
    page.locator(".modebar-btn[data-title='Zoom']").click()
    one = next(p for p in page.evaluate(POINTS_JS) if p["label"] == label)
    page.mouse.move(one["px"], one["py"])  # plotly reports a click on the point its hover found
    page.locator(".hoverlayer .hovertext").first.wait_for()
    page.mouse.click(one["px"], one["py"])
    panel = page.locator(".st-key-map-point")
    expect(panel).to_contain_text(one["label"])
    expect(panel.locator("img")).to_have_count(1)
    panel.get_by_role("button", name="Open specimen").click()
    page.get_by_role("heading", name="Specimen", exact=True).wait_for()
    expect(page.get_by_role("combobox", name="Specimen", exact=True)).to_have_value(re.compile(re.escape(one["label"])))
