"""Label a specimen in a real browser: click on it, SAM 2 (random weights) proposes a mask, name the trait,
save the support, and load_references finds it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("playwright")

from playwright.sync_api import expect  # noqa: E402

from sst_search.references import load_references  # noqa: E402
from tests.app_server import ARTIFACTS  # noqa: E402

pytestmark = pytest.mark.browser


def test_click_propose_name_and_save_a_support(app_server, chromium, tmp_path):
    refs = tmp_path / "refs"
    page = chromium.new_page(viewport={"width": 1400, "height": 1400})
    page.set_default_timeout(60_000)
    page.goto(f"{app_server}/?page=references")
    page.get_by_role("heading", name="References").wait_for()
    expect(page.get_by_text("SAM 2 has random weights")).to_be_visible()
    group = page.locator("[data-testid='stSelectbox']").filter(has_text="Group").locator("input").input_value() or None

    refs_input = page.get_by_label("References folder")
    refs_input.fill(str(refs))
    refs_input.press("Enter")

    image = page.frame_locator("iframe[title*='streamlit_image_coordinates']").locator("img")
    image.wait_for()
    page.wait_for_timeout(500)  # let the component report its size before the click
    box = image.bounding_box()
    image.click(position={"x": box["width"] / 2, "y": box["height"] / 2})
    expect(page.get_by_text("Proposed mask:")).to_be_visible()

    name = page.get_by_label("New trait name")
    name.fill("forewing_band")
    name.press("Enter")
    page.get_by_role("button", name="Accept trait").click()
    expect(page.get_by_text("forewing_band")).to_be_visible()
    page.get_by_role("button", name="Save support").click()
    expect(page.get_by_text("Saved support")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui_references.png"), full_page=True)

    loaded = load_references(refs)
    (saved_group,) = loaded
    assert group is None or saved_group == group
    (support,) = loaded[saved_group]
    assert [support.traits[t].name for t in support.trait_ids] == ["forewing_band"]
    assert np.count_nonzero(support.mask) > 0
    shutil.rmtree(refs)
