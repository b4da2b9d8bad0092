"""``sst-search relocate``: re-point a collection that was moved or mounted elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from ..store import Store
from ..store.snapshots import publish_snapshot
from .options import db_option

console = Console(stderr=True)


def relocate(
    old_prefix: str = typer.Argument(..., help="Folder the stored image paths start with now."),
    new_prefix: str = typer.Argument(..., help="Folder they should start with instead."),
    db: Path = db_option("its stored paths are rewritten"),
) -> None:
    """Rewrite the prefix of the stored image paths in one transaction and publish the result.

    Ids, masks and vectors stay as they are (ids come from the items' keys, not from where
    the files live). Exit status 2 when nothing matches the old prefix.
    """
    old = os.path.normpath(os.path.abspath(old_prefix))
    new = os.path.normpath(os.path.abspath(new_prefix))
    try:
        with Store.open(db) as store:
            moved = store.relocate(old, new)
            prefixes = store.path_prefixes() if not moved else []
    except (ValueError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if not moved:
        console.print(f"[red]error:[/red] no stored path starts with {old}; stored folders include: {prefixes}")
        raise typer.Exit(2)
    if not Path(new).exists():
        console.print(f"[yellow]warning:[/yellow] {new} does not exist (yet)")
    publish_snapshot(db)
    console.print(f"re-pointed {moved} specimens from {old} to {new}")
