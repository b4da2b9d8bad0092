"""``sst-search ui``: the Streamlit search app on an index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer

from ..store.snapshots import resolve_snapshot

#: Uploads larger than this (MB) are refused by the server before the app sees them.
MAX_UPLOAD_MB = 20


def app_path() -> Path:
    """The installed app's entry script (found through the ``ui`` package, wherever it lives)."""
    import ui

    return Path(ui.__file__).resolve().parent / "app.py"


def streamlit_command(db: Path, port: int, address: str = "127.0.0.1") -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path()),
        "--server.port", str(port), "--server.address", address, "--server.headless", "true",
        "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        "--", "--db", str(db),
    ]


def ui(
    db: Path = typer.Option(..., "--db", help="Index (DuckDB catalog) to search; opened read-only."),
    port: int = typer.Option(8501, "--port", min=1, max=65535),
) -> None:
    """Start the search app on 127.0.0.1:PORT (Ctrl-C stops it)."""
    try:
        resolve_snapshot(db)
    except (FileNotFoundError, RuntimeError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--db") from exc
    typer.echo(f"sst-search app: http://127.0.0.1:{port}  (index {db})", err=True)
    try:
        code = subprocess.run(streamlit_command(db.resolve(), port), check=False).returncode
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)
