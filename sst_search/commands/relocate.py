"""``sst-search relocate``: re-point a collection that was moved or mounted elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape

from .. import Store
from ..store.snapshots import publish_snapshot, resolve_snapshot
from .errors import console, exit_codes
from .options import db_option


def relocate(
    old_prefix: str = typer.Argument(..., help="Folder the stored image paths start with now."),
    new_prefix: str = typer.Argument(..., help="Folder they should start with instead."),
    db: Path = db_option("its stored paths are rewritten"),
) -> None:
    """Rewrite the prefix of the stored image paths in one transaction and publish the result.

    Ids, masks and vectors stay as they are (ids come from the items' keys, not from where
    the files live). Running it again after a kill publishes what the first run committed.
    Exit status 2 when nothing matches either prefix.
    """
    old = os.path.normpath(os.path.abspath(old_prefix))
    new = os.path.normpath(os.path.abspath(new_prefix))
    with exit_codes():
        with Store.open(db) as store:
            moved = store.relocate(old, new)
            already = store.count_under(new) if not moved else 0
            prefixes = store.path_prefixes() if not moved else []
        if not moved and already:  # committed by a run killed before it published?
            with Store.open(resolve_snapshot(db), read_only=True) as published:
                already = already if published.count_under(old) else 0
        if not moved and not already:
            console.print(f"[red]error:[/red] no stored path starts with {escape(old)}; stored folders include: "
                          f"{escape(', '.join(prefixes))}")
            raise typer.Exit(2)
        if not Path(new).exists():
            console.print(f"[yellow]warning:[/yellow] {escape(new)} does not exist (yet)")
        # Published even when an earlier run was killed between its commit and its publish:
        # running the same relocation again brings readers up to date.
        publish_snapshot(db)
    if moved:
        console.print(f"re-pointed {moved} specimens from {escape(old)} to {escape(new)}")
    else:
        console.print(f"{already} specimens already point into {escape(new)} (an earlier run was cut short); "
                      "published them")
