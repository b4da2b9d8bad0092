"""Fixtures of the browser tests: one `sst-search ui` server on the app index and one headless
Chromium, shared by every browser test (each test opens its own page, so its own Streamlit
session). Starting either costs seconds, so the first browser test starts them; the browser
tests run one after another on one worker (conftest's ``pytest_collection_modifyitems``) and
the last of them stops both, instead of leaving them idle, using CPU, until the end of the run.
Stopping the server still checks that a SIGTERM to `sst-search ui` alone stops the Streamlit
server too."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.fixtures import build_once_per_run, needed_next

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
    # It imports the indexer (torch, SAM 2): here, not when conftest imports this module.
    from tests.ui_index import build_ui_index

    return build_once_per_run(tmp_path_factory, worker_id, "ui-index", build_ui_index)


class _InBackground:
    """A call run in a thread, so that the worker goes on with its next tests meanwhile (the
    app server takes a second or two to shut down); :meth:`wait` re-raises what it raised."""

    def __init__(self, call):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call) -> None:
        try:
            call()
        except BaseException as exc:  # re-raised by wait(), in the test's thread
            self._error = exc

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


class _AppServer:
    """``sst-search ui`` on ``db`` at a free port, started on first use; :meth:`stop` stops the
    whole process group, pass or fail."""

    def __init__(self, db: Path, log: Path):
        self.db, self.log = db, log
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.server_procs: list[psutil.Process] = []
        self._stopping: _InBackground | None = None

    def start(self) -> str:
        self.wait_stopped()
        if self.proc is not None:
            return self.url
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sst_search.cli", "ui", "--db", str(self.db), "--port", str(port)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            _wait_healthy(port, self.proc, self.log)
        except BaseException:
            self._kill_group(self.proc)
            self.proc = None
            raise
        self.server_procs = psutil.Process(self.proc.pid).children(recursive=True)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop_in_background(self) -> None:
        if self.proc is not None:
            self._stopping = _InBackground(self.stop)

    def wait_stopped(self) -> None:
        stopping, self._stopping = self._stopping, None
        if stopping is not None:
            stopping.wait()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            # SIGTERM to `sst-search ui` alone (as a service manager sends it) stops the Streamlit server too.
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            _, alive = psutil.wait_procs(self.server_procs, timeout=15)
            assert self.server_procs and not alive, f"still running after SIGTERM to `sst-search ui`: {alive}"
        finally:
            self._kill_group(proc)

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:  # already gone: the server stopped with its parent
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class _Chromium:
    """Headless Chromium through Playwright, launched on first use."""

    def __init__(self):
        self.playwright = self.browser = None

    def start(self):
        if self.browser is None:
            from playwright.sync_api import sync_playwright

            self.playwright = sync_playwright().start()
            try:
                self.browser = self.playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            except BaseException:
                self.stop()
                raise
        return self.browser

    def stop(self) -> None:
        browser, playwright, self.browser, self.playwright = self.browser, self.playwright, None, None
        try:
            if browser is not None:
                browser.close()
        finally:
            if playwright is not None:
                playwright.stop()


@pytest.fixture(scope="session")
def app_server_process(ui_db, tmp_path_factory):
    """The one app server of this worker's run; whatever the tests left running stops at its end."""
    server = _AppServer(ui_db, tmp_path_factory.mktemp("app-server") / "server.log")
    yield server
    try:
        server.wait_stopped()  # a failed stop fails here, at the end of the run
    finally:
        server.stop()


@pytest.fixture
def app_server(app_server_process):
    """The app server's URL; the last browser test in a row stops the server (in the
    background: the worker's next tests need no server)."""
    yield app_server_process.start()
    if not needed_next("app_server"):
        app_server_process.stop_in_background()


@pytest.fixture(scope="session")
def chromium_process():
    """The one Chromium of this worker's run; stopped at its end if still running."""
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: install Chromium (apt-get install chromium) to run the browser tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    browser = _Chromium()
    yield browser
    browser.stop()


@pytest.fixture
def chromium(chromium_process):
    """The browser; the last browser test in a row closes it."""
    yield chromium_process.start()
    if not needed_next("chromium"):
        chromium_process.stop()
