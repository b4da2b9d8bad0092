"""Building SAM 2: the one place its registry, hydra overrides and random seed are used.

Ours (:class:`InMemoryVideoPredictor`) and SAM 2's unmodified ``SAM2VideoPredictor`` are built
by the same function from the same config, weights and size, so the equivalence tests and the
benchmarks compare against exactly the model SST runs. Weights come resolved and verified
(:mod:`sst_search.weights`); nothing here finds or downloads them.
"""

from __future__ import annotations

import torch
from sam2.build_sam import build_sam2_video_predictor
from sam2.sam2_video_predictor import SAM2VideoPredictor

from ..weights import ResolvedWeights, get_model_spec
from .frames import default_device
from .predictor import InMemoryVideoPredictor

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
