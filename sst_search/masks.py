"""Label-map arithmetic shared by tracking, indexing, evaluation and the UI."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where logits are turned into masks, not by every catalog reader
    import torch


def logits_to_label_map(
    logits: torch.Tensor, trait_ids: list[int], size: tuple[int, int]
) -> np.ndarray:
    """Turn per-trait mask logits into one label map at ``size`` (H, W).

    Each pixel takes the trait with the highest logit; pixels where no logit is above zero
    (SAM 2's decision threshold, ``logits > 0``) are background. Resizing the logits, not the binary
    masks, keeps boundaries smooth at the query's original resolution.
    """
    if logits.ndim == 4:
        logits = logits[:, 0]
    if len(trait_ids) != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit maps for {len(trait_ids)} traits")
    import torch
    import torch.nn.functional as F

    up = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    best, idx = up.max(dim=0)
    lut = torch.tensor(trait_ids, dtype=torch.uint8, device=idx.device)
    labels = torch.where(best > 0, lut[idx], torch.zeros_like(idx, dtype=torch.uint8))
    return labels.cpu().numpy()  # uint8 already: one download, no host copy per query


def decision_margin(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Per pixel at ``size``, how far :func:`logits_to_label_map`'s decision is from flipping:
    the top logit minus the runner-up, or the top logit's distance from the threshold 0,
    whichever is smaller. Two runs whose logits agree within ``tol`` can only disagree on
    pixels whose margin is below ``2 * tol``: this is how equivalence checks tell float ties
    from real differences."""
    if logits.ndim == 4:
        logits = logits[:, 0]
    import torch
    import torch.nn.functional as F

    up = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    top = up.topk(min(2, len(up)), dim=0).values
    margin = top[0].abs() if len(up) == 1 else torch.minimum(top[0] - top[1], top[0].abs())
    return margin.cpu().numpy()


def logits_to_masks(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """One boolean mask per object ``(K, H, W)`` at ``size``: each object decided on its own
    (``logits > 0``), unlike :func:`logits_to_label_map` where objects compete for pixels."""
    import torch.nn.functional as F

    if logits.ndim == 4:
        logits = logits[:, 0]
    up = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return (up > 0).cpu().numpy()


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(len(a), len(b))`` of two stacks of boolean masks of one size; two
    empty masks score 0 here (an empty prediction never matches anything)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mask_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree perfectly (1.0)."""
    union = np.logical_or(pred, truth).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, truth).sum() / union)


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` with exclusive ends, or None for an empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def trait_stats(label_map: np.ndarray, trait_ids: list[int]) -> dict[int, dict]:
    """Area (pixels) and bbox of each trait present in ``label_map``."""
    stats = {}
    for tid in trait_ids:
        m = label_map == tid
        area = int(m.sum())
        if area:
            stats[tid] = {"area": area, "bbox": list(bbox(m))}
    return stats


#: Distinct, colour-blind-friendly colours (Okabe-Ito) for trait overlays.
PALETTE = np.array(
    [
        (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
        (0, 114, 178), (213, 94, 0), (204, 121, 167), (120, 120, 120),
    ],
    dtype=np.uint8,
)


def trait_color(trait_id: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in PALETTE[(trait_id - 1) % len(PALETTE)])


def overlay(image: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend trait colours over the image and draw each trait's outline."""
    import cv2

    out = image.astype(np.float32).copy()
    for tid in sorted(set(np.unique(label_map).tolist()) - {0}):
        m = label_map == tid
        out[m] = (1 - alpha) * out[m] + alpha * np.array(trait_color(tid), np.float32)
    out = out.astype(np.uint8)
    for tid in sorted(set(np.unique(label_map).tolist()) - {0}):
        contours, _ = cv2.findContours((label_map == tid).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, trait_color(tid), 1)
    return out


def cutout(crop: np.ndarray, mask: np.ndarray, background: str = "transparent") -> np.ndarray:
    """The crop with everything outside the mask removed: RGBA whose alpha is the mask, or
    RGB on black; one rule for every exported cut-out (specimens, traits, instances)."""
    if background == "transparent":
        return np.dstack([crop, np.where(mask, 255, 0).astype(np.uint8)])
    if background == "black":
        return np.where(mask[..., None], crop, 0).astype(np.uint8)
    raise ValueError(f"background must be 'transparent' or 'black', got {background!r}")
