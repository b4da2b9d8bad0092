"""Every model is built here, from configuration, and nowhere else.

Like SAM 2's ``build_sam.py`` and open_clip's ``create_model``: the indexer, the search
engine, the CLI and the benchmarks ask this module for a tracker or an embedder, so a
setting (an adapter, the chain length, an open_clip model name) cannot reach one caller and
be forgotten by another. SAM 2 itself, ours or the official predictor a comparison needs, is
constructed by :func:`sst_search.sam2_predictor.build_sam2`, behind the SAM 2 boundary.
Weights are resolved and verified by :mod:`sst_search.weights`; predictor and embedder
classes are handed built models and never find or load weights themselves.

Heavy libraries (torch, SAM 2, open_clip) are imported inside the functions so that
importing the library, or starting the CLI, stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .config import EmbeddingConfig, InstancesConfig, SegmentationConfig

if TYPE_CHECKING:
    import torch

    from .embed import OpenClipSpec, TraitEmbedder
    from .instance_finding import InstanceFinder
    from .labeling import ClickSegmenter
    from .tracking import SSTTracker
    from .weights import ResolvedWeights


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
    from .sam2_predictor import build_sam2
    from .tracking import SSTTracker
    from .weights import resolve_sam2_weights

    resolved = resolve_sam2_weights(seg.model, seg.weights)
    predictor = build_sam2(seg.model, resolved, image_size=seg.image_size, device=seg.device,
                           channels_last=seg.channels_last, compile_encoder=seg.compile_encoder)
    tracker = SSTTracker(predictor, seg.model, resolved, max_chain_length=seg.max_chain_length,
                         batch_traits=batch_traits)
    if seg.adapter is not None:
        from .finetune import (
            apply_adapter,  # fine-tuning pulls in peft; plain tracking does not need it
        )

        apply_adapter(tracker, seg.adapter)
    return tracker


#: Options that shape how an open_clip model is built rather than which model it is.
_OPEN_CLIP_BUILD_OPTIONS = ("image_size", "batch_size")


def create_embedder(
    name: str | None = None, weights: str | Path | None = None, device: str | torch.device | None = None, **opts
) -> TraitEmbedder:
    """The trait embedder ``name`` (see :mod:`sst_search.embed`; default: the config's), built as
    open_clip's ``create_model`` builds a model: weights resolved and verified by
    :mod:`sst_search.weights`, the model built, then handed to the embedder class.
    ``opts``: ``model_name``/``pretrained`` choose a ``clip`` model, ``image_size``/``batch_size``
    how an open_clip model runs, the descriptor's parameters for ``color-pattern``."""
    from .embed import COLOR_PATTERN, ColorPatternEmbedder, EmbedderError

    name = name or EmbeddingConfig.model_fields["embedder"].default
    if name == COLOR_PATTERN:
        if weights not in (None, "random", "none"):
            raise EmbedderError(f"color-pattern has no weights; got weights={weights!r}")
        try:
            return ColorPatternEmbedder(**opts)
        except TypeError as exc:
            raise EmbedderError(f"bad options for embedder {name!r}: {exc}") from exc
    build = {key: opts.pop(key) for key in _OPEN_CLIP_BUILD_OPTIONS if key in opts}
    spec = _open_clip_spec(name, weights, opts)
    return build_open_clip_embedder(spec, spec.resolve(weights), device=device, **build)


def _open_clip_spec(name: str, weights: str | Path | None, opts: dict):
    from .embed import OPEN_CLIP_SPECS, EmbedderError, list_embedders

    try:
        factory = OPEN_CLIP_SPECS[name]
    except KeyError:
        raise EmbedderError(f"unknown embedder {name!r}; choose one of {list_embedders()}") from None
    try:
        return factory(weights=weights, **opts)
    except TypeError as exc:
        raise EmbedderError(f"bad options for embedder {name!r}: {exc}") from exc


def build_open_clip_embedder(spec: OpenClipSpec, weights: ResolvedWeights, device: str | torch.device | None = None,
                             image_size: int | None = None, batch_size: int | None = None) -> TraitEmbedder:
    """open_clip's model, preprocessing and tokenizer for ``spec`` from resolved ``weights``,
    handed to :class:`~sst_search.embed.OpenClipEmbedder` with the fingerprint that describes them."""
    import open_clip
    import torch

    from .embed import EmbedderError, OpenClipEmbedder, open_clip_fingerprint
    from .embed.clip import check_fingerprint

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fingerprint = open_clip_fingerprint(spec, weights, image_size)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.arch, pretrained=str(weights.path) if weights.path else None, device=device,
            force_image_size=image_size, pretrained_text=False, **spec.preprocess_options(weights),
        )
    except Exception as exc:  # noqa: BLE001
        raise EmbedderError(f"could not build open_clip model {spec.arch} from {weights.source}: {exc}") from exc
    check_fingerprint(fingerprint, model, preprocess)
    return OpenClipEmbedder(model, preprocess, open_clip.get_tokenizer(spec.arch), fingerprint, device, batch_size)


def _embedder_options(emb: EmbeddingConfig) -> dict:
    """The open_clip options a configuration sets; unset ones keep the embedder's defaults."""
    return {k: v for k, v in (("model_name", emb.model_name), ("pretrained", emb.pretrained)) if v is not None}


def embedder_from_config(emb: EmbeddingConfig) -> TraitEmbedder:
    """The embedder a run configuration describes."""
    return create_embedder(emb.embedder, weights=emb.weights, **_embedder_options(emb))


def embedder_fingerprint(emb: EmbeddingConfig) -> dict:
    """The fingerprint of the embedder ``emb`` describes, equal to its built embedder's, without
    building a model: what an index plans with (weights are resolved and hashed, not loaded)."""
    from .embed import COLOR_PATTERN, open_clip_fingerprint

    if emb.embedder == COLOR_PATTERN:
        return embedder_from_config(emb).fingerprint  # no model: a descriptor of a few lookup tables
    spec = _open_clip_spec(emb.embedder, emb.weights, _embedder_options(emb))
    return open_clip_fingerprint(spec, spec.resolve(emb.weights))


def build_instance_finder(tracker: SSTTracker, config: InstancesConfig | None = None) -> InstanceFinder:
    """Instance finding (``--instances``) on the tracker's own SAM 2: its automatic mask
    generator and tracking share the model, the checkpoint and each photo's encoder pass."""
    from .instance_finding import InstanceFinder

    return InstanceFinder(tracker.predictor, config)


def build_click_segmenter(tracker: SSTTracker) -> ClickSegmenter:
    """SAM 2's point/box image predictor for labeling by clicking, over the tracker's own model:
    the same checkpoint and input size as the index, and no second copy in memory."""
    from .labeling import ClickSegmenter

    return ClickSegmenter(tracker)
