"""``sst-search ui``: the Streamlit search app on an index."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import typer

from ..store.snapshots import resolve_snapshot
from .options import db_option

#: Uploads larger than this (MB) are refused by the server before the app sees them.
MAX_UPLOAD_MB = 20


def app_path() -> Path:
    """The installed app's entry script (found through the ``ui`` package, wherever it lives)."""
    import ui

    return Path(ui.__file__).resolve().parent / "app.py"


def streamlit_command(db: Path, port: int, address: str = "127.0.0.1", weights: str | None = None) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path()),
        "--server.port", str(port), "--server.address", address, "--server.headless", "true",
        "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        # Not a development server: no polling of source files, and no full garbage collection after
        # every rerun (a second or more on a loaded machine with torch's half a million objects alive,
        # paid by every click; Python still collects on its own).
        "--server.fileWatcherType", "none", "--runner.postScriptGC", "false",
        "--", "--db", str(db), *(["--weights", weights] if weights else []),
    ]


def ui(
    db: Path = db_option("searched; opened read-only"),
    port: int = typer.Option(8501, "--port", min=1, max=65535),
    weights: Path | None = typer.Option(
        None, "--weights", help="SAM 2 checkpoint for labeling and uploads, when the one the index recorded is not "
                                "found here (offline, another machine). Drawing by hand needs none."),
) -> None:
    """Start the search app on 127.0.0.1:PORT (Ctrl-C or SIGTERM stops it)."""
    try:
        resolve_snapshot(db)
    except (FileNotFoundError, RuntimeError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--db") from exc
    if weights is not None and not weights.is_file():
        raise typer.BadParameter(f"{weights}: no such checkpoint file", param_hint="--weights")
    typer.echo(f"sst-search app: http://127.0.0.1:{port}  (index {db})", err=True)
    command = streamlit_command(db.resolve(), port, weights=str(weights.resolve()) if weights else None)
    raise typer.Exit(run_until_stopped(command))


def run_until_stopped(command: list[str], grace_s: float = 10.0) -> int:
    """Run the server as a child that stops with its parent: SIGTERM or SIGHUP to this process
    (a service manager, ``kill``, a closed terminal) and Ctrl-C are passed on to the server,
    which is killed if it has not exited after ``grace_s``. Returns the server's exit code (0
    when it was stopped)."""
    proc = subprocess.Popen(command)
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # the terminal sent SIGINT to the server too
            stopping = True
            code = proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0 if stopping else code
