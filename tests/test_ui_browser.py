"""The app in a real browser: `sst-search ui` serves it, headless Chromium runs a trait search."""

from __future__ import annotations

import shutil

import pytest

expect = pytest.importorskip("playwright.sync_api").expect

from sst_search import export
from sst_search.query import SearchEngine
from tests.app_server import ARTIFACTS

pytestmark = pytest.mark.browser
expect.set_options(timeout=30_000)  # a loaded CI machine renders slowly


def test_trait_search_renders_ranked_results(app_server, chromium, ui_db, tmp_path):
    engine = SearchEngine.open(ui_db)
    try:
        group = engine.groups()[0]
        trait = next(t for t in engine.traits(group) if not t.startswith("__"))
        query = min(engine.store.filter_specimens(group=group), key=lambda s: engine.store.get_specimen(s)["path"])
        expected = engine.search(trait, 8, specimen_id=query)
        counts = export.measurements_table(engine.store)["trait"].value_counts()
        trait_first = min(counts.index, key=lambda t: (-counts[t], t))  # the plots page opens on the most found trait
    finally:
        engine.close()
    assert expected

    page = chromium.new_page(viewport={"width": 1400, "height": 1600})
    page.set_default_timeout(30_000)
    page.goto(app_server)
    page.get_by_text("Search by trait").wait_for()
    page.locator("[data-testid='stSelectbox']").filter(has_text="Trait").click()
    page.get_by_role("option", name=trait, exact=True).click()
    page.get_by_role("button", name="Search", exact=True).click()

    cards = page.locator("[class*='st-key-search-result-']")
    expect(cards).to_have_count(len(expected))
    for rank, result in enumerate(expected, start=1):
        card = page.locator(f".st-key-search-result-{rank}")
        expect(card).to_contain_text(f"#{rank} · score {result.score:.3f}")
        expect(card).to_contain_text(result.metadata["catalogNumber"])
    page.wait_for_function(  # every card's image (with the trait outline) actually loaded
        "n => { const imgs = [...document.querySelectorAll(\"[class*='st-key-search-result-'] img\")];"
        " return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=len(expected),
    )
    assert page.get_by_text("Random model weights").is_visible()

    shot = tmp_path / "search.png"
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "ui_search.png")
    assert shot.stat().st_size > 10_000

    # The same session plots a measurement by group: both charts draw, one point per specimen.
    page.goto(f"{app_server}/?page=plots")
    page.get_by_text(f"{trait_first}: area_mm2 by group").wait_for()
    charts = page.locator("[data-testid='stVegaLiteChart']")
    expect(charts).to_have_count(2)
    page.wait_for_function("() => [...document.querySelectorAll(\"[data-testid='stVegaLiteChart'] canvas, "
                           "[data-testid='stVegaLiteChart'] svg\")].filter(c => c.clientWidth > 100).length >= 2")
    page.screenshot(path=str(tmp_path / "plots.png"), full_page=True)
    shutil.copy(tmp_path / "plots.png", ARTIFACTS / "ui_plots.png")
