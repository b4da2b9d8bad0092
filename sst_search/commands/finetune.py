"""``sst-search finetune``: one-shot cycle-consistent fine-tuning of the tracker (OC-CCL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from tqdm import tqdm

from .. import WeightsError, tracker_from_config
from ..config import DEFAULT_LR, FinetuneConfig, load_config
from ..finetune import AdapterError, save_adapter
from ..finetune import finetune as run_finetune
from ..images import ImageLoadError, is_image_file, load_image
from ..references import MASK_SUFFIX, ReferencesError, load_support
from .options import (
    DEVICE,
    IMAGE_SIZE,
    QUIET,
    WEIGHTS,
    config_default,
    config_option,
    model_option,
    warn_random_weights,
)

console = Console(stderr=True)


def _short(rate: float) -> str:
    return format(rate, ".0e").replace("e-0", "e-")


def _query_files(folder: Path, support: Path) -> list[Path]:
    """Images under ``folder`` except label masks and the support itself."""
    support = support.resolve()
    return sorted(
        f for f in folder.rglob("*") if is_image_file(f) and not f.name.endswith(MASK_SUFFIX) and f.resolve() != support
    )


def finetune(
    support: Path = typer.Option(..., "--support", help="The labeled support image."),
    support_mask: Path = typer.Option(..., "--support-mask", help="Its label mask (pixel value k = trait k)."),
    traits: Path | None = typer.Option(None, "--traits", help="traits.yaml naming the mask ids."),
    queries: Path = typer.Option(..., "--queries", help="Folder of unlabeled images of the same group."),
    out: Path = typer.Option(..., "--out", help="Adapter file to write."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimiser steps (one query each).",
                                     show_default=config_default(FinetuneConfig, "steps")),
    lr: float | None = typer.Option(None, "--lr", help=f"Peak learning rate (default: {_short(DEFAULT_LR['lora'])} LoRA, "
                                                      f"{_short(DEFAULT_LR['full'])} full)."),
    lora_rank: int | None = typer.Option(None, "--lora-rank", min=1, help="LoRA rank.",
                                         show_default=config_default(FinetuneConfig, "lora_rank")),
    full: bool = typer.Option(False, "--full", help="Train all of memory attention and the mask decoder instead of LoRA."),
    max_queries: int | None = typer.Option(None, "--max-queries", min=1, help="Use at most this many query images (seeded sample).",
                                           show_default=config_default(FinetuneConfig, "max_queries")),
    model: str | None = model_option(),
    weights: str | None = WEIGHTS,
    image_size: int | None = IMAGE_SIZE,
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed for LoRA init, query order and augmentation.",
                                    show_default=config_default(FinetuneConfig, "seed")),
    augment: bool | None = typer.Option(None, "--augment/--no-augment", help="Flip, scale and colour-jitter the queries.",
                                        show_default=config_default(FinetuneConfig, "augment")),
    device: str | None = DEVICE,
    quiet: bool = QUIET,
    config_file: Path | None = config_option("reads its 'segmentation' and 'finetune' sections, command-line options "
                                             "override them"),
) -> None:
    """Fine-tune the tracker on one labeled support and unlabeled queries; write an adapter.

    Use the adapter with `sst-search segment --adapter`, with the same model, weights and
    image size. Training starts from the base model: a configured segmentation.adapter is not
    applied. Exit status: 0 written, 2 bad arguments, references, images or weights.
    """
    if not queries.is_dir():
        raise typer.BadParameter(f"{queries} is not a folder", param_hint="--queries")
    try:
        settings = load_config(config_file, kind="full" if full else None, steps=steps, lr=lr, lora_rank=lora_rank,
                               augment=augment, seed=seed, max_queries=max_queries, model=model, weights=weights,
                               image_size=image_size, device=device)
        config = settings.finetune
        sup = load_support(support, support_mask, traits)
        tracker = tracker_from_config(settings.segmentation.model_copy(update={"adapter": None}))
    except (ReferencesError, WeightsError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if tracker.weights.is_random:
        warn_random_weights(console, "the adapter is meaningless and only fits a random-weight model (smoke test only)")

    files = _query_files(queries, support)
    if len(files) > config.max_queries:
        pick = np.random.default_rng(config.seed).choice(len(files), size=config.max_queries, replace=False)
        files = [files[i] for i in sorted(pick)]
    images = []
    for f in files:
        try:
            images.append(load_image(f))
        except ImageLoadError as exc:
            console.print(f"[yellow]skipped[/yellow] {escape(str(exc))}")
    if not images:
        console.print(f"[red]error:[/red] {escape(str(queries))}: no readable query images")
        raise typer.Exit(2)

    with tqdm(total=config.steps, desc="fine-tuning", unit="step", disable=quiet) as bar:

        def on_step(step: int, losses: dict[str, float]) -> None:
            bar.set_postfix(loss=f"{losses['total']:.4f}", cycle=f"{losses['cycle']:.4f}")
            bar.update(1)

        result = run_finetune(tracker, sup, images, config, on_step=on_step)
    try:
        digest = save_adapter(tracker, out, config.adapter_record())
    except (AdapterError, OSError) as exc:
        console.print(f"[red]error:[/red] {escape(str(out))}: {escape(str(exc))}")
        raise typer.Exit(2) from exc
    first, last = result.history[0]["cycle"], result.history[-1]["cycle"]
    console.print(
        f"trained {result.trainable_parameters:,} parameters ({config.kind}) for {config.steps} steps on "
        f"{len(images)} queries in {result.seconds:.1f} s; cycle loss {first:.4f} -> {last:.4f}"
    )
    console.print(f"adapter -> {escape(str(out))} (sha256 {digest})")
