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
    import torch
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    from .embed import TraitEmbedder
    from .instances import InstanceFinder
    from .labeling import ClickSegmenter
    from .tracking import SSTTracker
    from .weights import ResolvedWeights


#: Seed of random initialisation, so ``--weights random`` runs are reproducible across
#: processes and machines (a Ray worker and the local engine must build the same model, and
#: the official predictor built for a comparison gets the very weights ours has).
RANDOM_INIT_SEED = 0


def build_sam2(
    model: str,
    weights: ResolvedWeights,
    image_size: int | None = None,
    device: str | torch.device | None = None,
    *,
    official: bool = False,
    channels_last: bool = False,
    compile_encoder: bool = False,
) -> SAM2VideoPredictor:
    """The real SAM 2.1 architecture of ``model`` from the registry, with resolved ``weights``.

    By default the predictor is ours (:class:`~sst_search.sam2_predictor.InMemoryVideoPredictor`);
    ``official=True`` builds SAM 2's unmodified ``SAM2VideoPredictor`` from the same config,
    weights and size, which is what the equivalence tests and the benchmarks compare against.
    ``image_size`` overrides the model's 1024 px input (smaller trades accuracy for speed).
    ``channels_last`` (ours only) lays out the image encoder's convolutions channels-last;
    ``compile_encoder`` sets SAM 2's own ``compile_image_encoder`` (``torch.compile``,
    max-autotune), tens of seconds on the first frame of each batch size (``bench/README.md``).
    """
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from .sam2_predictor import InMemoryVideoPredictor, default_device
    from .weights import get_model_spec

    if official and channels_last:
        raise ValueError("channels_last applies to our predictor only")
    spec = get_model_spec(model)
    device = torch.device(device) if device is not None else default_device()
    overrides = [] if official else [
        f"++model._target_={InMemoryVideoPredictor.__module__}.{InMemoryVideoPredictor.__qualname__}"]
    if image_size is not None:
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
        overrides.append(f"++model.image_size={image_size}")
    if compile_encoder:
        overrides.append("++model.compile_image_encoder=true")
    if weights.is_random:
        torch.manual_seed(RANDOM_INIT_SEED)
    predictor = build_sam2_video_predictor(
        spec.config, ckpt_path=str(weights.path) if weights.path else None, device=str(device),
        hydra_overrides_extra=overrides,
    )
    if not _has_sam2_extension():
        # Hole filling needs SAM 2's compiled extension, which pip wheels do not ship;
        # without it SAM 2 warns on every frame and skips the step anyway.
        predictor.fill_hole_area = 0
    if channels_last:
        predictor.set_encoder_memory_format(torch.channels_last)
    return predictor


def _has_sam2_extension() -> bool:
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def build_tracker(
    model: str | None = None, weights: str | Path | None = None, *, batch_traits: bool = True, **settings
) -> SSTTracker:
    """The tracker that ``settings`` (keys of :class:`~sst_search.config.SegmentationConfig`,
    ``None`` meaning "not given") describe, the rest at the config's defaults; see
    :func:`tracker_from_config`."""
    given = {"model": model, "weights": weights, **settings}
    seg = SegmentationConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in given.items() if v is not None})
    return tracker_from_config(seg, batch_traits=batch_traits)


def tracker_from_config(seg: SegmentationConfig, *, batch_traits: bool = True) -> SSTTracker:
    """Resolve the weights, build the real SAM 2.1 video predictor and wrap it for SST: the
    model, weights, size, adapter, chain length and encoder layout a configuration describes.

    ``seg.adapter`` is a fine-tuned adapter file; it must have been trained on this very base
    model (name, weights, image size), otherwise ``AdapterMismatchError`` is raised.
    ``batch_traits=False`` tracks one trait at a time (the reference behaviour of SAM 2).
    """
    from .tracking import SSTTracker
    from .weights import resolve_sam2_weights

    resolved = resolve_sam2_weights(seg.model, seg.weights)
    predictor = build_sam2(seg.model, resolved, image_size=seg.image_size, device=seg.device,
                           channels_last=seg.channels_last, compile_encoder=seg.compile_encoder)
    tracker = SSTTracker(predictor, seg.model, resolved, max_chain_length=seg.max_chain_length,
                         batch_traits=batch_traits)
    if seg.adapter is not None:
        from .finetune import apply_adapter  # fine-tuning pulls in peft; plain tracking does not need it

        apply_adapter(tracker, seg.adapter)
    return tracker


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
