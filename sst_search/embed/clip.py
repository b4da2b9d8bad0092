"""Image(-text) towers from open_clip: BioCLIP, BioCLIP 2 and any CLIP model open_clip knows.

Weights resolve in one place (:func:`resolve_open_clip_weights`) so every embedder records
exactly which checkpoint produced its vectors: ``"random"`` builds the real architecture
with random initialisation (tests, smoke runs), a path loads that file, and ``None`` takes
the model's published weights from the Hugging Face cache, downloading them when online.
An offline miss becomes an :class:`EmbedderError` that says what to pass instead, and it
fails at once: the cache lookup never touches the network when ``HF_HUB_OFFLINE`` is set.

Checksums: a file from the hub is checked against the sha256 the hub published for it (the
Git LFS object id, which huggingface_hub names the cached file by), so a truncated or
altered download is refused instead of silently producing other vectors; a model with a
digest pinned here (:data:`PINNED_SHA256`) must match that pin as well.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from sst_search.embed.base import EmbedderError, Region, TraitEmbedder, crop_box, l2_normalize, masked_square_crop
from sst_search.weights import RANDOM, sha256_file

BIOCLIP_HUB_ID = "imageomics/bioclip"
#: BioCLIP is a ViT-B/16 CLIP; its hub config equals open_clip's built-in one, so the
#: architecture (and the default CLIP tokenizer) are available without the network.
BIOCLIP_ARCH = "ViT-B-16"
#: BioCLIP 2 (Gu et al. 2025, arXiv:2505.23883) continues LAION-2B's ViT-L/14 CLIP on
#: TreeOfLife-200M: open_clip's built-in ViT-L-14 (768-dim, GELU, 224 px), the CLIP tokenizer.
BIOCLIP2_HUB_ID = "imageomics/bioclip-2"
BIOCLIP2_ARCH = "ViT-L-14"
#: sha256 of a hub checkpoint known here, by hub id. Neither BioCLIP's nor BioCLIP 2's digest
#: could be read from a public source this code was written against (the hub shows it only
#: on the file's page), so they are not pinned: inventing one would refuse the real file.
#: The hub's own digest is checked on every load (:func:`_verify_hub_file`), and every
#: index records the sha256 of the weights its vectors came from.
PINNED_SHA256: dict[str, str] = {}


@dataclass(frozen=True)
class ResolvedCheckpoint:
    path: Path | None
    sha256: str
    source: str


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it per call instead.
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=None)
def _hub_unreachable(endpoint: str, timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (None when it can), asked once per process:
    huggingface_hub would otherwise retry every file for most of a minute, logging each try."""
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"{parsed.hostname}:{port} is unreachable ({exc.strerror or type(exc).__name__})"
    return None


def _hub_checkpoint(repo_id: str, filename: str | None = None) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    offline = _offline()
    unreachable = None if offline else _hub_unreachable(constants.ENDPOINT)
    offline = offline or unreachable is not None  # the cache may still hold the file
    for name in names:
        try:
            return Path(hf_hub_download(repo_id=repo_id, filename=name, local_files_only=offline))
        except Exception as exc:  # noqa: BLE001 - every hub failure means "not available"
            last = exc
    if unreachable:
        reason = f"not in the Hugging Face cache and {unreachable}"
    elif offline:
        reason = "not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    else:
        reason = f"{type(last).__name__}: {last}"
    raise FileNotFoundError(f"none of {names} could be loaded ({reason})")


def resolve_open_clip_weights(
    label: str, weights: str | Path | None, hub_id: str | None = None, pretrained_tag: str | None = None,
    arch: str | None = None,
) -> ResolvedCheckpoint:
    """Find the checkpoint for an open_clip model; see the module docstring for the rules.

    ``hub_id`` follows open_clip's pretrained-config convention: ``org/repo/`` for the
    repository's default open_clip weights file, ``org/repo/file`` for a named file.
    """
    if weights is not None and str(weights) == RANDOM:
        return ResolvedCheckpoint(None, RANDOM, RANDOM)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise EmbedderError(f"{path}: {label} checkpoint does not exist")
        return ResolvedCheckpoint(path, sha256_file(path), str(path))
    if hub_id is None and pretrained_tag is not None:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(arch, pretrained_tag)
        if not cfg:
            raise EmbedderError(
                f"open_clip has no pretrained tag {pretrained_tag!r} for {arch}; "
                f"known tags: {open_clip.list_pretrained_tags_by_model(arch)}"
            )
        hub_id = cfg.get("hf_hub") or None
        url = cfg.get("url") or None
    else:
        url = None
    where = f"https://huggingface.co/{hub_id.rstrip('/')}" if hub_id else url
    try:
        if hub_id:
            repo_id, filename = os.path.split(hub_id)
            path = _hub_checkpoint(repo_id, filename or None)
        elif url and not _offline():
            from open_clip.pretrained import download_pretrained_from_url

            path = Path(download_pretrained_from_url(url))
        else:
            raise FileNotFoundError("offline (HF_HUB_OFFLINE is set) and the file is not cached")
    except Exception as exc:  # noqa: BLE001
        raise EmbedderError(
            f"{label} weights are not available ({where}): {exc}. Download them while online "
            f"(they are cached by huggingface_hub), or pass --embedder-weights PATH to a checkpoint "
            f"file, or use the weight-free --embedder color-pattern (--embedder-weights random: smoke tests only)"
        ) from None
    digest = sha256_file(path)
    _verify_hub_file(label, path, digest, PINNED_SHA256.get(hub_id.rstrip("/")) if hub_id else None)
    return ResolvedCheckpoint(path, digest, where)


def _verify_hub_file(label: str, path: Path, digest: str, pinned: str | None) -> None:
    """Refuse a cached hub file whose bytes are not what the hub published (its cache blob is
    named by the LFS sha256) or not the pinned digest."""
    published = Path(path).resolve().name
    expected = [d for d in (pinned, published if re.fullmatch(r"[0-9a-f]{64}", published) else None) if d]
    for want in expected:
        if digest != want:
            raise EmbedderError(f"{path}: {label} checkpoint has sha256 {digest}, expected {want}; the download is "
                                "corrupt or altered: delete it from the Hugging Face cache and download it again")


def _normalize_mean(preprocess) -> Sequence[float]:
    from torchvision.transforms import Normalize

    for t in getattr(preprocess, "transforms", []):
        if isinstance(t, Normalize):
            return t.mean
    raise EmbedderError("open_clip preprocessing has no Normalize step to take the fill colour from")


class OpenClipEmbedder(TraitEmbedder):
    """Any open_clip model as a trait embedder: masked trait crops through the image tower."""

    def __init__(
        self,
        name: str,
        arch: str,
        checkpoint: ResolvedCheckpoint,
        pretrained: str | None,
        device: str | torch.device | None = None,
        image_size: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        import open_clip

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        kwargs: dict = {}
        if pretrained and checkpoint.sha256 != RANDOM:
            # A tag's preprocessing (mean/std, interpolation) and activation are part of the model.
            cfg = open_clip.get_pretrained_cfg(arch, pretrained) or {}
            kwargs.update({k: cfg[k] for k in ("image_mean", "image_std", "image_interpolation", "image_resize_mode") if k in cfg})
            kwargs["force_quick_gelu"] = bool(cfg.get("quick_gelu", False))
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch,
                pretrained=str(checkpoint.path) if checkpoint.path else None,
                device=self.device,
                force_image_size=image_size,
                pretrained_text=False,
                **kwargs,
            )
        except Exception as exc:  # noqa: BLE001
            raise EmbedderError(f"could not build open_clip model {arch} from {checkpoint.source}: {exc}") from exc
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.fill = tuple(int(round(255 * m)) for m in _normalize_mean(preprocess))
        # Crops of many specimens share a forward pass; a GPU wants far larger batches than a CPU.
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 16)
        self.name = name
        self.dim = int(open_clip.get_model_config(arch)["embed_dim"])
        self.fingerprint = {
            "embedder": name,
            "model": arch,
            "pretrained": pretrained,
            "weights": checkpoint.sha256,
            "weights_source": checkpoint.source,
            "image_size": list(model.visual.image_size) if isinstance(model.visual.image_size, tuple)
            else model.visual.image_size,
            "fill": list(self.fill),
        }

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


def build_bioclip(weights: str | Path | None = None, device=None, **opts) -> OpenClipEmbedder:
    checkpoint = resolve_open_clip_weights("BioCLIP", weights, hub_id=BIOCLIP_HUB_ID + "/")
    return OpenClipEmbedder("bioclip", BIOCLIP_ARCH, checkpoint, pretrained=f"hf-hub:{BIOCLIP_HUB_ID}", device=device, **opts)


def build_bioclip2(weights: str | Path | None = None, device=None, **opts) -> OpenClipEmbedder:
    """BioCLIP 2: ViT-L/14, 768-dim vectors, text queries through its own text tower. About four
    times BioCLIP's compute per crop (see README for CPU figures)."""
    checkpoint = resolve_open_clip_weights("BioCLIP 2", weights, hub_id=BIOCLIP2_HUB_ID + "/")
    return OpenClipEmbedder("bioclip-2", BIOCLIP2_ARCH, checkpoint, pretrained=f"hf-hub:{BIOCLIP2_HUB_ID}",
                            device=device, **opts)


def build_clip(
    weights: str | Path | None = None,
    device=None,
    model_name: str = "ViT-B-32",
    pretrained: str | None = "openai",
    **opts,
) -> OpenClipEmbedder:
    """``pretrained`` names the open_clip tag whose weights ``weights=None`` loads; with an
    explicit checkpoint or ``"random"`` it only labels the vectors (``None`` for no tag)."""
    import open_clip

    if model_name not in open_clip.list_models():
        raise EmbedderError(f"open_clip has no model {model_name!r}; see open_clip.list_models()")
    if weights is None and not pretrained:
        raise EmbedderError(f"CLIP {model_name}: pass a pretrained tag, a checkpoint path or weights='random'")
    label = f"CLIP {model_name} ({pretrained or 'no tag'})"
    checkpoint = resolve_open_clip_weights(label, weights, pretrained_tag=pretrained, arch=model_name)
    name = f"clip-{model_name}" + (f"-{pretrained}" if pretrained else "")
    return OpenClipEmbedder(name, model_name, checkpoint, pretrained, device=device, **opts)
