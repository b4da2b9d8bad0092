"""Command-line options and messages shared by the commands, defined once so that every
command names, documents and warns about the same things the same way."""

from __future__ import annotations

import typer
from rich.console import Console

from ..config import MODES, SegmentationConfig
from ..weights import SAM2_MODELS

WEIGHTS = typer.Option(None, "--weights", help="SAM 2 checkpoint path, or 'random' (real architecture, random init; smoke tests).")
ADAPTER = typer.Option(None, "--adapter", help="Fine-tuned adapter from `sst-search finetune`.")
DEVICE = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available).")
EMBEDDER_WEIGHTS = typer.Option(None, "--embedder-weights", help="Embedder checkpoint path or 'random'.")
QUIET = typer.Option(False, "--quiet", help="No progress bars.")


def db_option(role: str, required: bool = True):
    """``--db``: the index, named by its DuckDB catalog file; ``role`` says what the command does with it."""
    return typer.Option(... if required else None, "--db", help=f"Index: its DuckDB catalog file ({role}).")


def config_option(note: str = "command-line options override it"):
    return typer.Option(None, "--config", help=f"YAML config (see configs/default.yaml); {note}.")


def config_default(section: type, key: str) -> str:
    """A setting's default as ``--help`` shows it: options default to ``None`` ("not given",
    so a config file's value stands), the value itself lives once, in :mod:`sst_search.config`."""
    return str(section.model_fields[key].default)


IMAGE_SIZE = typer.Option(
    None, "--image-size",
    help=f"SAM 2 input size (multiple of 32; default {config_default(SegmentationConfig, 'image_size')}).")


def model_option():
    return typer.Option(None, "--model", help=f"SAM 2.1 model, one of: {', '.join(SAM2_MODELS)}.",
                        show_default=config_default(SegmentationConfig, "model"))


def mode_option():
    return typer.Option(None, "--mode", help=f"Propagation mode: {' | '.join(MODES)}.",
                        show_default=config_default(SegmentationConfig, "mode"))


def warn_random_weights(console: Console, consequence: str) -> None:
    """The one warning every command prints when SAM 2 runs with random weights."""
    console.print(f"[bold yellow]WARNING: SAM 2 weights are RANDOM - {consequence}.[/bold yellow]")
