"""The trait-embedder interface and the region handling every embedder shares.

An embedder turns *regions* of a specimen image into unit vectors: a trait region is the
pixels of one trait in a label map, the whole-specimen region is the full image. Everything
downstream (FAISS inner-product search) relies on the vectors being L2-normalised, so the
base class normalises once, for every embedder, instead of trusting each implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sst_search.errors import EmbedderError
from sst_search.masks import bbox


class NoTextTowerError(EmbedderError):
    """Text search was asked of an embedder that only understands images."""


@dataclass(frozen=True)
class Region:
    """Pixels of ``image`` selected by ``mask`` (HxW bool); ``mask=None`` means the whole image."""

    image: np.ndarray
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class EmbedItem:
    """One specimen to embed: its image, its label map and the traits wanted from it."""

    image: np.ndarray
    label_map: np.ndarray
    trait_ids: Sequence[int]


@dataclass
class SpecimenVectors:
    """Vectors of one specimen: ``specimen`` for the whole image, ``traits`` per present trait id."""

    specimen: np.ndarray
    traits: dict[int, np.ndarray] = field(default_factory=dict)


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got a {desc}")


def check_label_map(image: np.ndarray, label_map: np.ndarray) -> None:
    if label_map.ndim != 2 or label_map.shape != image.shape[:2]:
        raise ValueError(f"label map of shape {label_map.shape} does not match image of shape {image.shape[:2]}")


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise unit length in float32; an all-zero row stays zero rather than becoming NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def crop_box(mask: np.ndarray, margin: float = 0.1) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the mask's bounding box grown by ``margin`` of its longer side
    (at least 2 px), within the image; what :func:`masked_square_crop` cuts."""
    box = bbox(mask)
    if box is None:
        raise ValueError("cannot crop an empty region")
    x0, y0, x1, y1 = box
    pad = max(2, int(round(margin * max(x1 - x0, y1 - y0))))
    h, w = mask.shape
    return max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)


def masked_square_crop(
    image: np.ndarray, mask: np.ndarray | None, fill: tuple[int, int, int], margin: float = 0.1
) -> np.ndarray:
    """The trait's bounding box plus ``margin``, off-trait pixels set to ``fill``, padded square.

    Filling with the model's mean colour makes the background carry (close to) no signal
    after normalisation, so the vector describes the trait, not its surroundings. Padding
    to a square, instead of letting the model's centre crop cut an elongated trait, keeps
    the whole trait in view.
    """
    if mask is None:
        crop = image
    else:
        x0, y0, x1, y1 = crop_box(mask, margin)
        crop = image[y0:y1, x0:x1].copy()
        crop[~mask[y0:y1, x0:x1]] = fill
    h, w = crop.shape[:2]
    side = max(h, w)
    out = np.empty((side, side, 3), dtype=np.uint8)
    out[:] = fill
    oy, ox = (side - h) // 2, (side - w) // 2
    out[oy : oy + h, ox : ox + w] = crop
    return out


class TraitEmbedder(ABC):
    """One vector space for traits and whole specimens.

    Subclasses set ``name`` (the key vectors are stored under), ``dim`` and ``fingerprint``
    (what produced the vectors: model, pretrained tag, weights sha256 or ``"random"``), and
    implement :meth:`embed_regions`. Batching across specimens happens here so image towers
    see full batches even when each specimen has only a few traits.
    """

    name: str
    dim: int
    fingerprint: dict
    batch_size: int = 16

    @abstractmethod
    def _embed_regions(self, regions: Sequence[Region]) -> np.ndarray:
        """Raw (not necessarily normalised) vectors, one row per region."""

    def embed_regions(self, regions: Sequence[Region]) -> np.ndarray:
        """``(len(regions), dim)`` float32 unit vectors, computed ``batch_size`` at a time."""
        if not regions:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [
            self._embed_regions(regions[i : i + self.batch_size]) for i in range(0, len(regions), self.batch_size)
        ]
        return l2_normalize(np.concatenate(chunks, axis=0))

    def embed_batch(self, items: Sequence[EmbedItem]) -> list[SpecimenVectors]:
        """Whole-specimen and per-trait vectors for several specimens; absent traits are omitted."""
        regions: list[Region] = []
        slots: list[tuple[int, int | None]] = []
        for i, item in enumerate(items):
            check_image(item.image)
            check_label_map(item.image, item.label_map)
            regions.append(Region(item.image))
            slots.append((i, None))
            for tid in item.trait_ids:
                mask = item.label_map == tid
                if mask.any():
                    regions.append(Region(item.image, mask))
                    slots.append((i, tid))
        vectors = self.embed_regions(regions)
        out = [SpecimenVectors(specimen=np.zeros(self.dim, np.float32)) for _ in items]
        for (i, tid), vec in zip(slots, vectors):
            if tid is None:
                out[i].specimen = vec
            else:
                out[i].traits[tid] = vec
        return out

    def embed_traits(self, image: np.ndarray, label_map: np.ndarray, trait_ids: Sequence[int]) -> dict[int, np.ndarray]:
        check_image(image)
        check_label_map(image, label_map)
        present = [t for t in trait_ids if (label_map == t).any()]
        vectors = self.embed_regions([Region(image, label_map == t) for t in present])
        return dict(zip(present, vectors))

    def embed_image(self, image: np.ndarray) -> np.ndarray:
        check_image(image)
        return self.embed_regions([Region(image)])[0]

    def embed_text(self, text: str | Sequence[str]) -> np.ndarray:
        """Unit vector(s) for text queries: ``(dim,)`` for a string, ``(n, dim)`` for a list."""
        raise NoTextTowerError(
            f"embedder {self.name!r} has no text tower; text search needs an image-text model "
            "such as 'bioclip' or 'clip'"
        )
