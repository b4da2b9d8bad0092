"""Label a specimen by clicking: SAM 2's image predictor turns points and boxes into a mask.

The predictor wraps the very SAM 2 model the index's tracker uses (same checkpoint, same
input size), so a support drawn here is segmented the way SST will see it. With random
weights the proposals are meaningless but every step still runs; ``random_weights`` says so.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .sam2_predictor import autocast, image_predictor
from .tracking import SSTTracker

#: A click: ``(x, y, positive)`` in the image's own pixel coordinates.
Click = tuple[float, float, bool]


@dataclass
class Proposal:
    """A proposed mask (boolean, image size), SAM 2's predicted IoU for it, and the
    low-resolution logits that seed the next refinement."""

    mask: np.ndarray
    score: float
    logits: np.ndarray


class ClickSegmenter:
    """Proposes a trait mask from clicks and/or a box; one image at a time, thread-safe."""

    def __init__(self, tracker: SSTTracker):
        self.predictor = image_predictor(tracker.predictor)
        self.random_weights = tracker.weights.is_random
        self.image_size = tracker.predictor.image_size
        self._image_key: str | None = None
        self._lock = threading.Lock()

    def _set_image(self, image: np.ndarray) -> None:
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() + str(image.shape)
        if key != self._image_key:
            with torch.inference_mode(), autocast(self.predictor.device):
                self.predictor.set_image(image)
            self._image_key = key

    def propose(
        self,
        image: np.ndarray,
        clicks: Sequence[Click] = (),
        box: tuple[float, float, float, float] | None = None,
        previous: Proposal | None = None,
    ) -> Proposal:
        """The best mask for the prompts; ``previous`` refines an earlier proposal.

        A single click is ambiguous (a spot, the wing, the whole specimen), so SAM 2 offers
        three masks and the best-scored non-empty one is kept.
        """
        if not clicks and box is None:
            raise ValueError("give at least one click or a box")
        coords = np.array([[x, y] for x, y, _ in clicks], np.float32) if clicks else None
        labels = np.array([1 if pos else 0 for *_, pos in clicks], np.int32) if clicks else None
        multimask = previous is None and box is None and len(clicks) == 1
        with self._lock:
            self._set_image(image)
            with torch.inference_mode(), autocast(self.predictor.device):
                masks, scores, logits = self.predictor.predict(
                    point_coords=coords, point_labels=labels,
                    box=None if box is None else np.array(box, np.float32),
                    mask_input=None if previous is None else previous.logits[None],
                    multimask_output=multimask,
                )
        masks = np.asarray(masks).astype(bool)
        order = sorted(range(len(scores)), key=lambda i: (not masks[i].any(), -float(scores[i])))
        best = order[0]
        return Proposal(masks[best], float(scores[best]), np.asarray(logits[best], np.float32))
