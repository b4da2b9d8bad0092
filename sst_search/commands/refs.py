"""``sst-search refs import|suggest``: bring labels in from other tools, and pick what to label."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..annotations import FORMATS, AnnotationError, import_annotations
from ..references import ReferenceError

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
    except (AnnotationError, ReferenceError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    for s in supports:
        names = ", ".join(s.traits[t].name for t in s.trait_ids)
        console.print(f"added {s.image_path} ({names})")
    console.print(f"{len(supports)} supports imported into {refs / group}")
