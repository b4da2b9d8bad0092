"""``sst-search segment``: one-shot trait segmentation of query images."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .. import WeightsError, tracker_from_config
from ..config import MODES, ORIENTATION_CRITERIA, SegmentationConfig, load_config
from ..references import ReferencesError, load_support
from ..segmentation_run import DuplicateStemError, expand_queries, run_segmentation
from ..tracking import parse_orientation
from .options import (
    ADAPTER,
    DEVICE,
    IMAGE_SIZE,
    QUIET,
    WEIGHTS,
    config_default,
    config_option,
    mode_option,
    model_option,
    warn_random_weights,
)

console = Console(stderr=True)


def segment(
    queries: list[Path] = typer.Argument(..., help="Query images or folders of images."),
    support: list[Path] = typer.Option(..., "--support", help="Support image (repeat for several supports)."),
    support_mask: list[Path] = typer.Option(..., "--support-mask", help="Label mask of each --support, in the same order."),
    traits: Path | None = typer.Option(None, "--traits", help="traits.yaml naming the mask ids."),
    out: Path = typer.Option(..., "--out", help="Output folder for masks, overlays and summary.json."),
    mode: str = mode_option(),
    model: str = model_option(),
    weights: str | None = WEIGHTS,
    image_size: int | None = IMAGE_SIZE,
    adapter: Path | None = ADAPTER,
    overlay: bool = typer.Option(False, "--overlay", help="Also write <stem>.overlay.png."),
    quality: bool | None = typer.Option(None, "--quality", help="Score each mask by cycle consistency (slower)."),
    orientation: str | None = typer.Option(None, "--orientation", help="0 | 90 | 180 | 270: turn queries before tracking; auto: try all four per query.",
                                           show_default=config_default(SegmentationConfig, "orientation")),
    mirror: bool | None = typer.Option(None, "--mirror", help="Flip queries left-right before turning them; with auto, try both."),
    orientation_by: str | None = typer.Option(None, "--orientation-by", help="What auto keeps: object_score | cycle (round-trip IoU, slower).",
                                              show_default=config_default(SegmentationConfig, "orientation_by")),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Queries per image-encoder batch (default: 8 on CUDA, 1 on CPU)."),
    query_batch: int | None = typer.Option(None, "--query-batch", min=1, help="Pairwise queries per tracking call, queries x traits as one batch (default: 4 on CUDA, 1 on CPU)."),
    device: str | None = DEVICE,
    quiet: bool = QUIET,
    instances: bool = typer.Option(
        False, "--instances", help="Find every instance instead: supports are instance references (mask k = instance k)."
    ),
    background: str = typer.Option("transparent", "--background", help="--instances cut-outs: transparent | black."),
    config_file: Path | None = config_option(),
) -> None:
    """Track each trait of the support(s) into every query and write one label mask per query.

    With --instances, find every instance of the supports' kind in each query instead
    (--traits may declare 'instance_of: <kind>' and a class map; default: every marked
    region is a specimen) and write <stem>.instances.png, <stem>.coco.json, <stem>/NNN.png
    cut-outs and summary.json.

    Exit status: 0 all queries segmented, 1 some queries failed (the rest are written),
    2 bad arguments, references or weights.
    """
    model_settings = {"model": model, "weights": weights, "image_size": image_size, "adapter": adapter,
                      "device": device}
    if instances:
        _segment_instances(queries, support, support_mask, traits, out, config_file, model_settings, background)
        return
    if mode is not None and mode not in MODES:
        raise typer.BadParameter(f"choose one of {MODES}", param_hint="--mode")
    try:
        turn = parse_orientation(orientation) if orientation is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--orientation") from exc
    if orientation_by is not None and orientation_by not in ORIENTATION_CRITERIA:
        raise typer.BadParameter(f"choose one of {ORIENTATION_CRITERIA}", param_hint="--orientation-by")
    if len(support) != len(support_mask):
        raise typer.BadParameter(f"{len(support)} --support but {len(support_mask)} --support-mask")
    try:
        seg = load_config(config_file, mode=mode, quality=quality, orientation=turn, mirror=mirror,
                          orientation_by=orientation_by, batch_size=batch_size, query_batch=query_batch,
                          **model_settings).segmentation
        supports = [load_support(img, msk, traits) for img, msk in zip(support, support_mask)]
        files = expand_queries(queries)
        tracker = tracker_from_config(seg)
    except (ReferencesError, DuplicateStemError, WeightsError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if tracker.weights.is_random:
        warn_random_weights(console, "masks are not meaningful (smoke test only)")
    summary = run_segmentation(tracker, supports, files, out, seg.mode, seg.quality, overlay, seg.batch_size, quiet,
                               seg.orientation, mirror=seg.mirror, orientation_by=seg.orientation_by,
                               query_batch=seg.query_batch)
    counts = summary["counts"]
    console.print(f"segmented {counts['ok']}/{counts['total']} queries -> {escape(str(out))} ({escape(str(summary['seconds']))} s)")
    for stem, entry in summary["images"].items():
        if entry["status"] == "failed":
            console.print(f"[red]failed[/red] {escape(str(stem))}: {escape(str(entry['error']))}")
    if counts["failed"]:
        raise typer.Exit(1)


def _segment_instances(queries, support, support_mask, traits, out, config_file, model_settings, background) -> None:
    from ..builder import build_instance_finder
    from ..instance_export import run_instance_segmentation
    from ..references import InstanceSpec, load_instance_reference, load_instance_spec

    if len(support) != len(support_mask):
        raise typer.BadParameter(f"{len(support)} --support but {len(support_mask)} --support-mask")
    if background not in ("transparent", "black"):
        raise typer.BadParameter("choose transparent or black", param_hint="--background")
    try:
        spec = (load_instance_spec(traits) if traits else None) or InstanceSpec(instance_of="specimen")
        refs = [load_instance_reference(img, msk, spec) for img, msk in zip(support, support_mask)]
        files = expand_queries(queries)
        config = load_config(config_file, **model_settings)
        tracker = tracker_from_config(config.segmentation)
    except (ReferencesError, DuplicateStemError, WeightsError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if tracker.weights.is_random:
        console.print("[bold yellow]WARNING: SAM 2 weights are RANDOM - instances are not meaningful (smoke test only).[/bold yellow]")
    summary = run_instance_segmentation(build_instance_finder(tracker, config.instances), refs, files, out, background)
    counts = summary["counts"]
    found = sum(p.get("count", 0) for p in summary["photos"].values())
    console.print(f"{escape(str(found))} instances in {counts['ok']}/{counts['total']} photos -> {escape(str(out))} ({escape(str(summary['seconds']))} s)")
    for stem, entry in summary["photos"].items():
        if entry["status"] == "failed":
            console.print(f"[red]failed[/red] {escape(str(stem))}: {escape(str(entry['error']))}")
    if counts["failed"]:
        raise typer.Exit(1)
