"""Command-line options and messages shared by the commands, defined once so that every
command names, documents and warns about the same things the same way."""

from __future__ import annotations

from typing import get_args

import typer
from rich.console import Console

from ..config import SegmentationConfig
from ..weights import SAM2_MODELS

MODES = get_args(SegmentationConfig.model_fields["mode"].annotation)

WEIGHTS = typer.Option(None, "--weights", help="SAM 2 checkpoint path, or 'random' (real architecture, random init; smoke tests).")
IMAGE_SIZE = typer.Option(None, "--image-size", help="SAM 2 input size (multiple of 32; default 1024).")
ADAPTER = typer.Option(None, "--adapter", help="Fine-tuned adapter from `sst-search finetune`.")
DEVICE = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available).")
EMBEDDER_WEIGHTS = typer.Option(None, "--embedder-weights", help="Embedder checkpoint path or 'random'.")
QUIET = typer.Option(False, "--quiet", help="No progress bars.")


def db_option(role: str, required: bool = True):
    """``--db``: the index, named by its DuckDB catalog file; ``role`` says what the command does with it."""
    return typer.Option(... if required else None, "--db", help=f"Index: its DuckDB catalog file ({role}).")


def config_option(note: str = "command-line options override it"):
    return typer.Option(None, "--config", help=f"YAML config (see configs/default.yaml); {note}.")


def model_option(default: str | None = "sam2.1-hiera-tiny"):
    return typer.Option(default, "--model", help=f"SAM 2.1 model, one of: {', '.join(SAM2_MODELS)}.")


def mode_option(default: str | None = "pairwise"):
    return typer.Option(default, "--mode", help=f"Propagation mode: {' | '.join(MODES)}.")


def warn_random_weights(console: Console, consequence: str) -> None:
    """The one warning every command prints when SAM 2 runs with random weights."""
    console.print(f"[bold yellow]WARNING: SAM 2 weights are RANDOM - {consequence}.[/bold yellow]")
