"""SST's boundary with SAM 2: the one package that knows SAM 2's internals.

SAM 2's video predictor keeps its working state in a dict (the inference state: objects,
per-object outputs, cached features) and does its work in private methods, and both may
change with any SAM 2 release. SST needs more than the public API offers (frames from
memory, support memory reused across queries, queries in batches, a differentiable round
trip), so everything that reads that state, calls those methods or imports ``sam2`` lives
in this package, behind the names below. Tracking, instance finding, labeling and
fine-tuning use only these; ``tests/test_sam2_boundary.py`` fails when a module outside
touches SAM 2's internals, and ``tests/test_sam2_equivalence.py`` checks that what this
package computes equals the official predictor, so a SAM 2 upgrade is checked and fixed
here alone.

Building
    :func:`build_sam2` the SAM 2.1 architecture with resolved weights, as our
    :class:`InMemoryVideoPredictor` or as SAM 2's official predictor (for comparisons);
    :data:`RANDOM_INIT_SEED`, :func:`default_device`.
Frames
    :func:`encode_images` / :func:`encode_resized` run the image encoder once over a batch
    and give :class:`EncodedFrame` objects, reused by everything below;
    :func:`resize_for_model` is the CPU half of SAM 2's loader (for preparing threads),
    :func:`preprocess` all of it;
    :func:`autocast` is SAM 2's precision on the device.
Tracking
    :class:`TrackingSession` adds support masks, encodes their memory once and tracks
    frames from it (pairwise batches or a chain); :class:`FrameOutput` is one tracked frame.
Prompts
    :class:`MaskProposer` (automatic masks) and :func:`image_predictor` (points and boxes)
    on the tracker's own model.
Fine-tuning
    :func:`encode_backbone`, :func:`frame_features`, :func:`resize_masks`,
    :func:`condition` and :func:`track`: the two steps of inference with autograd kept;
    :data:`ADAPTABLE_MODULES` and :data:`IMAGE_FEATURE_PARAMETERS` say which parameters an
    adapter may change without touching cached image features.
"""

from .build import RANDOM_INIT_SEED, build_sam2
from .differentiable import (
    FrameFeatures,
    condition,
    encode_backbone,
    frame_features,
    track,
)
from .frames import (
    EncodedFrame,
    autocast,
    default_device,
    encode_images,
    encode_resized,
    preprocess,
    resize_for_model,
    resize_masks,
)
from .predictor import (
    ADAPTABLE_MODULES,
    IMAGE_FEATURE_PARAMETERS,
    InMemoryVideoPredictor,
)
from .session import FrameOutput, TrackingSession

__all__ = [
    "ADAPTABLE_MODULES",
    "IMAGE_FEATURE_PARAMETERS",
    "RANDOM_INIT_SEED",
    "EncodedFrame",
    "FrameFeatures",
    "FrameOutput",
    "InMemoryVideoPredictor",
    "MaskProposer",
    "TrackingSession",
    "autocast",
    "build_sam2",
    "condition",
    "default_device",
    "encode_backbone",
    "encode_images",
    "encode_resized",
    "frame_features",
    "image_predictor",
    "preprocess",
    "resize_for_model",
    "resize_masks",
    "track",
]

#: Names loaded on first use: SAM 2's image predictor (prompts) imports torchvision and with it
#: torch._dynamo, a second or more of start-up that a process which only tracks (an index run,
#: a Ray actor, a CLI command) would pay for nothing.
_PROMPTS = ("MaskProposer", "image_predictor")


def __getattr__(name: str):
    if name in _PROMPTS:
        from . import prompts

        return getattr(prompts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
