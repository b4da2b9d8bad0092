"""``sst-search index`` and ``sst-search status``."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .. import ReferencesError, Store, StoreError, WeightsError
from ..config import load_config
from .errors import ITEMS_FAILED, console, exit_codes, report
from .options import (
    ADAPTER,
    EMBEDDER_WEIGHTS,
    IMAGE_SIZE,
    QUIET,
    WEIGHTS,
    config_option,
    db_option,
    mode_option,
    model_option,
    warn_random_weights,
)


def index(
    collection: str = typer.Argument(..., help="Darwin Core occurrence table (CSV/TSV), manifest CSV (path column), "
                                               "Darwin Core Archive (zip, tar or folder), IIIF Presentation "
                                               "manifest or collection (URL or .json file), or a folder whose "
                                               "sub-folders name the groups."),
    references: Path = typer.Option(..., "--references", help="REFS folder: REFS/<group>/{traits.yaml, supports}."),
    db: Path = db_option("written; FAISS indexes go beside it"),
    config_file: Path | None = config_option(),
    embedder: str | None = typer.Option(None, "--embedder", help="bioclip | bioclip-2 | clip | color-pattern."),
    embedder_weights: str | None = EMBEDDER_WEIGHTS,
    engine: str | None = typer.Option(None, "--engine", help="local | ray."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: start a local cluster)."),
    workers: int | None = typer.Option(None, "--workers", help="Ray actors."),
    mode: str | None = mode_option(),
    model: str | None = model_option(),
    weights: str | None = WEIGHTS,
    adapter: str | None = ADAPTER,
    image_size: int | None = IMAGE_SIZE,
    quality: bool | None = typer.Option(None, "--quality/--no-quality", help="Cycle-consistency quality per mask."),
    orientation: str | None = typer.Option(None, "--orientation", help="0 | 90 | 180 | 270 | auto (try all four per image)."),
    mirror: bool | None = typer.Option(None, "--mirror/--no-mirror", help="Flip images left-right before turning; with auto, try both."),
    orientation_by: str | None = typer.Option(None, "--orientation-by", help="What auto keeps: object_score | cycle (slower)."),
    query_batch: int | None = typer.Option(None, "--query-batch", min=1, help="Pairwise queries per tracking call (default: 4 on CUDA, 1 on CPU)."),
    masks: Path | None = typer.Option(None, "--masks", help="Existing label masks (same stem) used instead of SST."),
    default_group: str | None = typer.Option(None, "--default-group", help="Group for items without one."),
    pixels_per_mm: float | None = typer.Option(None, "--pixels-per-mm",
                                               help="Scale of the whole collection (mm measurements); an item's own column wins."),
    scale_column: str | None = typer.Option(None, "--scale-column", help="Manifest column with an item's pixels per mm (default pixelsPerMM)."),
    group_by: str = typer.Option("scientificName", "--group-by",
                                 help="Darwin Core table or archive: the term naming each item's group "
                                      "(scientificName: without the authorship)."),
    image_cache: Path | None = typer.Option(None, "--image-cache", help="Cache of images given by URL (default: <db>.images)."),
    max_per_host: int | None = typer.Option(None, "--max-per-host", help="Concurrent requests per image server (default 2)."),
    force: bool = typer.Option(False, "--force", help="Re-process everything."),
    quiet: bool = QUIET,
    allow_mass_removal: bool = typer.Option(
        False, "--allow-mass-removal",
        help="Let the run remove or fail more than indexer.max_removal_share of the indexed items."),
    instances: bool = typer.Option(False, "--instances", help="Split every photo into one item per specimen first."),
    instance_references: Path | None = typer.Option(
        None, "--instance-references", help="Instance references (traits.yaml with instance_of); default REFS/instances."
    ),
) -> None:
    """Segment and embed a collection into a DuckDB + FAISS trait index, incrementally.

    With --instances every photo (a drawer, a field photo) is first split into its
    instances, found from the instance references; each instance is an item (a crop with
    its mask, box and a link to the photo and its metadata) and is segmented and embedded.

    Only new or changed images and items whose fingerprint (model, weights, adapter,
    references, embedder, config) changed are processed; deleted files leave the index.
    Exit status: 0 all indexed, 1 some items failed or have no references (the rest are
    indexed; see `sst-search status`), 2 bad arguments, config, references or weights, or a
    run that would remove too much of the index, 3 storage fault (disk full, damaged store).
    """
    from indexer.collection import CollectionError, collection_items

    if orientation not in (None, "0", "90", "180", "270", "auto"):  # checked here: the tracker module imports torch
        raise typer.BadParameter(f"{orientation!r} is not 0, 90, 180, 270 or auto", param_hint="--orientation")
    logging.basicConfig(level=logging.INFO if quiet else logging.WARNING, format="%(asctime)s %(message)s")
    # httpx logs every request at INFO: one line per URL image would bury the run's own lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with exit_codes(CollectionError):
        config = load_config(
            config_file, embedder=embedder, embedder_weights=embedder_weights, engine=engine,
            ray_address=address, num_workers=workers, mode=mode, model=model, weights=weights, adapter=adapter,
            image_size=image_size, quality=quality, pixels_per_mm=pixels_per_mm, scale_column=scale_column,
            orientation=int(orientation) if orientation and orientation.isdigit() else orientation,
            mirror=mirror, orientation_by=orientation_by, query_batch=query_batch,
            image_cache=image_cache, max_per_host=max_per_host,
        )
        # The collection is read and checked before any model library is imported: a refused
        # collection (no images, duplicate ids, an unsafe archive) answers in a moment.
        items = collection_items(collection, config, db, default_group=default_group, group_by=group_by)

    from indexer.job import MassRemovalError, run_index

    with exit_codes(ReferencesError, WeightsError, MassRemovalError, StoreError, RuntimeError):
        instance_refs = (instance_references or Path(references) / "instances") if instances else None
        summary = run_index(collection, references, db, config, masks=masks, force=force, default_group=default_group,
                            quiet=quiet, group_by=group_by, instance_references=instance_refs,
                            allow_mass_removal=allow_mass_removal, items=items)
    print_summary(summary)
    raise typer.Exit(summary.exit_code)


def failure_line(status: str, path: str, error: str | None) -> str:
    """One item that was not indexed, the same in the run summary and in ``status``: its
    status (``failed`` / ``no_reference``), its path once, and why."""
    reason = error or status
    if reason.startswith(f"{path}: "):
        reason = reason[len(path) + 2:]
    return f"[red]{status}[/red] {path}: {reason}"


def print_summary(summary) -> None:
    if summary.weights_random:
        warn_random_weights(console, "masks and search results are not meaningful")  # a warning: stderr
    if summary.split is not None:
        sp = summary.split
        report.print(
            f"photos: {sp.photos} ({sp.split} split, {sp.unchanged} unchanged, {sp.failed} failed, "
            f"{sp.removed} removed) -> {sp.instances} instances"
        )
        for path, reason in sp.failures[:10]:
            report.print(f"[red]failed[/red] {escape(str(path))}: {escape(str(reason))}")
    table = Table(title=f"run {summary.run_id[:8]}: {summary.total} items")
    for col in ("status", "count"):
        table.add_column(col)
    for status, n in summary.counts.items():
        table.add_row(status, str(n))
    report.print(table)
    t = summary.timings
    done = summary.counts["indexed"] + summary.counts["failed"]
    if t.get("total"):
        report.print(
            # Pipelined stages overlap, so their seconds (summed over threads) can exceed the total.
            "time: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if k != "total")
            + f" (stages overlap) | total {t['total']:.1f}s"
            + (f" | {done / t['total']:.2f} images/s" if done else "")
        )
    if summary.rescaled:
        report.print(f"re-measured all {summary.remeasured} indexed specimens: the scale settings changed since the "
                     "last run (no re-segmenting)")
    elif summary.remeasured:
        report.print(f"measured {summary.remeasured} specimens indexed before measurements existed (no re-segmenting)")
    for path, reason in summary.failures[:10]:
        report.print(failure_line(summary.failure_status.get(path, "failed"), escape(path), escape(reason)), soft_wrap=True)
    if len(summary.failures) > 10:
        report.print(f"... and {len(summary.failures) - 10} more (see `sst-search status`)")


def status(db: Path = db_option("read")) -> None:
    """Counts per status and group, index sizes and freshness, the last run, failed items, damage.

    Exit status: 0 consistent, 1 FAISS files disagree with the catalog (repaired by the next
    run or `sst-search verify --repair`), 2 no such store, 3 damaged or busy store.
    """
    with exit_codes(StoreError):
        store = Store.open(db, read_only=True)
        with store:
            _print_status(store)
            problems = store.check_consistency()
    for p in problems:
        report.print(f"[red]inconsistent:[/red] {escape(p)}")
    if problems:
        raise typer.Exit(ITEMS_FAILED)


def _print_status(store: Store) -> None:
    st = store.status()
    groups = Table(title="specimens per group and status")
    statuses = sorted({s for g in st["groups"].values() for s in g})
    for col in ("group", *statuses):
        groups.add_column(col)
    for group, counts in st["groups"].items():
        groups.add_row(escape(group or "(none)"), *(str(counts.get(s, 0)) for s in statuses))
    report.print(groups)
    indexes = Table(title="indexes")
    for col in ("embedder", "trait", "vectors", "kind", "factory", "index B/vector", "re-rank B/vector", "file"):
        indexes.add_column(col)
    for row in st["indexes"]:
        measured = row["index_bytes_per_vector"]
        indexes.add_row(escape(row["embedder"]), escape(row["trait"]), str(row["vectors"]), str(row["kind"]),
                        escape(str(row["factory"] or "-")), "-" if measured is None else f"{measured:,.0f}",
                        f"{row['rerank_bytes_per_vector']:,.0f} ({row['rerank']})", escape(str(row["file"])))
    report.print(indexes)
    runs = store.runs()
    if runs:
        last = runs[-1]
        report.print(f"last run {last['run_id'][:8]} started {last['started_at']} finished {last['finished_at']}: "
                      f"{escape(str(last['counts']))}")
    for path, st_, error in store.unindexed():
        report.print(failure_line(st_, escape(path), escape(str(error or st_))), soft_wrap=True)
