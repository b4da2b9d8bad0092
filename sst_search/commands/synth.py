"""``sst-search synth``: write a synthetic butterfly collection to try the product on."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..synthetic import MAX_SPECIES, generate_collection, species_traits

console = Console()


def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write images/, ground_truth/, references/ and manifest.csv into."),
    species: int = typer.Option(3, "--species", min=1, max=MAX_SPECIES, help=f"Number of species (1..{MAX_SPECIES})."),
    per_species: int = typer.Option(6, "--per-species", min=1, help="Unlabeled specimens per species."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same files (byte for byte)."),
    drawers: str | None = typer.Option(
        None, "--drawers", help="Write drawer photos instead, one per count (e.g. 0,1,3,7,12 specimens; at most 12)."
    ),
) -> None:
    """Generate specimens with exact trait masks, one labeled reference per species and a
    Darwin Core manifest, so indexing and search can be tried without a real collection.
    With --drawers: trays of several specimens with exact instance masks, an instance
    reference (references/instances) and the species' trait reference."""
    if drawers is not None:
        _drawers(out_dir, drawers, seed)
        return
    coll = generate_collection(out_dir, species=species, per_species=per_species, seed=seed)
    table = Table(title=f"synthetic collection in {escape(str(coll.root))}")
    table.add_column("group")
    table.add_column("specimens", justify="right")
    table.add_column("traits")
    for group in coll.groups:
        traits = species_traits(group)
        table.add_row(group, str(per_species), ", ".join(t.name for t in traits.values()))
    console.print(table)
    console.print(f"manifest: {escape(str(coll.manifest))}\nreferences: {escape(str(coll.references))}\nground truth: {escape(str(coll.ground_truth))}")


def _drawers(out_dir: Path, counts_text: str, seed: int) -> None:
    from ..synthetic import MAX_DRAWER_SPECIMENS, generate_drawers

    try:
        counts = [int(c) for c in counts_text.split(",") if c.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated counts, got {counts_text!r}", param_hint="--drawers") from exc
    if not counts or any(not 0 <= c <= MAX_DRAWER_SPECIMENS for c in counts):
        raise typer.BadParameter(f"counts must be in 0..{MAX_DRAWER_SPECIMENS}", param_hint="--drawers")
    out = generate_drawers(out_dir, counts=counts, seed=seed)
    console.print(
        f"{len(counts)} drawers ({sum(counts)} specimens) in {out.root}\nmanifest: {out.manifest}\n"
        f"trait references: {out.references}\ninstance references: {out.instance_references}\n"
        f"ground truth: {out.ground_truth}/instances, {out.ground_truth}/traits"
    )
