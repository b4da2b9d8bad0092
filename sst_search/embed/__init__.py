"""Trait embedders: one unit vector per (specimen, trait) plus one per whole specimen.

``create_embedder(name, weights=None, device=None, **opts)`` builds one by name:

* ``bioclip`` (default): BioCLIP (``hf-hub:imageomics/bioclip``, a ViT-B/16 CLIP trained on
  the Tree of Life); image and text towers.
* ``bioclip-2``: BioCLIP 2 (``hf-hub:imageomics/bioclip-2``, a ViT-L/14 CLIP trained on
  TreeOfLife-200M, 768-dim); image and text towers; about four times BioCLIP's compute.
* ``clip``: any open_clip model and pretrained tag (``model_name="ViT-B-32"``,
  ``pretrained="openai"``); image and text towers.
* ``color-pattern``: weight-free CIELab colour histogram + spatial layout; no text tower.

``weights`` is ``"random"`` (real architecture, random init; recorded as such), a checkpoint
path, or ``None`` for the published weights. Common ``opts``: ``image_size`` and
``batch_size`` for the open_clip towers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sst_search.embed.base import (
    EmbedderError,
    EmbedItem,
    NoTextTowerError,
    Region,
    SpecimenVectors,
    TraitEmbedder,
    l2_normalize,
    masked_square_crop,
)
from sst_search.embed.clip import (
    OpenClipEmbedder,
    build_bioclip,
    build_bioclip2,
    build_clip,
    resolve_open_clip_weights,
)
from sst_search.embed.color import ColorPatternEmbedder

DEFAULT_EMBEDDER = "bioclip"


def _build_color_pattern(weights: str | Path | None = None, device=None, **opts) -> ColorPatternEmbedder:
    if weights not in (None, "random", "none"):
        raise EmbedderError(f"color-pattern has no weights; got weights={weights!r}")
    return ColorPatternEmbedder(**opts)


EMBEDDERS: dict[str, Callable[..., TraitEmbedder]] = {
    "bioclip": build_bioclip,
    "bioclip-2": build_bioclip2,
    "clip": build_clip,
    "color-pattern": _build_color_pattern,
}


def list_embedders() -> list[str]:
    return sorted(EMBEDDERS)


def create_embedder(
    name: str = DEFAULT_EMBEDDER, weights: str | Path | None = None, device=None, **opts
) -> TraitEmbedder:
    try:
        factory = EMBEDDERS[name]
    except KeyError:
        raise EmbedderError(f"unknown embedder {name!r}; choose one of {list_embedders()}") from None
    try:
        return factory(weights=weights, device=device, **opts)
    except TypeError as exc:
        raise EmbedderError(f"bad options for embedder {name!r}: {exc}") from exc


__all__ = [
    "DEFAULT_EMBEDDER",
    "EMBEDDERS",
    "ColorPatternEmbedder",
    "EmbedItem",
    "EmbedderError",
    "NoTextTowerError",
    "OpenClipEmbedder",
    "Region",
    "SpecimenVectors",
    "TraitEmbedder",
    "create_embedder",
    "l2_normalize",
    "list_embedders",
    "masked_square_crop",
    "resolve_open_clip_weights",
]
