"""``sst-search measure``: (re-)measure every trait of an existing index, without re-segmenting."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .errors import exit_codes
from .options import QUIET, db_option

console = Console(stderr=True)


def measure(
    db: Path = db_option("its measurements are rewritten"),
    pixels_per_mm: float | None = typer.Option(None, "--pixels-per-mm",
                                               help="Scale of the whole collection; an item's own column wins."),
    scale_column: str = typer.Option("pixelsPerMM", "--scale-column", help="Metadata column with an item's pixels per mm."),
    quiet: bool = QUIET,
) -> None:
    """Measure shape and colour of every stored trait mask again (areas, axes, colours; mm when a
    scale is known) and publish the result. Indexing measures new masks by itself; this brings
    older stores up to date or applies a new scale.

    Exit status: 0 measured, 1 some images could not be read (their shapes are measured, colours
    are not), 2 no such store or a bad scale.
    """
    from tqdm import tqdm

    from ..remeasure import remeasure
    from ..store import Store
    from ..store.snapshots import publish_snapshot

    if not db.is_file():
        console.print(f"[red]error:[/red] {escape(str(db))}: no such store")
        raise typer.Exit(2)
    with exit_codes(), Store.open(db) as store:  # a store an indexing run holds: "busy", exit 3
        with tqdm(total=len(store.indexed_specimens()), desc="measure", unit="img", disable=quiet) as bar:
            measured, problems = remeasure(store, scale_column, pixels_per_mm, progress=bar.update)
    with exit_codes():
        publish_snapshot(db)
    fallback = f"{pixels_per_mm} px/mm" if pixels_per_mm else "px"
    console.print(f"measured {measured} specimens (scale: each item's {escape(repr(scale_column))}, else {escape(str(fallback))})")
    for path, problem in problems[:10]:
        console.print(f"[yellow]{escape(str(path))}[/yellow]: {escape(str(problem))}")
    if problems:
        raise typer.Exit(1)
