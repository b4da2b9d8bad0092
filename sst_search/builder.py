"""Every model is built here, from configuration, and nowhere else.

Like SAM 2's ``build_sam.py``: the indexer, the search engine, the CLI and the benchmarks
ask this module for a tracker or an embedder, so a setting (an adapter, the chain length,
an open_clip model name) cannot reach one caller and be forgotten by another. Predictor
and embedder classes never find or load weights themselves.

Heavy libraries (torch, SAM 2, open_clip) are imported inside the functions so that
importing the library, or starting the CLI, stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .config import EmbeddingConfig, InstancesConfig, SegmentationConfig

if TYPE_CHECKING:
    from .embed import TraitEmbedder
    from .instances import InstanceFinder
    from .labeling import ClickSegmenter
    from .tracking import SSTTracker


def build_tracker(
    model: str = "sam2.1-hiera-tiny",
    weights: str | Path | None = None,
    image_size: int | None = None,
    device: str | None = None,
    allow_download: bool | None = None,
    max_chain_length: int = 256,
    adapter: str | Path | None = None,
    batch_traits: bool = True,
    channels_last: bool = False,
    compile_encoder: bool = False,
) -> SSTTracker:
    """Resolve weights, build the real SAM 2.1 video predictor and wrap it for SST.

    ``adapter`` is a fine-tuned adapter file; it must have been trained on this very base
    model (name, weights, image size), otherwise ``AdapterMismatchError`` is raised.
    ``batch_traits=False`` tracks one trait at a time (the reference behaviour of SAM 2).
    ``channels_last`` lays out the image encoder's convolutions channels-last (same masks;
    faster or not depending on the machine, see ``bench/README.md``); ``compile_encoder``
    compiles it with SAM 2's own ``compile_image_encoder`` (same masks but for float ties).
    """
    from .sam2_predictor import build_predictor
    from .tracking import SSTTracker
    from .weights import resolve_sam2_weights

    resolved = resolve_sam2_weights(model, weights, allow_download=allow_download)
    predictor = build_predictor(model, resolved, image_size=image_size, device=device, channels_last=channels_last,
                                compile_encoder=compile_encoder)
    tracker = SSTTracker(predictor, model, resolved, max_chain_length=max_chain_length, batch_traits=batch_traits)
    if adapter is not None:
        from .finetune import apply_adapter  # fine-tuning pulls in peft; plain tracking does not need it

        apply_adapter(tracker, adapter)
    return tracker


def tracker_from_config(seg: SegmentationConfig) -> SSTTracker:
    """The tracker a run configuration describes (model, weights, size, adapter, chain length,
    encoder memory layout)."""
    return build_tracker(
        seg.model, seg.weights, image_size=seg.image_size, device=seg.device,
        max_chain_length=seg.max_chain_length, adapter=seg.adapter, channels_last=seg.channels_last,
        compile_encoder=seg.compile_encoder,
    )


def embedder_from_config(emb: EmbeddingConfig) -> TraitEmbedder:
    """The embedder a run configuration describes; unset open_clip options keep the embedder's defaults."""
    from .embed import create_embedder

    opts = {k: v for k, v in (("model_name", emb.model_name), ("pretrained", emb.pretrained)) if v is not None}
    return create_embedder(emb.embedder, weights=emb.weights, **opts)


def build_instance_finder(tracker: SSTTracker, config: InstancesConfig | None = None) -> InstanceFinder:
    """Instance finding (``--instances``) on the tracker's own SAM 2: its automatic mask
    generator and tracking share the model, the checkpoint and each photo's encoder pass."""
    from .instances import InstanceFinder

    return InstanceFinder(tracker.predictor, config)


def build_click_segmenter(tracker: SSTTracker) -> ClickSegmenter:
    """SAM 2's point/box image predictor for labeling by clicking, over the tracker's own model:
    the same checkpoint and input size as the index, and no second copy in memory."""
    from .labeling import ClickSegmenter

    return ClickSegmenter(tracker)
