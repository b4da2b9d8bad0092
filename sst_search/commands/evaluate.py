"""``sst-search eval-seg`` / ``eval-kshot`` / ``eval-retrieval`` / ``eval-instances``: segmentation and retrieval scores."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from tqdm import tqdm

from .. import ReferencesError, Store, WeightsError, tracker_from_config
from ..config import MODES, load_config
from ..evaluation import DatasetFormatError, EvaluationInputError, evaluate_folders
from ..evaluation.eval_seg import load_trait_names
from ..evaluation.kshot import DatasetKind, open_dataset, run_kshot
from ..evaluation.retrieval import GROUP, evaluate_retrieval
from .options import (
    ADAPTER,
    DEVICE,
    IMAGE_SIZE,
    QUIET,
    WEIGHTS,
    config_option,
    db_option,
    mode_option,
    model_option,
    warn_random_weights,
)

console = Console()
err_console = Console(stderr=True)


def eval_seg(
    pred: Path = typer.Argument(..., help="Folder of predicted label masks (<id>.png or <id>.mask.png, any depth)."),
    gt: Path = typer.Argument(..., help="Folder of ground-truth label masks; sub-folders are groups."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Collection CSV whose 'group' column assigns groups by file stem."),
    csv: Path | None = typer.Option(None, "--csv", help="Also write per-trait rows to this CSV."),
    predicted_only: bool = typer.Option(False, "--predicted-only", help="Score only the items that have a prediction."),
    references: Path | None = typer.Option(None, "--references", help="REFS folder: name traits from REFS/<group>/traits.yaml."),
) -> None:
    """Per-trait IoU, per-group and overall mIoU; missing predictions score 0 and are listed.

    Predictions match ground truth by group folder and stem (what `export` writes for masks:
    <group>/<stem>.png), else by a unique stem.

    Exit status: 0 scored, 2 bad input (missing folder, no ground truth, bad manifest).
    """
    try:
        names = load_trait_names(references) if references is not None else {}
        report = evaluate_folders(pred, gt, manifest, predicted_only=predicted_only, trait_names=names)
    except (EvaluationInputError, ReferencesError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    console.print(report)
    if csv is not None:
        console.print(f"wrote {escape(str(report.to_csv(csv)))}")


def eval_instances(
    pred: Path = typer.Argument(..., help="Folder of predicted instance-id maps (<stem>.instances.png from `segment --instances`)."),
    gt: Path = typer.Argument(..., help="Folder of ground-truth instance-id maps (<stem>.png: 0 background, k instance k)."),
    iou: float = typer.Option(0.5, "--iou", min=0.0, max=1.0, help="Mask IoU at which a prediction matches a true instance."),
) -> None:
    """Instance recall and precision (one-to-one matches at mask IoU >= --iou) and count error.

    Exit status: 0 scored, 2 bad input (missing folder, no ground truth, unreadable map).
    """
    from ..evaluation.instance_scores import evaluate_instance_folders

    try:
        report = evaluate_instance_folders(pred, gt, iou)
    except EvaluationInputError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    console.print(str(report))


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint="--seeds") from exc
    if not seeds:
        raise typer.BadParameter("at least one seed is needed", param_hint="--seeds")
    return seeds


def eval_kshot(
    fmt: DatasetKind = typer.Option(..., "--format", help="folder | synthetic (--root) or cambridge | neon (--split)."),
    root: Path | None = typer.Option(None, "--root", help="Dataset folder (folder/synthetic formats)."),
    split: Path | None = typer.Option(None, "--split", help="Cambridge split JSON or NEON metadata.json."),
    image_root: Path | None = typer.Option(None, "--image-root", help="Where the downloaded images are (cambridge/neon)."),
    mask_root: Path | None = typer.Option(None, "--mask-root", help="Folder mask paths are relative to (default: found from --split)."),
    k: int = typer.Option(1, "--k", min=1, help="Supports drawn per group."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
    mode: str | None = mode_option(),
    model: str | None = model_option(),
    weights: str | None = WEIGHTS,
    image_size: int | None = IMAGE_SIZE,
    adapter: Path | None = ADAPTER,
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Queries per image-encoder batch."),
    device: str | None = DEVICE,
    csv: Path | None = typer.Option(None, "--csv", help="Also write per-seed trait/group/overall rows to this CSV."),
    quiet: bool = QUIET,
    config_file: Path | None = config_option("reads its 'segmentation' section, command-line options override it"),
) -> None:
    """k-shot protocol: per seed, draw k supports per group, segment the rest with SST, score mIoU.

    Exit status: 0 scored, 1 some queries failed (scored as IoU 0), 2 bad input or weights.
    """
    if mode is not None and mode not in MODES:
        raise typer.BadParameter(f"choose one of {MODES}", param_hint="--mode")
    seed_list = _seed_list(seeds)
    try:
        seg = load_config(config_file, mode=mode, model=model, weights=weights, image_size=image_size, adapter=adapter,
                          batch_size=batch_size, device=device).segmentation
        dataset, names = open_dataset(fmt, root=root, split=split, image_root=image_root, mask_root=mask_root)
        tracker = tracker_from_config(seg)
    except (DatasetFormatError, FileNotFoundError, ReferencesError, WeightsError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    err_console.print(dataset.summary())
    if tracker.weights.is_random:
        warn_random_weights(err_console, "scores are not meaningful (smoke test only)")
    usable = sum(r.image_path is not None for r in dataset.records)
    with tqdm(total=max(usable - k * len(dataset.groups), 0) * len(seed_list), desc="segment", unit="img", disable=quiet) as bar:
        try:
            report = run_kshot(dataset, tracker, k=k, seeds=seed_list, mode=seg.mode, trait_names=names,
                               batch_size=seg.batch_size, progress=bar.update)
        except ValueError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from exc
    console.print(report)
    if csv is not None:
        console.print(f"wrote {escape(str(report.to_csv(csv)))}")
    if any(s.failed for s in report.seeds):
        raise typer.Exit(1)


def eval_retrieval(
    db: Path = db_option("read"),
    by: str = typer.Option(GROUP, "--by", help="Relevance label: 'group' or a metadata column (e.g. scientificName)."),
    k: int = typer.Option(10, "--k", min=1, help="Ranks scored per query."),
    embedder: list[str] | None = typer.Option(None, "--embedder", help="Only this embedder (repeatable)."),
    traits: list[str] | None = typer.Option(None, "--traits", help="Only this trait name (repeatable)."),
    csv: Path | None = typer.Option(None, "--csv", help="Also write the rows to this CSV."),
) -> None:
    """Leave-one-out mAP@k and P@k per (embedder, trait), with the chance level of each.

    Exit status: 0 scored, 2 bad input (no store, unknown embedder/trait/column).
    """
    try:
        with Store.open(db, read_only=True) as store:
            report = evaluate_retrieval(store, by=by, k=k, embedders=embedder, traits=traits)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    console.print(report)
    if csv is not None:
        console.print(f"wrote {escape(str(report.to_csv(csv)))}")
