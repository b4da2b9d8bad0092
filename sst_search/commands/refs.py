"""``sst-search refs import|suggest``: bring labels in from other tools, and pick what to label."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .. import ReferencesError
from ..annotations import FORMATS, AnnotationError, import_annotations
from .options import db_option

console = Console(stderr=True)
refs_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Manage references (supports).")


@refs_app.command("import")
def refs_import(
    file: Path = typer.Argument(..., help="COCO or Label Studio JSON, CVAT XML, or a label image (PNG/TIFF)."),
    refs: Path = typer.Option(..., "--refs", help="References folder (REFS/<group>/...)."),
    group: str = typer.Option(..., "--group", help="Group (species) the supports belong to."),
    images: Path | None = typer.Option(None, "--images", help="Folder of the annotated images (default: the file's folder)."),
    label_names: Path | None = typer.Option(None, "--label-names", help="traits.yaml naming a label image's values "
                                            "(default: the group's traits.yaml)."),
    fmt: str | None = typer.Option(None, "--format", help=f"One of {', '.join(FORMATS)} (default: from the file)."),
) -> None:
    """Write each annotated image of FILE as a support of GROUP: image, label mask, traits.yaml.

    Category names become trait names (existing ones keep their ids). Exit status 2 when the
    file is unusable; nothing is written then.
    """
    try:
        supports = import_annotations(file, refs, group, images, label_names, fmt)
    except (AnnotationError, ReferencesError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    for s in supports:
        names = ", ".join(s.traits[t].name for t in s.trait_ids)
        console.print(f"added {escape(str(s.image_path))} ({escape(str(names))})")
    console.print(f"{len(supports)} supports imported into {escape(str(refs / group))}")


@refs_app.command("suggest")
def refs_suggest(
    group: str = typer.Option(..., "--group", help="Group (species) to suggest supports for."),
    n: int = typer.Option(1, "--n", min=1, help="How many supports: the medoid, then a diverse (k-center) set."),
    db: Path | None = db_option("its whole-specimen vectors are used; indexed specimens only", required=False),
    collection: Path | None = typer.Option(None, "--collection", help="Manifest CSV or folder: embed the group's "
                                           "images (for a group without references, hence without vectors)."),
    embedder: str = typer.Option("color-pattern", "--embedder", help="With --collection: embedder to use."),
    weights: str | None = typer.Option(None, "--weights", help="With --collection: embedder weights ('random' for tests)."),
) -> None:
    """Print the specimens of GROUP that are most worth labeling as supports, best first."""
    from .. import Store
    from ..store.snapshots import resolve_snapshot
    from ..suggest import suggest_from_images, suggest_from_store

    if (db is None) == (collection is None):
        raise typer.BadParameter("give exactly one of --db or --collection")
    if db is not None:
        with Store.open(resolve_snapshot(db), read_only=True) as store:
            suggestions = suggest_from_store(store, group, n)
            paths = {s.key: store.get_specimen(s.key)["path"] for s in suggestions}
        failed: list[tuple[str, str]] = []
    else:
        from indexer.collection import CollectionError, load_collection

        from .. import EmbedderError, embedder_from_config
        from ..config import EmbeddingConfig

        try:
            items = [i for i in load_collection(collection) if i.group == group]
            model = embedder_from_config(EmbeddingConfig(embedder=embedder, weights=weights))
        except (CollectionError, EmbedderError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from exc
        paths = {i.key: str(i.path) for i in items}
        suggestions, failed = suggest_from_images([(i.key, i.path) for i in items], model, n)
    if not suggestions:
        console.print(f"[red]error:[/red] no usable specimens of group {escape(repr(group))}")
        raise typer.Exit(1)
    typer.echo("rank\tspecimen\tpath\twhy\tcentrality\tcoverage")  # tab-separated, for scripts
    for s in suggestions:
        typer.echo(f"{s.rank}\t{s.key}\t{paths[s.key]}\t{s.reason}\t{s.centrality:.3f}\t{s.coverage:.3f}")
    for key, reason in failed:
        typer.echo(f"skipped {key}: {reason}", err=True)
