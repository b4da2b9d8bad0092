"""One-shot cycle-consistent fine-tuning (OC-CCL) of the SAM 2 tracker.

Only one labeled image exists per species, so the supervision is the round trip: track the
support's traits onto an unlabeled query of the same group, track that prediction back
onto the support with fresh memory, and compare with the support's own mask (see
:mod:`.roundtrip`). Each step takes one query; traits ride along SAM 2's batch dimension.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from ..config import FinetuneConfig
from ..references import Support
from ..sam2_predictor import autocast
from .adapter import prepare_trainable
from .roundtrip import (
    cycle_loss,
    encode_backbone,
    frame_features,
    resize_masks,
    round_trip,
)


@dataclass
class FinetuneResult:
    """Per-step losses (the terms of :func:`~.roundtrip.cycle_loss`) and run facts."""

    history: list[dict[str, float]] = field(default_factory=list)
    trainable_parameters: int = 0
    seconds: float = 0.0


def augmenter(seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Query-side augmentation: flip, scale and colour jitter, from a private seeded RNG.

    Only the unlabeled query is changed, so no mask has to follow the geometry. Pixels
    uncovered by shrinking are filled with the image's border colour (specimen photos have
    plain backgrounds; black corners would be a cue that real queries never show).
    """
    generator = torch.Generator().manual_seed(seed)

    def apply(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        fill = [int(v) for v in np.median(border, axis=0)]
        transform = v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomAffine(degrees=0, scale=(0.85, 1.15), fill=fill),
                v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
            ]
        )
        # torchvision draws from the global RNG; fork it so augmentation is reproducible
        # on its own and leaves callers' random state untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            out = transform(x)
        return out.permute(1, 2, 0).numpy().copy()

    return apply


def finetune(
    tracker,
    support: Support,
    queries: Sequence[np.ndarray],
    config: FinetuneConfig | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> FinetuneResult:
    """Fine-tune ``tracker`` (an ``SSTTracker``) in place with the cycle loss.

    ``queries`` are unlabeled RGB images of the support's group. The tracker's model gains
    the adapter; save it with :func:`~.adapter.save_adapter`. Results are deterministic on
    CPU for a given seed.
    """
    config = config or FinetuneConfig()
    if not queries:
        raise ValueError("fine-tuning needs at least one unlabeled query image")
    model = tracker.predictor
    torch.manual_seed(config.seed)  # LoRA's random A matrices
    params = prepare_trainable(tracker, config.kind, config.lora_rank, config.lora_alpha)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    rng = np.random.default_rng(config.seed)
    augment = augmenter(config.seed) if config.augment else None
    # SAM 2 squashes every frame to S x S anyway; doing it once up front makes augmenting
    # full-resolution photos cheap and gives the encoder exactly the pixels it would see.
    size = (model.image_size, model.image_size)
    queries = [np.array(Image.fromarray(q).resize(size, Image.BICUBIC)) for q in queries]

    trait_ids = support.trait_ids
    target = resize_masks(np.stack([support.mask == t for t in trait_ids]), model.image_size, model.device)
    support_frame = frame_features(model, encode_backbone(model, support.image), len(trait_ids))

    result = FinetuneResult(trainable_parameters=sum(p.numel() for p in params))
    start = time.perf_counter()
    order: list[int] = []
    for step in range(config.steps):
        if not order:  # every query once per epoch, in a seeded order
            order = rng.permutation(len(queries)).tolist()
        image = queries[order.pop()]
        if augment is not None:
            image = augment(image)
        query_frame = frame_features(model, encode_backbone(model, image), len(trait_ids))
        with autocast(model.device):
            out = round_trip(model, support_frame, target, query_frame)
        losses = cycle_loss(out, target, config.iou_weight, config.object_weight)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        schedule.step()
        record = {k: float(v.detach()) for k, v in losses.items()}
        result.history.append(record)
        if on_step is not None:
            on_step(step, record)
    result.seconds = time.perf_counter() - start
    return result
