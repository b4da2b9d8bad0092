"""References (supports): the one labeled specimen per group that SST tracks from.

Layout of a group's reference folder::

    REFS/<group>/traits.yaml        # id -> name (and optional description)
    REFS/<group>/<stem>.<ext>       # support image (any readable format)
    REFS/<group>/<stem>.mask.png    # its label mask: 0 = background, k = trait k

Several supports per group are allowed; every one becomes a conditioning frame.
Validation happens here, at load time, so a mislabeled reference fails loudly before
hours of indexing rather than producing plausible-looking wrong masks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ValidationError, field_validator

from .images import ImageLoadError, is_image_file, load_image, load_mask

MASK_SUFFIX = ".mask.png"
TRAITS_FILE = "traits.yaml"


class ReferenceError(ValueError):
    """A reference (support image, mask or traits file) is unusable; names the file."""


class Trait(BaseModel):
    id: int
    name: str
    description: str | None = None

    @field_validator("id")
    @classmethod
    def _id_range(cls, v: int) -> int:
        if not 1 <= v <= 255:
            raise ValueError("trait ids must be in 1..255 (0 is background)")
        return v


def load_traits(path: str | Path) -> dict[int, Trait]:
    """Parse ``traits.yaml``: either ``{1: name}`` or ``{1: {name:, description:}}``,
    optionally under a top-level ``traits:`` key."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceError(f"{path}: traits file does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ReferenceError(f"{path}: not valid YAML ({exc})") from exc
    if isinstance(raw, dict) and "traits" in raw:
        raw = raw["traits"]
    if not isinstance(raw, dict) or not raw:
        raise ReferenceError(f"{path}: expected a mapping of trait id -> name")
    traits: dict[int, Trait] = {}
    for key, value in raw.items():
        try:
            spec = {"name": value} if isinstance(value, str) else dict(value or {})
            trait = Trait(id=int(key), **spec)
        except (ValueError, TypeError, ValidationError) as exc:
            raise ReferenceError(f"{path}: trait {key!r} is invalid: {exc}") from exc
        if trait.id in traits:
            raise ReferenceError(f"{path}: trait id {trait.id} is declared twice")
        traits[trait.id] = trait
    names = [t.name for t in traits.values()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ReferenceError(f"{path}: trait names must be unique, repeated: {dupes}")
    return traits


def check_group_name(group: str) -> str:
    """``group`` if it can name a folder directly under REFS, else :class:`ReferenceError`.

    Group names come from manifests and uploads; used as paths, ``../x`` or ``/etc`` would
    reach files outside the references folder.
    """
    bad = (not group or group in (".", "..") or any(c in group for c in "/\\\0")
           or group != group.strip() or not group.isprintable())
    if bad:
        raise ReferenceError(f"group name {group!r} cannot name a references folder "
                             "(no '/', '\\', '..', control characters or surrounding spaces)")
    return group


def write_traits(path: str | Path, traits: dict[int, Trait]) -> None:
    data = {
        tid: ({"name": t.name, "description": t.description} if t.description else t.name)
        for tid, t in sorted(traits.items())
    }
    Path(path).write_text(yaml.safe_dump({"traits": data}, sort_keys=True))


@dataclass
class Support:
    """A labeled specimen: RGB image, label mask and the traits its mask may contain."""

    id: str
    image: np.ndarray
    mask: np.ndarray
    traits: dict[int, Trait]
    image_path: str | None = None
    mask_path: str | None = None
    digest: str = field(default="")

    def __post_init__(self) -> None:
        where = self.mask_path or self.id
        if self.mask.shape != self.image.shape[:2]:
            h, w = self.image.shape[:2]
            raise ReferenceError(
                f"{where}: mask size {self.mask.shape[1]}x{self.mask.shape[0]} differs "
                f"from image size {w}x{h}"
            )
        present = set(np.unique(self.mask).tolist()) - {0}
        if not present:
            raise ReferenceError(f"{where}: mask is empty (no trait pixels)")
        undeclared = sorted(present - set(self.traits))
        if undeclared:
            raise ReferenceError(
                f"{where}: mask holds trait ids not declared in {TRAITS_FILE}: {undeclared} "
                f"(declared: {sorted(self.traits)})"
            )
        if not self.digest:
            h = hashlib.sha256()
            h.update(np.ascontiguousarray(self.image).tobytes())
            h.update(np.ascontiguousarray(self.mask).tobytes())
            h.update(repr(sorted((k, t.name) for k, t in self.traits.items())).encode())
            self.digest = h.hexdigest()

    @property
    def trait_ids(self) -> list[int]:
        """Traits actually drawn in this support's mask, in id order."""
        return sorted(set(np.unique(self.mask).tolist()) - {0})


def load_support(
    image_path: str | Path,
    mask_path: str | Path,
    traits: dict[int, Trait] | str | Path | None = None,
) -> Support:
    """Load and validate one support. Without a traits file, ids present in the mask are
    named ``trait_<k>`` so a quick one-off run needs only an image and a mask."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    try:
        image = load_image(image_path)
        mask = load_mask(mask_path)
    except ImageLoadError as exc:
        raise ReferenceError(str(exc)) from exc
    if traits is None:
        ids = sorted(set(np.unique(mask).tolist()) - {0})
        traits = {k: Trait(id=k, name=f"trait_{k}") for k in ids}
    elif not isinstance(traits, dict):
        traits = load_traits(traits)
    return Support(
        id=image_path.stem,
        image=image,
        mask=mask,
        traits=traits,
        image_path=str(image_path),
        mask_path=str(mask_path),
    )


def load_group_references(group_dir: str | Path) -> list[Support]:
    """All supports of one group folder, sorted by file name."""
    group_dir = Path(group_dir)
    traits = load_traits(group_dir / TRAITS_FILE)
    supports = []
    for image_path in sorted(group_dir.iterdir()):
        if image_path.name.endswith(MASK_SUFFIX) or not is_image_file(image_path):
            continue
        mask_path = image_path.with_name(image_path.stem + MASK_SUFFIX)
        if not mask_path.exists():
            raise ReferenceError(f"{image_path}: support image has no mask {mask_path.name}")
        supports.append(load_support(image_path, mask_path, traits))
    if not supports:
        raise ReferenceError(f"{group_dir}: no support images (expected <stem>.<ext> + <stem>{MASK_SUFFIX})")
    return supports


def load_references(refs_dir: str | Path) -> dict[str, list[Support]]:
    """``{group: supports}`` for every sub-folder of ``refs_dir`` holding a traits file."""
    refs_dir = Path(refs_dir)
    if not refs_dir.is_dir():
        raise ReferenceError(f"{refs_dir}: references folder does not exist")
    return {
        d.name: load_group_references(d)
        for d in sorted(refs_dir.iterdir())
        if d.is_dir() and (d / TRAITS_FILE).exists()
    }


def references_fingerprint(supports: list[Support]) -> str:
    """Changes whenever any support pixel, mask pixel or trait name changes."""
    return hashlib.sha256("".join(s.digest for s in supports).encode()).hexdigest()[:16]
