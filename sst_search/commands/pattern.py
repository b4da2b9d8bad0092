"""``sst-search map`` and ``sst-search convergence``: a trait's whole pattern space, and which groups converge."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .errors import exit_codes
from .options import db_option

console = Console(stderr=True)
out_console = Console()

TRAIT = typer.Option(..., "--trait", help="The trait mapped (`__specimen__` for whole specimens).")
EMBEDDER = typer.Option(None, "--embedder", help="Whose vectors (default: the trait's only embedder, else the last run's).")


def _warn_if_random(store) -> None:
    from ..query import random_weights

    if random_weights(store.last_run_fingerprint()):
        console.print("[bold yellow]WARNING: the index was built with RANDOM weights - the map and its "
                      "neighbourhoods are not meaningful.[/bold yellow]")


def map_(
    db: Path = db_option("the map is stored in it and published"),
    trait: str = TRAIT,
    embedder: str | None = EMBEDDER,
    method: str = typer.Option("umap", "--method", help="umap (default) or pca (exact and fast)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Same seed, same map."),
    sample: int = typer.Option(50_000, "--sample", min=3, help="Vectors the map is fitted on; the rest are placed."),
    color_by: str = typer.Option("group", "--color-by", help="group, a metadata column or a measurement (area_mm2, ...)."),
    out: Path | None = typer.Option(None, "--out", help="Write the map: FILE.png, FILE.html, FILE.parquet or FILE.csv."),
    atlas: Path | None = typer.Option(None, "--atlas", help="Write the pattern atlas (a grid of real specimens) as PNG."),
    grid: int = typer.Option(8, "--grid", min=1, max=40, help="Atlas rows and columns."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Fit again even when a current map exists."),
) -> None:
    """Map every vector of one trait to 2-D (UMAP or PCA, fitted on a seeded sample), store the
    map in the index and publish it, and optionally write it as a picture, an interactive page
    or coordinates, and a pattern atlas.

    A stored map with the same method and seed is reused: new specimens are placed on it and it
    is refitted only when its vectors changed or too many were added. Exit status: 0 done,
    2 bad arguments or no such store/trait, 3 damaged or busy store.
    """
    from .. import Store, StoreError, atlas_cells, atlas_image, publish_snapshot
    from ..map_view import map_table, save_map
    from ..pattern_map import (
        METHODS,
        MapError,
        build_map,
        default_embedder,
        load_map,
        refresh_map,
    )
    from ..store.maps import map_state

    if method not in METHODS:
        raise typer.BadParameter(f"one of {', '.join(METHODS)}", param_hint="--method")
    if out is not None and out.suffix.lower() not in (".png", ".html", ".parquet", ".csv"):
        raise typer.BadParameter(f"{out}: write .png, .html, .parquet or .csv", param_hint="--out")
    with exit_codes(StoreError, MapError):
        if not db.is_file():
            raise FileNotFoundError(f"{db}: no such store")
        with Store.open(db) as store:
            embedder = embedder or default_embedder(store, trait)
            state = map_state(store, embedder, trait)
            if rebuild or state is None or (state.method, state.seed) != (method, seed):
                build_map(store, embedder, trait, method, seed, sample)
                what = f"fitted a {method} map"
            else:
                what = f"kept the stored {method} map ({refresh_map(store, embedder, trait)})"
            tmap = load_map(store, embedder, trait)
            console.print(f"{escape(embedder)}/{escape(trait)}: {what}, {len(tmap)} points "
                          f"({int(tmap.fitted.sum())} fitted)")
            _warn_if_random(store)
            title = f"{embedder} / {trait}: {method}, seed {seed}, {len(tmap)} points"
            if out is not None:
                save_map(map_table(store, tmap, color_by), out, color_by, title)
                console.print(f"map: {out}")
            if atlas is not None:
                import cv2

                atlas.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(atlas), atlas_image(store, trait, atlas_cells(tmap, grid, grid))[:, :, ::-1])
                console.print(f"atlas: {atlas}")
        publish_snapshot(db)


def convergence(
    db: Path = db_option("read: its published snapshot"),
    trait: str = TRAIT,
    embedder: str | None = EMBEDDER,
    by: str = typer.Option("group", "--by", help="group (the species), or any metadata column."),
    pairs: int = typer.Option(20, "--pairs", min=0, help="Closest cross-group specimen pairs listed."),
    out: Path | None = typer.Option(None, "--out", help="CSV of the group x group table; the pairs go to FILE.pairs.csv."),
) -> None:
    """How alike each group's trait is to every other group's: for each specimen of A the
    similarity of its best match in B, averaged (with its spread), pairs most alike first, and
    the closest cross-group specimen pairs.

    Exit status: 0 done, 2 no such store, trait or column, or fewer than two groups.
    """
    from .. import MapError, Store, StoreError, default_embedder
    from ..convergence import convergence as compute
    from ..store.snapshots import SnapshotError, resolve_snapshot

    with exit_codes(StoreError, MapError, SnapshotError):
        with Store.open(resolve_snapshot(db), read_only=True) as store:
            embedder = embedder or default_embedder(store, trait)
            result = compute(store, embedder, trait, by, top_pairs=pairs)
            numbers = store.metadata_labels("catalogNumber")
            _warn_if_random(store)
    ranked = result.ranked()
    out_console.print(f"{embedder}/{trait} by {by}: groups most alike first (mean best-match cosine, both directions)")
    for row in ranked.head(20).itertuples():
        out_console.print(f"{row.similarity:.3f}\t{escape(str(row.group_a))}\t{escape(str(row.group_b))}"
                          f"\t({row.a_to_b:.3f} / {row.b_to_a:.3f})")
    table = result.pairs.assign(catalog_a=result.pairs["specimen_a"].map(numbers),
                                catalog_b=result.pairs["specimen_b"].map(numbers))
    if pairs:
        out_console.print("closest cross-group specimen pairs:")
        for row in table.head(pairs).itertuples():
            out_console.print(f"{row.similarity:.3f}\t{row.specimen_a} ({escape(str(row.catalog_a))}, "
                              f"{escape(str(row.group_a))})\t{row.specimen_b} ({escape(str(row.catalog_b))}, "
                              f"{escape(str(row.group_b))})")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.table().to_csv(out, index=False)
        table.to_csv(out.with_suffix(".pairs.csv"), index=False)
        console.print(f"written: {out}, {out.with_suffix('.pairs.csv')}")
