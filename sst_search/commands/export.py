"""``sst-search export measurements|dwca|annotations|crops|instances``: results out of an index, for analysis elsewhere."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .options import db_option

console = Console(stderr=True)
export_app = typer.Typer(no_args_is_help=True, help="Measurements (CSV/Parquet), a Darwin Core Archive, or crops.")

_DB = db_option("its latest published snapshot is read")
_WHERE = typer.Option(None, "--where", help="Filter, e.g. 'forewing_band.area_mm2 > 40' or 'locality contains Ridge' (repeatable).")
_GROUP = typer.Option(None, "--group", help="Only this group (repeatable).")


@contextmanager
def _scope(db: Path, where: list[str] | None, group: list[str] | None):
    """``(store, specimen ids or None)`` of the published snapshot, filters applied; exit 2 on bad input."""
    from .. import QueryError, SearchEngine, parse_filter

    try:
        engine = SearchEngine.open(db)
    except (FileNotFoundError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    with engine:
        try:
            ids = engine.filter_ids([parse_filter(w) for w in where or []]) if where else None
        except QueryError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from exc
        yield engine.store, (None if ids is None else ids.tolist()), (list(group) if group else None)


def measurements(
    db: Path = _DB,
    out: Path = typer.Option(..., "--out", help="FILE.csv or FILE.parquet."),
    where: list[str] | None = _WHERE,
    group: list[str] | None = _GROUP,
) -> None:
    """One row per specimen x trait: ids, metadata (catalogNumber, scientificName, ...), mask
    area/box/quality/source and every measurement (mm when a scale is known; see `unit`)."""
    from .. import export

    if out.suffix.lower() not in (".csv", ".parquet"):
        raise typer.BadParameter(f"{out}: use a .csv or .parquet file name", param_hint="--out")
    with _scope(db, where, group) as (store, ids, groups):
        table = export.measurements_table(store, groups=groups, specimen_ids=ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(export.to_csv_bytes(table) if out.suffix.lower() == ".csv" else export.to_parquet_bytes(table))
    console.print(f"wrote {escape(str(out))}: {len(table)} rows ({table['specimen_id'].nunique()} specimens)")


def dwca(
    db: Path = _DB,
    out: Path = typer.Option(..., "--out", help="FILE.zip"),
    where: list[str] | None = _WHERE,
    group: list[str] | None = _GROUP,
) -> None:
    """A Darwin Core Archive: one Occurrence row per occurrence with its source's terms verbatim,
    its images in a Simple Multimedia extension (licence, rights holder), each measurement in a
    MeasurementOrFact row naming its occurrence, image and trait, and eml.xml naming the software,
    models, weights and references."""
    from ..dwca_export import dwca_zip

    with _scope(db, where, group) as (store, ids, groups):
        data = dwca_zip(store, groups=groups, specimen_ids=ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    console.print(f"wrote {escape(str(out))} ({len(data):,} bytes)")


def annotations(
    db: Path = _DB,
    out: Path = typer.Option(..., "--out", help="Folder for regions.csv and iiif/<group>/<stem>.json."),
    base_url: str = typer.Option("urn:sst-search:annotations", "--base-url",
                                 help="Where the annotation pages will be published (their ids start with it)."),
    where: list[str] | None = _WHERE,
    group: list[str] | None = _GROUP,
) -> None:
    """Trait regions for museum systems: regions.csv, one Audubon Core region of interest per
    trait mask (ac:subjectPart, ac:xFrac/yFrac/widthFrac/heightFrac), and for images from IIIF
    one W3C Web Annotation page (IIIF Presentation 3) each, tagging the canvas with every
    trait's outline (SVG) and box (xywh) in full-resolution coordinates."""
    import json

    from ..export import mask_file_names
    from ..trait_regions import annotation_pages, regions_table

    with _scope(db, where, group) as (store, ids, groups):
        regions = regions_table(store, groups=groups, specimen_ids=ids)
        pages = annotation_pages(store, base_url, groups=groups, specimen_ids=ids)
        provenance = store.provenance(groups=groups, specimen_ids=list(pages))
    out.mkdir(parents=True, exist_ok=True)
    (out / "regions.csv").write_text(regions.to_csv(index=False))
    names = mask_file_names(((sid, r["path"], r["group_name"], r["source"]) for sid, r in provenance.items()), ".json")
    for sid, page in pages.items():
        path = out / "iiif" / names[sid]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(page, indent=1))
    console.print(f"wrote {out / 'regions.csv'} ({len(regions)} regions) and {len(pages)} IIIF annotation pages "
                  f"under {out / 'iiif'}")


def crops(
    db: Path = _DB,
    out: Path = typer.Option(..., "--out", help="Folder for the PNG crops."),
    trait: str | None = typer.Option(None, "--trait", help="Cut out this trait (default: the whole specimen, all traits)."),
    background: str = typer.Option("transparent", "--background", help="transparent (alpha = mask) | black."),
    where: list[str] | None = _WHERE,
    group: list[str] | None = _GROUP,
) -> None:
    """Each specimen (or one trait) cut out of its image at its box, outside the mask transparent or black.

    Exit status: 0 written, 1 some images could not be read (the rest are written), 2 bad input.
    """
    from .. import export

    if background not in export.BACKGROUNDS:
        raise typer.BadParameter(f"choose one of {export.BACKGROUNDS}", param_hint="--background")
    skipped: list[tuple[str, str]] = []
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with _scope(db, where, group) as (store, ids, groups):
        for name, crop in export.iter_crops(store, trait, background, groups, ids, skipped=skipped):
            (out / name).write_bytes(export.png_bytes(crop))
            written += 1
    console.print(f"wrote {written} crops to {escape(str(out))}")
    for path, reason in skipped:
        console.print(f"[yellow]skipped[/yellow] {escape(str(path))}: {escape(str(reason))}")
    if skipped:
        raise typer.Exit(1)


def instances(
    db: Path = _DB,
    out: Path = typer.Option(..., "--out", help="Folder for <photo>.coco.json, <photo>.instances.png and <photo>/NNN.png."),
    background: str = typer.Option("transparent", "--background", help="Cut-outs: transparent (alpha = mask) | black."),
) -> None:
    """Per photo split with `index --instances`: a COCO file of its instances, its instance-id
    map and each instance cut out (numbers as in the app).

    Exit status: 0 written, 1 some photos could not be read (the rest are written), 2 bad input.
    """
    from .. import ImageLoadError, Store, decode_mask, instance_sources, load_image
    from ..instance_export import ExportedInstance, write_photo_instances
    from ..sources.naming import unique_stems, url_of_key

    if background not in ("transparent", "black"):
        raise typer.BadParameter("choose transparent or black", param_hint="--background")
    try:
        store = Store.open(db, read_only=True)
    except (FileNotFoundError, RuntimeError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    written, skipped = 0, []
    with store:
        sources = [s for s in instance_sources(store) if s.status == "split"]
        stems = unique_stems((s.source_path, url_of_key(s.source_key)) for s in sources)
        for source, stem in zip(sources, stems):
            try:
                image = load_image(source.source_path)
            except ImageLoadError as exc:
                skipped.append((source.source_path, exc.reason))
                continue
            rows = [ExportedInstance(r.number, decode_mask(r.rle), r.score) for r in source.instances]
            kind = (source.fingerprint or {}).get("kind", "specimen")
            write_photo_instances(out, stem, image, source.source_key, rows, kind, background)
            written += 1
    console.print(f"wrote the instances of {written} photos to {escape(str(out))}")
    for path, reason in skipped:
        console.print(f"[yellow]skipped[/yellow] {escape(str(path))}: {escape(str(reason))}")
    if skipped:
        raise typer.Exit(1)


export_app.command()(measurements)
export_app.command()(dwca)
export_app.command()(annotations)
export_app.command()(crops)
export_app.command()(instances)
