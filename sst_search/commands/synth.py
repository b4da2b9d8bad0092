"""``sst-search synth``: write a synthetic butterfly collection to try the product on."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..synthetic import MAX_SPECIES, generate_collection, species_traits

console = Console()


def synth(
    out_dir: Path = typer.Argument(..., help="Folder to write images/, ground_truth/, references/ and manifest.csv into."),
    species: int = typer.Option(3, "--species", min=1, max=MAX_SPECIES, help=f"Number of species (1..{MAX_SPECIES})."),
    per_species: int = typer.Option(6, "--per-species", min=1, help="Unlabeled specimens per species."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same files (byte for byte)."),
) -> None:
    """Generate specimens with exact trait masks, one labeled reference per species and a
    Darwin Core manifest, so indexing and search can be tried without a real collection."""
    coll = generate_collection(out_dir, species=species, per_species=per_species, seed=seed)
    table = Table(title=f"synthetic collection in {coll.root}")
    table.add_column("group")
    table.add_column("specimens", justify="right")
    table.add_column("traits")
    for group in coll.groups:
        traits = species_traits(group)
        table.add_row(group, str(per_species), ", ".join(t.name for t in traits.values()))
    console.print(table)
    console.print(f"manifest: {coll.manifest}\nreferences: {coll.references}\nground truth: {coll.ground_truth}")
