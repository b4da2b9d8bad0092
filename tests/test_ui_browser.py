"""The app in a real browser: `sst-search ui` serves it, headless Chromium runs a trait search."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

expect = pytest.importorskip("playwright.sync_api").expect

from sst_search import export
from sst_search.query import SearchEngine
from tests.ui_index import build_ui_index

pytestmark = pytest.mark.browser
expect.set_options(timeout=30_000)  # a loaded CI machine renders slowly

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the app server was not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_ui_index(tmp_path_factory.getbasetemp())


@pytest.fixture
def server(db, tmp_path):
    """``sst-search ui`` on a free port; the whole process group is stopped afterwards, pass or fail."""
    port = _free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sst_search.cli", "ui", "--db", str(db), "--port", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_healthy(port, proc, log)
        server_procs = psutil.Process(proc.pid).children(recursive=True)
        yield f"http://127.0.0.1:{port}"
        # SIGTERM to `sst-search ui` alone (as a service manager sends it) stops the Streamlit server too.
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(server_procs, timeout=15)
        assert server_procs and not alive, f"still running after SIGTERM to `sst-search ui`: {alive}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:  # already gone: the server stopped with its parent
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def chromium():
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: install Chromium (apt-get install chromium) to run the browser tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_trait_search_renders_ranked_results(server, chromium, db, tmp_path):
    engine = SearchEngine.open(db)
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
    page.goto(server)
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
    page.goto(f"{server}/?page=plots")
    page.get_by_text(f"{trait_first}: area_mm2 by group").wait_for()
    charts = page.locator("[data-testid='stVegaLiteChart']")
    expect(charts).to_have_count(2)
    page.wait_for_function("() => [...document.querySelectorAll(\"[data-testid='stVegaLiteChart'] canvas, "
                           "[data-testid='stVegaLiteChart'] svg\")].filter(c => c.clientWidth > 100).length >= 2")
    page.screenshot(path=str(tmp_path / "plots.png"), full_page=True)
    shutil.copy(tmp_path / "plots.png", ARTIFACTS / "ui_plots.png")
