"""The Map page in a real browser: the map is built from the page and drawn by its WebGL scatter;
a lasso dragged over part of it collects exactly the specimens inside, the gallery shows them and
the export holds them; a box collects as many as lie inside it; the points are drawn again after
the page showed another view; a point hovered is named and, when clicked, shown beside the map
and opens its specimen page. Where each point lies on the screen is
worked out here from the stored map and the view the scatter reports, not asked of the scatter."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

expect = pytest.importorskip("playwright.sync_api").expect

from sst_search.map_view import map_table
from sst_search.pattern_map import load_map
from sst_search.store import Store
from sst_search.store.snapshots import resolve_snapshot
from tests.app_server import ARTIFACTS
from ui.render import trait_label

pytestmark = pytest.mark.browser
expect.set_options(timeout=30_000)

SCATTER = "iframe[title$='map_scatter']"


def screen_points(page, ui_db, embedder, trait) -> list[dict]:
    """Every point of the published map at its place on the page, from the stored coordinates and
    the scatter's current view (``data-view``: the data range its canvas spans)."""
    frame = page.locator(SCATTER).element_handle().content_frame()
    canvas = frame.locator("#overlay")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x0, x1, y0, y1 = json.loads(frame.locator("#gl").get_attribute("data-view"))
    with Store.open(resolve_snapshot(ui_db), read_only=True) as store:
        table = map_table(store, load_map(store, embedder, trait))
    return [{"px": box["x"] + (x - x0) / (x1 - x0) * box["width"], "py": box["y"] + (y1 - y) / (y1 - y0) * box["height"],
             "label": str(number)} for x, y, number in zip(table["x"], table["y"], table["catalogNumber"])]


def drag(page, tool: str, path: list[tuple[float, float]]) -> None:
    """Pick ``tool`` above the map and drag the mouse along ``path`` on its canvas."""
    page.frame_locator(SCATTER).get_by_role("button", name=tool, exact=True).click()
    page.mouse.move(*path[0])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def test_lasso_box_hover_and_click_on_the_map(app_server, chromium, ui_db, tmp_path):
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
    scatter = page.frame_locator(SCATTER)
    expect(page.get_by_text("the map's neighbourhoods are not meaningful")).to_be_visible()

    scatter.locator("body[data-drawn]").wait_for()
    points = screen_points(page, ui_db, embedder, trait)
    assert len(points) >= 4
    expect(scatter.locator("body")).to_have_attribute("data-drawn", str(len(points)))  # every point drawn

    xs = sorted({round(p["px"], 1) for p in points})
    split = (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2  # between two columns of points: none on the edge
    top, bottom = min(p["py"] for p in points) - 15, max(p["py"] for p in points) + 15
    left, right = min(p["px"] for p in points) - 15, max(p["px"] for p in points) + 15
    inside = {p["label"] for p in points if p["px"] < split}
    assert 0 < len(inside) < len({p["label"] for p in points})
    drag(page, "Lasso", [(left, top), (split, top), (split, bottom), (left, bottom), (left, top)])

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

    # A box over the upper part of the map collects as many specimens as lie inside it.
    points = screen_points(page, ui_db, embedder, trait)  # the download button scrolled the page
    ys = sorted({round(p["py"], 1) for p in points})
    middle = (ys[len(ys) // 2 - 1] + ys[len(ys) // 2]) / 2
    top, left, right = min(ys) - 15, min(p["px"] for p in points) - 15, max(p["px"] for p in points) + 15
    boxed = [p["label"] for p in points if p["py"] < middle]  # in the map's order, as the gallery shows them
    assert 0 < len(boxed) < len(points) and set(boxed) != inside
    drag(page, "Box", [(left, top), (right, middle)])
    expect(cards.locator("[data-testid='stCaptionContainer']")).to_have_text(boxed)
    page.get_by_text(f"Selection: {len(boxed)} specimens").wait_for()

    # Away to the atlas and back: the map's new frame, in the same session, gets its points again.
    view = page.locator("[data-testid='stRadio']").filter(has_text="Convergence")
    view.get_by_text("Atlas", exact=True).click()
    expect(page.locator(SCATTER)).to_have_count(0)
    view.get_by_text("Map", exact=True).click()
    expect(scatter.locator("body")).to_have_attribute("data-drawn", str(len(points)))

    # A point on its own is named when hovered; clicked, it shows its crop and catalogNumber beside
    # the map, and opens its specimen page.
    points = screen_points(page, ui_db, embedder, trait)
    alone = [p for p in points if all(q is p or abs(q["px"] - p["px"]) + abs(q["py"] - p["py"]) > 24 for q in points)]
    one = alone[0]
    page.mouse.move(one["px"], one["py"])
    expect(scatter.locator("#tip")).to_contain_text(one["label"])
    page.mouse.click(one["px"], one["py"])
    panel = page.locator(".st-key-map-point")
    expect(panel).to_contain_text(one["label"])
    expect(panel.locator("img")).to_have_count(1)
    expect(page.get_by_text(re.compile(r"Selection: \d+ specimens"))).to_have_count(0)  # a click replaces the box
    panel.get_by_role("button", name="Open specimen").click()
    page.get_by_role("heading", name="Specimen", exact=True).wait_for()
    expect(page.get_by_role("combobox", name="Specimen", exact=True)).to_have_value(re.compile(re.escape(one["label"])))
