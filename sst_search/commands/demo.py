"""``sst-search demo``: the whole product on a generated collection, in one command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .. import EmbedderError, Store
from ..builder import embedder_fingerprint
from ..config import (
    EmbeddingConfig,
    IndexerConfig,
    SegmentationConfig,
    apply_overrides,
    load_config,
)
from ..evaluation import evaluate_folders
from ..evaluation.eval_seg import load_trait_names
from ..images import save_mask
from ..synthetic import generate_collection
from ..weights import WeightsError, resolve_sam2_weights
from .index import print_summary
from .options import config_default, model_option, warn_random_weights

console = Console(stderr=True)

#: With random weights masks are meaningless anyway, so the demo stays quick.
RANDOM_IMAGE_SIZE = 256


def _choose_weights(model: str, weights: str | None) -> str:
    if weights is not None:
        return weights
    try:
        return str(resolve_sam2_weights(model).path)
    except WeightsError as exc:
        console.print(f"[yellow]{escape(str(exc))}[/yellow]")
        return "random"


def _choose_embedder(embedder: str | None, embedder_weights: str | None) -> str:
    if embedder is not None:
        return embedder
    default = EmbeddingConfig(weights=embedder_weights)
    try:
        embedder_fingerprint(default)  # finds and verifies the weights, builds no model
        return default.embedder
    except EmbedderError:
        # One line: the library's message names --embedder-weights, which demo does not take.
        console.print("[yellow]BioCLIP weights are not available here (offline, or not cached): using the weight-free "
                      "color-pattern embedder; pass --embedder color-pattern to skip this check.[/yellow]", soft_wrap=True)
        return "color-pattern"


def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Folder for the collection, index and predictions."),
    species: int = typer.Option(3, "--species", min=1, max=10),
    per_species: int = typer.Option(6, "--per-species", min=1),
    model: str | None = model_option(),
    weights: str | None = typer.Option(None, "--weights", help="Checkpoint path or 'random' (default: real weights if they can be had)."),
    image_size: int | None = typer.Option(None, "--image-size", help=f"SAM 2 input size (default {config_default(SegmentationConfig, 'image_size')}; "
                                                                                f"{RANDOM_IMAGE_SIZE} with random weights)."),
    embedder: str | None = typer.Option(None, "--embedder", help="Default: bioclip if its weights can be had, else color-pattern."),
    engine: str | None = typer.Option(None, "--engine", help="local | ray.", show_default=config_default(IndexerConfig, "engine")),
    maps: str = typer.Option("umap", "--maps", help="Pattern map of every trait: umap, pca or none."),
    ui: bool = typer.Option(False, "--ui", help="Start the search app on the demo index afterwards."),
    port: int = typer.Option(8501, "--port"),
) -> None:
    """Generate a synthetic collection, index it, score the masks against the ground truth,
    run a sample trait search and map every trait's pattern space."""
    from .. import index
    from ..pattern_map import METHODS

    if maps != "none" and maps not in METHODS:
        raise typer.BadParameter(f"one of {', '.join(METHODS)} or none", param_hint="--maps")
    collection = generate_collection(out / "collection", species=species, per_species=per_species, seed=0)
    console.print(f"collection: {escape(str(collection.manifest))} ({species} species x {per_species} specimens)")
    config = load_config(model=model, engine=engine)
    chosen_weights = _choose_weights(config.segmentation.model, weights)
    random_weights = chosen_weights == "random"
    if random_weights:
        warn_random_weights(console, "masks, scores and search results are not meaningful")
    config = apply_overrides(config, weights=chosen_weights, embedder=_choose_embedder(embedder, None),
                             image_size=image_size or (RANDOM_IMAGE_SIZE if random_weights else None))
    db = out / "index.duckdb"
    summary = index(collection.manifest, collection.references, db, config, quiet=False)
    print_summary(summary)

    predictions = out / "predictions"
    with Store.open(db, read_only=True) as store:
        for row in store.specimens():
            label_map = store.label_map(row["specimen_id"])
            if label_map is not None:
                save_mask(predictions / row["group_name"] / f"{Path(row['path']).stem}.png", label_map)
    report = evaluate_folders(predictions, collection.ground_truth, trait_names=load_trait_names(collection.references))
    console.print(report)
    _sample_search(db, collection.groups[0])
    if maps != "none":
        _map_every_trait(db, maps)
    console.print(f"\nindex: {escape(str(db))}\nbrowse it: sst-search ui --db {escape(str(db))}")
    if ui:
        subprocess.run([sys.executable, "-m", "sst_search.cli", "ui", "--db", str(db), "--port", str(port)], check=False)


def _sample_search(db: Path, group: str) -> None:
    try:
        from .. import SearchEngine
    except ImportError:
        return
    engine = SearchEngine.open(db)
    trait = next((t for t in engine.traits(group) if not t.startswith("__")), None)
    if trait is None:
        return
    specimens = engine.store.specimens(groups=[group])  # in path order: the group's first image
    if not specimens:
        return
    query = specimens[0]
    results = engine.search(trait, k=5, specimen_id=query["specimen_id"])
    name = query["metadata"].get("catalogNumber") or Path(query["path"]).name
    console.print(f"\nspecimens whose [bold]{escape(str(trait))}[/bold] looks most like {escape(str(name))}'s:")
    for r in results:
        label = r.metadata.get("catalogNumber") or Path(r.path).name
        console.print(f"  {r.rank}. {escape(str(label))} ({escape(str(Path(r.path).name))}, {escape(str(r.group))}) score {r.score:.3f}")


def _map_every_trait(db: Path, method: str) -> None:
    """Fit and publish the pattern map of every indexed trait, so the app's map page opens on a
    stored map. The first UMAP fit on a machine also compiles umap-learn's numba kernels (seconds,
    once per installation), which later maps, in the app or the CLI, then load from disk."""
    from .. import MapError, build_map, publish_snapshot

    mapped = []
    with Store.open(db) as store:
        for embedder, trait in store.index_keys():
            try:
                build_map(store, embedder, trait, method)
            except MapError as exc:  # a trait found on fewer than three specimens has no map
                console.print(f"[yellow]{escape(trait)}: no map ({escape(str(exc))})[/yellow]")
                continue
            mapped.append(trait)
    publish_snapshot(db)
    console.print(f"\npattern maps ({method}): {escape(', '.join(mapped))}")
