"""Session fixtures of the browser tests: one `sst-search ui` server on the app index and one
headless Chromium, shared by every browser test (each test opens its own page, so its own
Streamlit session). Starting either costs seconds; stopping the server still checks that a
SIGTERM to `sst-search ui` alone stops the Streamlit server too."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.fixtures import build_once_per_run

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
        time.sleep(0.1)  # the browser tests wait on this: a coarse poll costs them up to its interval
    pytest.fail(f"the app server was not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def ui_db(tmp_path_factory, worker_id) -> Path:
    """The app index (:func:`tests.ui_index.build_ui_index`): segmenting it with SAM 2 costs
    seconds, so it is built once per run and shared by the workers."""
    from tests.ui_index import build_ui_index  # imports the indexer (torch, SAM 2): not at conftest import

    return build_once_per_run(tmp_path_factory, worker_id, "ui-index", build_ui_index)


@pytest.fixture(scope="session")
def app_server(ui_db, tmp_path_factory):
    """``sst-search ui`` on a free port; the whole process group is stopped afterwards, pass or fail."""
    db = ui_db
    port = _free_port()
    log = tmp_path_factory.mktemp("app-server") / "server.log"
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


@pytest.fixture(scope="session")
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
