"""``sst-search eval-seg``: score predicted trait masks against ground-truth masks."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..evaluation import EvaluationInputError, evaluate_folders

console = Console()
err_console = Console(stderr=True)


def eval_seg(
    pred: Path = typer.Argument(..., help="Folder of predicted label masks (<id>.png or <id>.mask.png, any depth)."),
    gt: Path = typer.Argument(..., help="Folder of ground-truth label masks; sub-folders are groups."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Collection CSV whose 'group' column assigns groups by file stem."),
    csv: Path | None = typer.Option(None, "--csv", help="Also write per-trait rows to this CSV."),
) -> None:
    """Per-trait IoU, per-group and overall mIoU; missing predictions score 0 and are listed.

    Exit status: 0 scored, 2 bad input (missing folder, no ground truth, bad manifest).
    """
    try:
        report = evaluate_folders(pred, gt, manifest)
    except EvaluationInputError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(report)
    if csv is not None:
        console.print(f"wrote {report.to_csv(csv)}")
