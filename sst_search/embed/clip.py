"""Image(-text) towers from open_clip as trait embedders: BioCLIP, BioCLIP 2 and any CLIP model
open_clip knows.

This module describes the models (:class:`OpenClipSpec`) and what their vectors depend on
(:func:`open_clip_fingerprint`), and turns a built model into a trait embedder
(:class:`OpenClipEmbedder`). It never finds or loads weights: :mod:`sst_search.builder`
resolves and verifies them (:func:`sst_search.weights.resolve_open_clip_weights`), has open_clip
build the model and hands it over, as ``open_clip.create_model`` hands a model to its callers.
The fingerprint comes from open_clip's configs, not from a model, so an index job can plan
with it without building one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from sst_search.embed.base import (
    EmbedderError,
    Region,
    TraitEmbedder,
    crop_box,
    l2_normalize,
    masked_square_crop,
)
from sst_search.weights import ResolvedWeights, resolve_open_clip_weights

if TYPE_CHECKING:
    from open_clip import CLIP

#: BioCLIP is a ViT-B/16 CLIP; its hub config equals open_clip's built-in one, so the
#: architecture (and the default CLIP tokenizer) are available without the network.
BIOCLIP_HUB_ID = "imageomics/bioclip"
BIOCLIP_ARCH = "ViT-B-16"
#: BioCLIP 2 (Gu et al. 2025, arXiv:2505.23883) continues LAION-2B's ViT-L/14 CLIP on
#: TreeOfLife-200M: open_clip's built-in ViT-L-14 (768-dim, GELU, 224 px), the CLIP tokenizer.
BIOCLIP2_HUB_ID = "imageomics/bioclip-2"
BIOCLIP2_ARCH = "ViT-L-14"


@dataclass(frozen=True)
class OpenClipSpec:
    """One open_clip model as an embedder: the name its vectors are stored under, open_clip's
    architecture, the pretrained tag (or ``hf-hub:`` label) the vectors are labelled with, the
    model's name in messages, and the hub repository its published weights come from (None:
    open_clip's pretrained tag says where)."""

    name: str
    arch: str
    pretrained: str | None
    label: str
    hub_id: str | None = None

    def resolve(self, weights: str | Path | None) -> ResolvedWeights:
        """This model's checkpoint: ``"random"``, a path, or (None) its published weights."""
        return resolve_open_clip_weights(self.label, weights, hub_id=self.hub_id,
                                         pretrained_tag=None if self.hub_id else self.pretrained, arch=self.arch)

    def preprocess_options(self, weights: ResolvedWeights) -> dict:
        """``open_clip.create_model_and_transforms`` options beyond the architecture: a tag's
        preprocessing (mean/std, interpolation) and activation are part of the trained model."""
        if not self.pretrained or weights.is_random:
            return {}
        import open_clip

        cfg = open_clip.get_pretrained_cfg(self.arch, self.pretrained) or {}
        options = {k: cfg[k] for k in ("image_mean", "image_std", "image_interpolation", "image_resize_mode") if k in cfg}
        options["force_quick_gelu"] = bool(cfg.get("quick_gelu", False))
        return options


def bioclip_spec() -> OpenClipSpec:
    return OpenClipSpec("bioclip", BIOCLIP_ARCH, f"hf-hub:{BIOCLIP_HUB_ID}", "BioCLIP", BIOCLIP_HUB_ID + "/")


def bioclip2_spec() -> OpenClipSpec:
    """BioCLIP 2: ViT-L/14, 768-dim vectors, text queries through its own text tower. About four
    times BioCLIP's compute per crop (see README for CPU figures)."""
    return OpenClipSpec("bioclip-2", BIOCLIP2_ARCH, f"hf-hub:{BIOCLIP2_HUB_ID}", "BioCLIP 2", BIOCLIP2_HUB_ID + "/")


def clip_spec(weights: str | Path | None = None, model_name: str = "ViT-B-32", pretrained: str | None = "openai") -> OpenClipSpec:
    """``pretrained`` names the open_clip tag whose weights ``weights=None`` loads; with an
    explicit checkpoint or ``"random"`` it only labels the vectors (``None`` for no tag)."""
    import open_clip

    if model_name not in open_clip.list_models():
        raise EmbedderError(f"open_clip has no model {model_name!r}; see open_clip.list_models()")
    if weights is None and not pretrained:
        raise EmbedderError(f"CLIP {model_name}: pass a pretrained tag, a checkpoint path or weights='random'")
    name = f"clip-{model_name}" + (f"-{pretrained}" if pretrained else "")
    return OpenClipSpec(name, model_name, pretrained, f"CLIP {model_name} ({pretrained or 'no tag'})")


#: The open_clip embedders by name; each takes the weights and the options that choose the model.
OPEN_CLIP_SPECS: dict[str, Callable[..., OpenClipSpec]] = {
    "bioclip": lambda weights=None: bioclip_spec(),
    "bioclip-2": lambda weights=None: bioclip2_spec(),
    "clip": clip_spec,
}


def open_clip_fingerprint(spec: OpenClipSpec, weights: ResolvedWeights, image_size: int | None = None) -> dict:
    """What produced an open_clip embedder's vectors: model, tag, weights sha256 and source, the
    input size and the fill colour of off-trait pixels (the preprocessing mean).

    Read from open_clip's configs the way ``create_model_and_transforms`` reads them for a
    built-in architecture with a checkpoint file, so it needs no model;
    :func:`check_fingerprint` holds a built model to it.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg

    vision = open_clip.get_model_config(spec.arch)["vision_cfg"]
    size = image_size or vision["image_size"]
    # open_clip's ResNet tower keeps the size as given; its ViT and timm towers make it (h, w).
    resnet = isinstance(vision.get("layers"), (list, tuple)) and not vision.get("timm_model_name")
    mean = spec.preprocess_options(weights).get("image_mean") or PreprocessCfg.mean
    return {
        "embedder": spec.name,
        "model": spec.arch,
        "pretrained": spec.pretrained,
        "weights": weights.sha256,
        "weights_source": weights.source,
        "image_size": size if resnet else [size, size] if isinstance(size, int) else list(size),
        "fill": list(_fill(mean)),
    }


def check_fingerprint(fingerprint: dict, model: CLIP, preprocess) -> None:
    """Refuse a built model whose input size or preprocessing is not what its fingerprint says
    (an open_clip whose configs are read differently): the index would misdescribe its vectors."""
    size = model.visual.image_size
    built = {"image_size": list(size) if isinstance(size, tuple) else size, "fill": list(_fill(_normalize_mean(preprocess)))}
    stated = {key: fingerprint[key] for key in built}
    if built != stated:
        raise EmbedderError(f"open_clip built {fingerprint['model']} with {built}, but its fingerprint says {stated}")


def _fill(mean: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(round(255 * m)) for m in mean)


def _normalize_mean(preprocess) -> Sequence[float]:
    from torchvision.transforms import Normalize

    for t in getattr(preprocess, "transforms", []):
        if isinstance(t, Normalize):
            return t.mean
    raise EmbedderError("open_clip preprocessing has no Normalize step to take the fill colour from")


class OpenClipEmbedder(TraitEmbedder):
    """A built open_clip model as a trait embedder: masked trait crops through the image tower,
    text queries through the text tower."""

    def __init__(
        self,
        model: CLIP,
        preprocess,
        tokenizer,
        fingerprint: dict,
        device: torch.device,
        batch_size: int | None = None,
    ) -> None:
        import open_clip

        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.fill = _fill(_normalize_mean(preprocess))
        # Crops of many specimens share a forward pass; a GPU wants far larger batches than a CPU.
        self.batch_size = batch_size or (64 if device.type == "cuda" else 16)
        self.name = fingerprint["embedder"]
        self.dim = int(open_clip.get_model_config(fingerprint["model"])["embed_dim"])
        self.fingerprint = fingerprint

    @torch.inference_mode()
    def _embed_regions(self, regions: Sequence[Region]) -> np.ndarray:
        if self.device.type == "cuda":
            batch = self.crops_on_device(regions)
        else:
            crops = [masked_square_crop(r.image, r.mask, self.fill) for r in regions]
            batch = torch.stack([self.preprocess(Image.fromarray(c)) for c in crops]).to(self.device)
        return self.model.encode_image(batch).float().cpu().numpy()

    @torch.inference_mode()
    def crops_on_device(self, regions: Sequence[Region]) -> torch.Tensor:
        """The image tower's input batch, made on the model's device: each image goes up once
        and its crops are cut, filled, padded square and resized there, instead of one PIL
        resize per crop on the CPU while the GPU waits. The same crops as
        :func:`masked_square_crop` and the preprocessing's resize (with antialiasing, as
        PIL's) and normalisation, rounded to whole grey levels as PIL is; within a grey level
        or two of the CPU path, which CPU runs keep."""
        size, mode, mean, std = self._input_transform()
        fill = torch.tensor(self.fill, dtype=torch.uint8, device=self.device)
        uploaded: dict[int, torch.Tensor] = {}
        batch = []
        for r in regions:
            if id(r.image) not in uploaded:
                uploaded[id(r.image)] = torch.from_numpy(np.ascontiguousarray(r.image)).to(self.device, non_blocking=True)
            crop = uploaded[id(r.image)]
            if r.mask is not None:
                x0, y0, x1, y1 = crop_box(r.mask)
                inside = torch.from_numpy(np.ascontiguousarray(r.mask[y0:y1, x0:x1])).to(self.device, non_blocking=True)
                crop = torch.where(inside[..., None], crop[y0:y1, x0:x1], fill)
            h, w = crop.shape[:2]
            side = max(h, w)
            square = fill.expand(side, side, 3).clone()
            square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = crop
            batch.append(_resize_like_pil(square.permute(2, 0, 1)[None].float(), size, mode))
        return (torch.cat(batch) / 255 - mean) / std

    def _input_transform(self) -> tuple[int, str, torch.Tensor, torch.Tensor]:
        """The preprocessing's output size, resize interpolation, mean and std (crops are
        square, so its centre crop and resize modes all come down to one resize)."""
        size = self.model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        mode, mean, std = "bicubic", None, None
        for t in getattr(self.preprocess, "transforms", []):
            if hasattr(t, "interpolation"):
                mode = getattr(t.interpolation, "value", str(t.interpolation))
            if hasattr(t, "mean") and hasattr(t, "std"):
                mean, std = t.mean, t.std
        if mean is None:
            raise EmbedderError("open_clip preprocessing has no Normalize step")
        mean_std = torch.tensor([list(mean), list(std)], dtype=torch.float32, device=self.device).view(2, 1, 3, 1, 1)
        return int(size), mode, mean_std[0], mean_std[1]

    @torch.inference_mode()
    def embed_text(self, text: str | Sequence[str]) -> np.ndarray:
        texts = [text] if isinstance(text, str) else list(text)
        tokens = self.tokenizer(texts).to(self.device)
        vectors = l2_normalize(self.model.encode_text(tokens).float().cpu().numpy())
        return vectors[0] if isinstance(text, str) else vectors


def _resize_like_pil(batch: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """``(n, c, h, w)`` float grey levels resized to ``size`` x ``size`` as PIL resizes 8-bit
    images: the width first, then the height, each pass rounded and clipped to whole grey
    levels (one 2-D pass differs from PIL by up to 18 levels where a cubic overshoots)."""
    kwargs = {"mode": mode} if mode == "nearest" else {"mode": mode, "align_corners": False,
                                                       "antialias": mode in ("bilinear", "bicubic")}
    batch = torch.nn.functional.interpolate(batch, size=(batch.shape[2], size), **kwargs).clamp_(0, 255).round_()
    return torch.nn.functional.interpolate(batch, size=(size, size), **kwargs).clamp_(0, 255).round_()
