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
import os
import re
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ValidationError, field_validator

from .atomic_io import write_bytes_atomic
from .images import (
    ImageLoadError,
    is_image_file,
    load_image,
    load_mask,
    save_image,
    save_mask,
)

MASK_SUFFIX = ".mask.png"
TRAITS_FILE = "traits.yaml"


class ReferencesError(ValueError):
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

    @field_validator("name")
    @classmethod
    def _name_is_a_file_name(cls, v: str) -> str:
        return check_name(v, "trait name")


def load_traits(path: str | Path) -> dict[int, Trait]:
    """Parse ``traits.yaml``: either ``{1: name}`` or ``{1: {name:, description:}}``,
    optionally under a top-level ``traits:`` key."""
    path = Path(path)
    if not path.is_file():
        raise ReferencesError(f"{path}: traits file does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ReferencesError(f"{path}: not valid YAML ({exc})") from exc
    if isinstance(raw, dict) and INSTANCE_KEY in raw:
        raise ReferencesError(
            f"{path}: declares instances ({INSTANCE_KEY}: {raw[INSTANCE_KEY]}), not traits; "
            "use its folder as instance references (--instance-references)"
        )
    if isinstance(raw, dict) and "traits" in raw:
        raw = raw["traits"]
    if not isinstance(raw, dict) or not raw:
        raise ReferencesError(f"{path}: expected a mapping of trait id -> name")
    traits: dict[int, Trait] = {}
    for key, value in raw.items():
        try:
            spec = {"name": value} if isinstance(value, str) else dict(value or {})
            trait = Trait(id=int(key), **spec)
        except ValidationError as exc:  # one line per problem, not pydantic's report
            raise ReferencesError(f"{path}: trait {key!r} is invalid: "
                                  + "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from exc
        except (ValueError, TypeError) as exc:
            raise ReferencesError(f"{path}: trait {key!r} is invalid: {exc}") from exc
        if trait.id in traits:
            raise ReferencesError(f"{path}: trait id {trait.id} is declared twice")
        traits[trait.id] = trait
    names = [t.name for t in traits.values()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ReferencesError(f"{path}: trait names must be unique, repeated: {dupes}")
    return traits


def check_name(name: str, what: str) -> str:
    """``name`` if it can name a file or folder on its own, else :class:`ReferencesError`.

    Group and trait names come from manifests, annotation files and uploads and become
    folder and file names; ``../x`` or ``/etc`` would reach outside the references folder.
    The one rule for both, so a name one place accepts is never refused by another.
    """
    bad = (not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0")
           or name != name.strip() or not name.isprintable())
    if bad:
        raise ReferencesError(f"{what} {name!r} cannot name a references folder or file "
                              "(no '/', '\\', '..', control characters or surrounding spaces)")
    return name


def check_group_name(group: str) -> str:
    """``group`` if it can name a folder directly under REFS (see :func:`check_name`)."""
    return check_name(group, "group name")


def write_traits(path: str | Path, traits: dict[int, Trait]) -> None:
    """Write ``traits.yaml`` atomically (a reader never sees half a file)."""
    data = {
        tid: ({"name": t.name, "description": t.description} if t.description else t.name)
        for tid, t in sorted(traits.items())
    }
    write_bytes_atomic(Path(path), yaml.safe_dump({"traits": data}, sort_keys=True).encode())


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
            raise ReferencesError(
                f"{where}: mask size {self.mask.shape[1]}x{self.mask.shape[0]} differs "
                f"from image size {w}x{h}"
            )
        present = set(np.unique(self.mask).tolist()) - {0}
        if not present:
            raise ReferencesError(f"{where}: mask is empty (no trait pixels)")
        undeclared = sorted(present - set(self.traits))
        if undeclared:
            raise ReferencesError(
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
        raise ReferencesError(str(exc)) from exc
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


def _labeled_images(group_dir: Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` file pairs of a references folder, sorted by file name."""
    pairs = []
    for image_path in sorted(group_dir.iterdir()):
        if image_path.name.endswith(MASK_SUFFIX) or not is_image_file(image_path):
            continue
        mask_path = image_path.with_name(image_path.stem + MASK_SUFFIX)
        if not mask_path.exists():
            raise ReferencesError(f"{image_path}: support image has no mask {mask_path.name}")
        pairs.append((image_path, mask_path))
    if not pairs:
        raise ReferencesError(f"{group_dir}: no support images (expected <stem>.<ext> + <stem>{MASK_SUFFIX})")
    return pairs


def load_group_references(group_dir: str | Path) -> list[Support]:
    """All supports of one group folder, sorted by file name."""
    group_dir = Path(group_dir)
    traits = load_traits(group_dir / TRAITS_FILE)
    return [load_support(image_path, mask_path, traits) for image_path, mask_path in _labeled_images(group_dir)]


def load_references(refs_dir: str | Path) -> dict[str, list[Support]]:
    """``{group: supports}`` for every sub-folder of ``refs_dir`` holding a traits file."""
    refs_dir = Path(refs_dir)
    if not refs_dir.is_dir():
        raise ReferencesError(f"{refs_dir}: references folder does not exist")
    return {
        d.name: load_group_references(d)
        for d in sorted(refs_dir.iterdir())
        if d.is_dir() and (d / TRAITS_FILE).exists() and load_instance_spec(d / TRAITS_FILE) is None
    }


def references_fingerprint(supports: list[Support] | list[InstanceReference]) -> str:
    """Changes whenever any support pixel, mask pixel or trait (or instance kind) name changes."""
    return hashlib.sha256("".join(s.digest for s in supports).encode()).hexdigest()[:16]


# -- instance references -----------------------------------------------------------------
#
# A photo of several specimens (a drawer, a field photo) whose mask marks each specimen:
# pixel value k = instance k. Its ``traits.yaml`` says what the instances are instead of
# naming traits::
#
#     instance_of: specimen          # every non-zero id is one specimen
#     classes: {1: specimen, 2: label, 3: specimen}   # optional: an instance-id mask with a
#                                                     # class map; only `instance_of` counts

INSTANCE_KEY = "instance_of"


class InstanceSpec(BaseModel):
    model_config = {"extra": "forbid"}

    instance_of: str
    classes: dict[int, str] | None = None

    @field_validator("instance_of")
    @classmethod
    def _kind(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("instance_of must name a kind (e.g. specimen)")
        return v.strip()

    @field_validator("classes")
    @classmethod
    def _ids(cls, v: dict[int, str] | None) -> dict[int, str] | None:
        if v is not None and any(not 1 <= k <= 255 for k in v):
            raise ValueError("instance ids must be in 1..255 (0 is background)")
        return v


def load_instance_spec(path: str | Path) -> InstanceSpec | None:
    """The instance declaration of a ``traits.yaml``, or None when it declares traits."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ReferencesError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(raw, dict) or INSTANCE_KEY not in raw:
        return None
    try:
        return InstanceSpec.model_validate(raw)
    except ValidationError as exc:
        raise ReferencesError(f"{path}: invalid instance declaration: {exc}") from exc


def write_instance_spec(path: str | Path, kind: str, classes: Mapping[int, str] | None = None) -> None:
    """Write the ``traits.yaml`` of an instance reference folder."""
    spec = InstanceSpec(instance_of=kind, classes=dict(classes) if classes else None)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(Path(path), yaml.safe_dump(spec.model_dump(exclude_none=True), sort_keys=True).encode())


@dataclass
class InstanceReference:
    """A labeled photo of several instances of one kind; ``instances`` holds k on instance k
    and 0 elsewhere (instances of other classes are already removed)."""

    id: str
    image: np.ndarray
    instances: np.ndarray
    kind: str
    image_path: str | None = None
    mask_path: str | None = None
    digest: str = field(default="")

    def __post_init__(self) -> None:
        where = self.mask_path or self.id
        if self.instances.shape != self.image.shape[:2]:
            h, w = self.image.shape[:2]
            raise ReferencesError(
                f"{where}: mask size {self.instances.shape[1]}x{self.instances.shape[0]} differs from image size {w}x{h}"
            )
        if not self.instance_ids:
            raise ReferencesError(f"{where}: mask marks no instance of {self.kind!r}")
        if not self.digest:
            h = hashlib.sha256()
            h.update(np.ascontiguousarray(self.image).tobytes())
            h.update(np.ascontiguousarray(self.instances).tobytes())
            h.update(self.kind.encode())
            self.digest = h.hexdigest()

    @property
    def instance_ids(self) -> list[int]:
        return sorted(set(np.unique(self.instances).tolist()) - {0})

    def instance_masks(self) -> list[np.ndarray]:
        return [self.instances == k for k in self.instance_ids]


def load_instance_reference(image_path: str | Path, mask_path: str | Path, spec: InstanceSpec) -> InstanceReference:
    """Load one instance reference; ids of other classes are dropped, undeclared ids are errors."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    try:
        image, mask = load_image(image_path), load_mask(mask_path)
    except ImageLoadError as exc:
        raise ReferencesError(str(exc)) from exc
    if spec.classes is not None:
        present = set(np.unique(mask).tolist()) - {0}
        undeclared = sorted(present - set(spec.classes))
        if undeclared:
            raise ReferencesError(f"{mask_path}: instance ids {undeclared} have no class in {TRAITS_FILE}")
        other = [k for k in present if spec.classes[k] != spec.instance_of]
        mask = np.where(np.isin(mask, other), 0, mask).astype(np.uint8)
    return InstanceReference(
        id=image_path.stem, image=image, instances=mask, kind=spec.instance_of,
        image_path=str(image_path), mask_path=str(mask_path),
    )


def load_instance_references(folder: str | Path) -> list[InstanceReference]:
    """All instance references of a folder whose ``traits.yaml`` declares ``instance_of``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReferencesError(f"{folder}: instance references folder does not exist")
    if not (folder / TRAITS_FILE).is_file():
        raise ReferencesError(f"{folder}: no {TRAITS_FILE} (expected '{INSTANCE_KEY}: <kind>')")
    spec = load_instance_spec(folder / TRAITS_FILE)
    if spec is None:
        raise ReferencesError(f"{folder / TRAITS_FILE}: declares traits, not instances (expected '{INSTANCE_KEY}: <kind>')")
    return [load_instance_reference(i, m, spec) for i, m in _labeled_images(folder)]


# -- writing supports ------------------------------------------------------------------

_STEM_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _support_files(group_dir: Path, stem: str) -> list[Path]:
    """Files that already claim ``stem`` in a group folder (an image of any suffix, or its mask)."""
    if not group_dir.is_dir():
        return []
    return [p for p in group_dir.iterdir() if p.name == stem + MASK_SUFFIX or (p.stem == stem and is_image_file(p))]


def unique_stem(group_dir: str | Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... : the first name no support of the group uses yet."""
    group_dir = Path(group_dir)
    candidate, n = stem, 1
    while _support_files(group_dir, candidate):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def merge_trait_names(existing: Mapping[int, Trait], names: list[str]) -> dict[int, Trait]:
    """The group's traits plus any new ``names``, which get the next free ids; existing names
    keep their ids, so masks of earlier supports stay valid."""
    traits = dict(existing)
    by_name = {t.name: tid for tid, t in traits.items()}
    for name in names:
        name = name.strip()
        if not name:
            raise ReferencesError("a trait name is empty")
        check_name(name, "trait name")
        if name in by_name:
            continue
        free = next((k for k in range(1, 256) if k not in traits), None)
        if free is None:
            raise ReferencesError(f"no free trait id left for {name!r} (255 traits already)")
        traits[free] = Trait(id=free, name=name)
        by_name[name] = free
    return traits


def _label_map(stem: str, traits: Mapping[int, Trait], trait_masks: Mapping[str, np.ndarray],
               shape: tuple[int, int]) -> np.ndarray:
    """The support's label mask: each named mask drawn with its trait id, later names on top."""
    ids = {t.name: tid for tid, t in traits.items()}
    label_map = np.zeros(shape, np.uint8)
    for name, mask in trait_masks.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != label_map.shape:
            raise ReferencesError(
                f"{stem}: mask of trait {name!r} is {mask.shape[1]}x{mask.shape[0]}, "
                f"the image is {label_map.shape[1]}x{label_map.shape[0]}"
            )
        label_map[mask] = ids[name.strip()]
    return label_map


def holds_support(refs_dir: str | Path, group: str, stem: str, image: str | Path,
                  trait_masks: Mapping[str, np.ndarray]) -> bool:
    """Whether the group already holds exactly the support :func:`save_support` would write
    (same image bytes, same mask, same trait names): an import cut short and run again skips
    what it finished instead of refusing it as a name clash."""
    group_dir = Path(refs_dir) / group
    image = Path(image)
    existing = group_dir / f"{stem}{image.suffix.lower()}"
    mask_path = group_dir / f"{stem}{MASK_SUFFIX}"
    traits_path = group_dir / TRAITS_FILE
    if not (existing.is_file() and mask_path.is_file() and traits_path.is_file()):
        return False
    try:
        traits = load_traits(traits_path)
        if not {n.strip() for n in trait_masks} <= {t.name for t in traits.values()}:
            return False
        if existing.read_bytes() != image.read_bytes():
            return False
        mask = load_mask(mask_path)
        return np.array_equal(mask, _label_map(stem, traits, trait_masks, mask.shape))
    except (OSError, ImageLoadError, ReferencesError):
        return False


def remove_staging(group_dir: str | Path, stem: str) -> None:
    """Remove what a :func:`save_support` of ``stem`` killed mid-write left (its staging folder)."""
    group_dir = Path(group_dir)
    if not group_dir.is_dir():
        return
    for leftover in group_dir.glob(f".{glob_escape(stem)}.*"):
        if leftover.is_dir():
            for path in leftover.iterdir():
                path.unlink()
            leftover.rmdir()


def save_support(
    refs_dir: str | Path,
    group: str,
    stem: str,
    image: np.ndarray | str | Path,
    trait_masks: Mapping[str, np.ndarray],
) -> Support:
    """Add one support to ``refs_dir/<group>/`` and return it as :func:`load_group_references` sees it.

    ``trait_masks`` maps trait *names* to boolean masks the size of the image; names are
    mapped to the group's trait ids (new names get new ids in ``traits.yaml``); where masks
    overlap, the later name wins. ``image`` is a path (its bytes are copied, keeping its
    format) or an RGB array (written as PNG). The result is validated by the same
    :class:`Support` checks as a loaded reference before anything is written. An existing
    support of that stem is never overwritten (:func:`unique_stem` picks a free one).
    Files appear in an order that keeps the folder loadable at every instant: traits first
    (only additions), then the mask, then the image that makes the support visible.
    """
    refs_dir = Path(refs_dir)
    check_group_name(group)
    if not _STEM_OK.match(stem) or stem.endswith(".mask"):
        raise ReferencesError(f"support name {stem!r}: use letters, digits, '.', '_' or '-'")
    group_dir = refs_dir / group
    if isinstance(image, (str, Path)):
        source = Path(image)
        try:
            pixels = load_image(source)
        except ImageLoadError as exc:
            raise ReferencesError(str(exc)) from exc
        suffix = source.suffix.lower()
    else:
        source, pixels, suffix = None, np.asarray(image, dtype=np.uint8), ".png"
    taken = _support_files(group_dir, stem)
    if taken:
        raise ReferencesError(f"{taken[0]}: a support named {stem!r} already exists in group {group!r}; not overwriting it")
    traits_path = group_dir / TRAITS_FILE
    existing = load_traits(traits_path) if traits_path.exists() else {}
    traits = merge_trait_names(existing, list(trait_masks))
    label_map = _label_map(stem, traits, trait_masks, pixels.shape[:2])
    image_path, mask_path = group_dir / f"{stem}{suffix}", group_dir / f"{stem}{MASK_SUFFIX}"
    Support(id=stem, image=pixels, mask=label_map, traits=traits, mask_path=str(mask_path))  # validates
    group_dir.mkdir(parents=True, exist_ok=True)
    if traits != existing:
        write_traits(traits_path, traits)
    staging = Path(tempfile.mkdtemp(dir=group_dir, prefix=f".{stem}."))
    try:
        save_mask(staging / mask_path.name, label_map)
        if source is not None:
            (staging / image_path.name).write_bytes(source.read_bytes())
        else:
            save_image(staging / image_path.name, pixels)
        linked: list[Path] = []
        try:
            for path in (mask_path, image_path):
                os.link(staging / path.name, path)  # unlike rename, link never replaces a file
                linked.append(path)
        except FileExistsError as exc:
            for path in linked:
                path.unlink()
            raise ReferencesError(f"{exc.filename2 or exc.filename}: appeared meanwhile; not overwriting it") from exc
    finally:
        for path in staging.iterdir():
            path.unlink()
        staging.rmdir()
    return load_support(image_path, mask_path, traits)


def name_without_authorship(name: str) -> str | None:
    """``"Lycorma delicatula (White, 1845)"`` -> ``"Lycorma delicatula"``: the genus, its
    lower-case epithets and rank markers, up to the first word that starts the authorship (a
    capital, a parenthesis or a year); None when nothing follows the name."""
    words = name.split()
    keep = words[:1]
    for word in words[1:]:
        if word[0].isupper() or word[0] in "([" or any(c.isdigit() for c in word):
            break
        keep.append(word)
    bare = " ".join(keep)
    return bare if bare and bare != " ".join(words) else None


def reference_folders(references: str | Path) -> set[str]:
    """The group folders under ``references`` (empty when it is not a folder)."""
    root = Path(references)
    return {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()


def group_hint(group: str, metadata: Mapping[str, str], folders: Collection[str]) -> str:
    """What would give an item without references a matching folder, as a clause to append
    to its error: a term of its own whose value names one of the references' ``folders``
    (:func:`reference_folders`, listed once per run, not once per item), else its group name
    without authorship (what GBIF's ``species`` term holds); ``""`` when neither."""
    terms = [t for t, v in metadata.items() if v != group and str(v) in folders]
    if terms:
        return (f"; its {terms[0]} {metadata[terms[0]]!r} has a references folder: group by that term "
                f"(a Darwin Core Archive: --group-by {terms[0]})")
    bare = name_without_authorship(group)
    if bare is None:
        return ""
    holding = next((t for t, v in metadata.items() if v == bare), None)
    return (f"; without its authorship the name is {bare!r}"
            + (f" (the {holding!r} term: --group-by {holding})" if holding else " (a GBIF download's 'species' term)")
            + f": name the folder {bare!r} and group by a term holding it")
