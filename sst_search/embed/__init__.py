"""Trait embedders: one unit vector per (specimen, trait) plus one per whole specimen.

:func:`sst_search.builder.create_embedder` builds one by name (``name``, ``weights``,
``device``, options):

* ``bioclip`` (default): BioCLIP (``hf-hub:imageomics/bioclip``, a ViT-B/16 CLIP trained on
  the Tree of Life); image and text towers.
* ``bioclip-2``: BioCLIP 2 (``hf-hub:imageomics/bioclip-2``, a ViT-L/14 CLIP trained on
  TreeOfLife-200M, 768-dim); image and text towers; about four times BioCLIP's compute.
* ``clip``: any open_clip model and pretrained tag (``model_name="ViT-B-32"``,
  ``pretrained="openai"``); image and text towers.
* ``color-pattern``: weight-free CIELab colour histogram + spatial layout; no text tower.

``weights`` is ``"random"`` (real architecture, random init; recorded as such), a checkpoint
path, or ``None`` for the published weights. Common options: ``image_size`` and
``batch_size`` for the open_clip towers.
"""

from __future__ import annotations

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
    OPEN_CLIP_SPECS,
    OpenClipEmbedder,
    OpenClipSpec,
    open_clip_fingerprint,
)
from sst_search.embed.color import ColorPatternEmbedder

COLOR_PATTERN = "color-pattern"


def list_embedders() -> list[str]:
    return sorted([*OPEN_CLIP_SPECS, COLOR_PATTERN])


__all__ = [
    "COLOR_PATTERN",
    "OPEN_CLIP_SPECS",
    "ColorPatternEmbedder",
    "EmbedItem",
    "EmbedderError",
    "NoTextTowerError",
    "OpenClipEmbedder",
    "OpenClipSpec",
    "Region",
    "SpecimenVectors",
    "TraitEmbedder",
    "l2_normalize",
    "list_embedders",
    "masked_square_crop",
    "open_clip_fingerprint",
]
