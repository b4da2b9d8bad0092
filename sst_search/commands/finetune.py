"""``sst-search finetune``: one-shot cycle-consistent fine-tuning of the tracker (OC-CCL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from tqdm import tqdm

from .. import WeightsError, build_tracker
from ..finetune import AdapterError, FinetuneConfig, finetune as run_finetune, save_adapter
from ..images import ImageLoadError, is_image_file, load_image
from ..references import MASK_SUFFIX, ReferencesError, load_support
from .options import DEVICE, IMAGE_SIZE, QUIET, WEIGHTS, model_option, warn_random_weights

console = Console(stderr=True)


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
    steps: int = typer.Option(200, "--steps", min=1, help="Optimiser steps (one query each)."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default: 5e-4 LoRA, 2e-5 full)."),
    lora_rank: int = typer.Option(4, "--lora-rank", min=1, help="LoRA rank."),
    full: bool = typer.Option(False, "--full", help="Train all of memory attention and the mask decoder instead of LoRA."),
    max_queries: int = typer.Option(64, "--max-queries", min=1, help="Use at most this many query images (seeded sample)."),
    model: str = model_option(),
    weights: str | None = WEIGHTS,
    image_size: int | None = IMAGE_SIZE,
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for LoRA init, query order and augmentation."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Flip, scale and colour-jitter the queries."),
    device: str | None = DEVICE,
    quiet: bool = QUIET,
) -> None:
    """Fine-tune the tracker on one labeled support and unlabeled queries; write an adapter.

    Use the adapter with `sst-search segment --adapter`, with the same model, weights and
    image size. Exit status: 0 written, 2 bad arguments, references, images or weights.
    """
    if not queries.is_dir():
        raise typer.BadParameter(f"{queries} is not a folder", param_hint="--queries")
    try:
        config = FinetuneConfig(
            kind="full" if full else "lora", steps=steps, lr=lr, lora_rank=lora_rank, augment=augment, seed=seed
        )
        sup = load_support(support, support_mask, traits)
        tracker = build_tracker(model, weights, image_size=image_size, device=device)
    except (ReferencesError, WeightsError, ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if tracker.weights.is_random:
        warn_random_weights(console, "the adapter is meaningless and only fits a random-weight model (smoke test only)")

    files = _query_files(queries, support)
    if len(files) > max_queries:
        pick = np.random.default_rng(seed).choice(len(files), size=max_queries, replace=False)
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
        digest = save_adapter(tracker, out, {**config.model_dump(), "lr": config.learning_rate})
    except (AdapterError, OSError) as exc:
        console.print(f"[red]error:[/red] {escape(str(out))}: {escape(str(exc))}")
        raise typer.Exit(2) from exc
    first, last = result.history[0]["cycle"], result.history[-1]["cycle"]
    console.print(
        f"trained {result.trainable_parameters:,} parameters ({config.kind}) for {config.steps} steps on "
        f"{len(images)} queries in {result.seconds:.1f} s; cycle loss {first:.4f} -> {last:.4f}"
    )
    console.print(f"adapter -> {escape(str(out))} (sha256 {digest})")
