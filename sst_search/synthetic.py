"""A synthetic butterfly collection with exact trait masks.

Real collections come without pixel ground truth, and pretrained weights are not always
at hand, so demos and tests need specimens whose trait masks are known exactly and whose
species differ in ways a simple colour descriptor can see. Every specimen is drawn from
one geometry (wings, body, traits as polygons) that is rasterised into both the image and
the label mask, so the two can never disagree. Variation is the kind SST has to cope with:
the pose of the specimen (rotation, scale, shift) and small changes of trait colour, size
and position within a species.

All randomness comes from ``numpy.random.default_rng((seed, species, stream, index))``:
the same seed gives byte-identical files, and asking for more specimens or species leaves
the existing ones unchanged.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from .images import save_image, save_mask
from .references import MASK_SUFFIX, TRAITS_FILE, Trait, write_traits

GENUS = "Heliconius synthetica"
INSTITUTIONS = ("SYNM", "NHSYN", "MZSYN")
#: Scale of every synthetic photo (a 256 px wide image shows 20.48 mm), so measurements come in mm.
PIXELS_PER_MM = 12.5
#: Free-text localities as they appear in real catalogues: quotes, commas, accents.
LOCALITIES = (
    "O'Brien's \"Ridge\", 1200 m",
    "Río Napo, 3 km E of Misahuallí",
    "Cerro Azul; trail to the summit",
    "Station 7 (light trap)",
    "Finca La Esperanza",
)

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class _Shape:
    """An ellipse in the canonical right-wing frame (x to the right, y down, body at 0,0;
    the wingspan is about 2 units)."""

    cx: float
    cy: float
    ax: float
    ay: float
    angle: float = 0.0  # degrees


#: Trait kinds: which wing holds them, their ellipses, and what a curator would call them.
_TRAIT_KINDS: dict[str, tuple[str, tuple[_Shape, ...], str]] = {
    "forewing_band": ("fore", (_Shape(0.55, -0.25, 0.34, 0.075, 65),), "band across the forewing"),
    "apical_spot": ("fore", (_Shape(0.80, -0.38, 0.075, 0.075),), "spot at the forewing apex"),
    "discal_patch": ("fore", (_Shape(0.24, -0.11, 0.13, 0.065, -25),), "patch at the forewing cell end"),
    "hindwing_bar": ("hind", (_Shape(0.33, 0.21, 0.30, 0.06, 30),), "bar along the hindwing"),
    "hindwing_spot": ("hind", (_Shape(0.42, 0.26, 0.08, 0.08),), "round spot in the hindwing centre"),
    "basal_patch": ("hind", (_Shape(0.13, 0.09, 0.09, 0.07, 30),), "patch at the hindwing base"),
    "marginal_spots": (
        "hind",
        tuple(_Shape(x, y, 0.035, 0.035) for x, y in ((0.40, 0.38), (0.52, 0.37), (0.61, 0.31), (0.64, 0.21))),
        "row of small spots along the hindwing margin",
    ),
}

_WINGS = {"fore": _Shape(0.48, -0.22, 0.50, 0.26, -25), "hind": _Shape(0.33, 0.20, 0.34, 0.24, 30)}
_BODY = (_Shape(0.0, 0.05, 0.05, 0.36), _Shape(0.0, -0.35, 0.06, 0.06))
_ANTENNA = ((0.02, -0.38), (0.10, -0.52), (0.16, -0.60))
_BODY_RGB: RGB = (45, 38, 32)


@dataclass(frozen=True)
class _Species:
    epithet: str
    wing: RGB
    traits: tuple[tuple[str, RGB], ...]  # (trait kind, colour); trait id = position + 1


#: Hues and trait layouts chosen so that no two species share both wing colour and trait colours.
_SPECIES = (
    _Species("alba", (28, 28, 34), (("forewing_band", (245, 245, 238)), ("hindwing_bar", (240, 205, 40)))),
    _Species("cyrbia", (30, 50, 140), (("forewing_band", (215, 35, 40)), ("apical_spot", (250, 250, 250)), ("marginal_spots", (245, 235, 120)))),
    _Species("dora", (230, 120, 30), (("discal_patch", (25, 25, 25)), ("apical_spot", (250, 230, 90)), ("hindwing_spot", (40, 40, 120)))),
    _Species("erato", (95, 62, 40), (("forewing_band", (225, 30, 60)), ("hindwing_bar", (140, 230, 240)))),
    _Species("favorinus", (40, 140, 130), (("discal_patch", (250, 195, 60)), ("marginal_spots", (30, 30, 30)), ("apical_spot", (240, 240, 240)))),
    _Species("hydara", (110, 50, 130), (("forewing_band", (245, 160, 205)), ("hindwing_spot", (250, 250, 120)))),
    _Species("lativitta", (240, 225, 120), (("forewing_band", (70, 30, 100)), ("basal_patch", (205, 60, 40)), ("marginal_spots", (30, 80, 165)))),
    _Species("melpomene", (150, 150, 155), (("discal_patch", (200, 30, 30)), ("hindwing_bar", (30, 30, 30)), ("apical_spot", (255, 255, 255)))),
    _Species("notabilis", (120, 180, 230), (("forewing_band", (30, 60, 120)), ("hindwing_spot", (230, 60, 30)), ("discal_patch", (250, 240, 200)), ("marginal_spots", (40, 40, 40)))),
    _Species("petiverana", (170, 50, 40), (("apical_spot", (120, 250, 120)), ("hindwing_bar", (250, 150, 220)), ("discal_patch", (20, 20, 20)))),
)

MAX_SPECIES = len(_SPECIES)


@dataclass
class SyntheticCollection:
    """Where a generated collection lives; paths are those the rest of the product reads."""

    root: Path
    manifest: Path
    references: Path
    ground_truth: Path
    groups: list[str]


def species_traits(group: str) -> dict[int, Trait]:
    """The traits (ids 1..k) of a synthetic species, as its ``traits.yaml`` declares them."""
    species = next((s for s in _SPECIES if s.epithet == group), None)
    if species is None:
        raise ValueError(f"unknown synthetic species {group!r}; known: {[s.epithet for s in _SPECIES]}")
    return {
        i: Trait(id=i, name=kind, description=_TRAIT_KINDS[kind][2])
        for i, (kind, _) in enumerate(species.traits, start=1)
    }


def _ellipse(shape: _Shape, rng: np.random.Generator, pos: float, size: float, turn: float) -> np.ndarray:
    """Polygon of a jittered ellipse, canonical frame, shape (N, 2)."""
    t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
    k = rng.uniform(1.0 - size, 1.0 + size)
    a = np.deg2rad(shape.angle + rng.uniform(-turn, turn))
    local = np.stack([shape.ax * k * np.cos(t), shape.ay * k * np.sin(t)], axis=1)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = np.array([shape.cx, shape.cy]) + rng.uniform(-pos, pos, size=2)
    return local @ rot.T + centre


def _jitter(colour: RGB, rng: np.random.Generator, amount: int) -> np.ndarray:
    return np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255).astype(np.uint8)


class _Canvas:
    """Paints polygons into an image and its label map together (painter's order: a later
    shape hides an earlier one in both), so the mask is exact by construction."""

    def __init__(self, size: tuple[int, int], background: np.ndarray, pose: np.ndarray):
        h, w = size
        self.image = np.broadcast_to(background, (h, w, 3)).copy()
        self.labels = np.zeros((h, w), np.uint8)
        self.specimen = np.zeros((h, w), bool)  # everything painted: the specimen's silhouette
        self.pose = pose  # 2x3 affine, canonical units -> pixels

    def _pixels(self, points: np.ndarray) -> np.ndarray:
        xy = points @ self.pose[:, :2].T + self.pose[:, 2]
        return np.round(xy * 16).astype(np.int32)  # 4 bits of sub-pixel precision

    def region(self, polygons: list[np.ndarray]) -> np.ndarray:
        m = np.zeros(self.labels.shape, np.uint8)
        cv2.fillPoly(m, [self._pixels(p) for p in polygons], 1, lineType=cv2.LINE_8, shift=4)
        return m.astype(bool)

    def paint(self, where: np.ndarray, colour: np.ndarray, label: int = 0) -> None:
        self.image[where] = colour
        self.labels[where] = label
        self.specimen |= where

    def line(self, points: np.ndarray, colour: np.ndarray, thickness: int = 1) -> None:
        m = np.zeros(self.labels.shape, np.uint8)
        cv2.polylines(m, [self._pixels(points)], False, 1, thickness, cv2.LINE_8, shift=4)
        self.paint(m.astype(bool), colour)


def _mirror(points: np.ndarray) -> np.ndarray:
    return points * np.array([-1.0, 1.0])


def _render(
    species: _Species, size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One specimen: ``(rgb, label_map, silhouette)``."""
    h, w = size
    unit = min(w / 2.6, h / 1.6) * rng.uniform(0.85, 1.1)
    a = np.deg2rad(rng.uniform(-15.0, 15.0))
    shift = np.array([w / 2, h / 2 + 0.05 * unit]) + rng.uniform(-0.05, 0.05, size=2) * np.array([w, h])
    pose = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0]]) * unit
    pose[:, 2] = shift

    background = np.array([238, 236, 230]) + rng.integers(-6, 7, size=3)
    canvas = _Canvas(size, background, pose)
    wing_rgb = _jitter(species.wing, rng, 8)
    edge_rgb = (wing_rgb * 0.55).astype(np.uint8)

    for wing in ("hind", "fore"):  # the forewing overlaps the hindwing
        for flip in (False, True):
            outline = _ellipse(_WINGS[wing], rng, 0.01, 0.04, 3.0)
            outline = _mirror(outline) if flip else outline
            wing_area = canvas.region([outline])
            canvas.paint(wing_area, wing_rgb)
            canvas.line(np.vstack([outline, outline[:1]]), edge_rgb)
            for trait_id, (kind, colour) in enumerate(species.traits, start=1):
                on, shapes, _ = _TRAIT_KINDS[kind]
                if on != wing:
                    continue
                polygons = [_ellipse(s, rng, 0.025, 0.12, 6.0) for s in shapes]
                polygons = [_mirror(p) for p in polygons] if flip else polygons
                canvas.paint(canvas.region(polygons) & wing_area, _jitter(colour, rng, 10), trait_id)

    body_rgb = _jitter(_BODY_RGB, rng, 6)
    canvas.paint(canvas.region([_ellipse(s, rng, 0.005, 0.05, 2.0) for s in _BODY]), body_rgb)
    antenna = np.asarray(_ANTENNA)
    for side in (antenna, _mirror(antenna)):
        canvas.line(side, body_rgb, thickness=max(1, round(unit / 80)))

    # Camera: soft focus, vignetting, sensor noise. Only the image changes; labels stay exact.
    img = cv2.GaussianBlur(canvas.image.astype(np.float32), (3, 3), 0.6)
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    img *= (1.0 - 0.06 * r2)[..., None]
    img += rng.normal(0.0, 2.5, size=img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), canvas.labels, canvas.specimen


def _metadata(rng: np.random.Generator, number: int, group: str) -> dict[str, str]:
    day = dt.date(1950, 1, 1) + dt.timedelta(days=int(rng.integers(0, 70 * 365)))
    return {
        "catalogNumber": f"SYN-{number:06d}",
        "scientificName": f"{GENUS} {group}",
        "institutionCode": INSTITUTIONS[int(rng.integers(len(INSTITUTIONS)))],
        "eventDate": day.isoformat(),
        "locality": LOCALITIES[(number - 1) % len(LOCALITIES)],
        "pixelsPerMM": str(PIXELS_PER_MM),
    }


def _mimic(species: _Species, model: str | None) -> _Species:
    """``species`` with the colours of ``model``'s traits on the traits both have."""
    if model is None:
        return species
    found = next((s for s in _SPECIES if s.epithet == model), None)
    if found is None:
        raise ValueError(f"unknown synthetic species {model!r} to mimic; known: {[s.epithet for s in _SPECIES]}")
    colours = dict(found.traits)
    return replace(species, traits=tuple((kind, colours.get(kind, colour)) for kind, colour in species.traits))


def generate_collection(
    out_dir: str | Path,
    species: int = 3,
    per_species: int = 6,
    seed: int = 0,
    size: tuple[int, int] = (192, 256),
    mimics: dict[str, str] | None = None,
) -> SyntheticCollection:
    """Write a synthetic collection (images, ground-truth masks, one reference per species,
    manifest) under ``out_dir``; see the module docstring for why it looks the way it does.

    ``mimics`` maps a species to the one it mimics: every trait the two share is painted in
    the model's colours (its wing keeps its own), the convergence a mimicry ring shows."""
    if not 1 <= species <= MAX_SPECIES:
        raise ValueError(f"species must be in 1..{MAX_SPECIES}, got {species}")
    if per_species < 1:
        raise ValueError(f"per_species must be at least 1, got {per_species}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if min(size) < 32:
        raise ValueError(f"size (H, W) must be at least 32x32 pixels, got {size}")
    root = Path(out_dir)
    coll = SyntheticCollection(
        root=root,
        manifest=root / "manifest.csv",
        references=root / "references",
        ground_truth=root / "ground_truth",
        groups=[s.epithet for s in _SPECIES[:species]],
    )
    rows: list[dict[str, str]] = []
    for s_idx, spec in enumerate(_SPECIES[:species]):
        group = spec.epithet
        spec = _mimic(spec, (mimics or {}).get(group))
        _write_trait_reference(coll.references, s_idx, seed, size, spec)
        for i in range(per_species):
            rng = np.random.default_rng((seed, s_idx, 0, i))
            rgb, mask, _ = _render(spec, size, rng)
            stem = f"{group}-{i:03d}"
            rel = Path("images") / group / f"{stem}.png"
            save_image(root / rel, rgb)
            save_mask(coll.ground_truth / group / f"{stem}.png", mask)
            rows.append({"path": rel.as_posix(), "group": group, **_metadata(rng, len(rows) + 1, group)})
    with coll.manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return coll


# -- drawers: many specimens in one photo ----------------------------------------------

#: A tray holds a 3 x 4 grid of cells, at most one specimen per cell, so specimens never touch.
DRAWER_GRID = (3, 4)
MAX_DRAWER_SPECIMENS = DRAWER_GRID[0] * DRAWER_GRID[1]
INSTANCE_KIND = "specimen"


@dataclass
class Drawer:
    """A tray photo with its exact ground truth: ``instances`` holds k on specimen k's pixels
    (1..count, in reading order of the cells), ``traits`` the trait label map of all specimens."""

    image: np.ndarray
    instances: np.ndarray
    traits: np.ndarray

    @property
    def count(self) -> int:
        return int(self.instances.max())

    def instance_masks(self) -> list[np.ndarray]:
        return [self.instances == k for k in range(1, self.count + 1)]


@dataclass
class SyntheticDrawers:
    """Where a generated set of drawers lives."""

    root: Path
    manifest: Path
    references: Path  # trait references, REFS/<species>/ as for a collection
    instance_references: Path  # references/instances: a tray whose mask marks every specimen (instance_of: specimen)
    ground_truth: Path  # instances/<stem>.png and traits/<stem>.png
    counts: list[int]


def render_drawer(
    species: str, count: int, size: tuple[int, int] = (384, 512), seed: int = 0, index: int = 0
) -> Drawer:
    """A tray of ``count`` specimens of one species at random cells, sizes and rotations (any angle).

    Each specimen is rendered on its own, rotated, and pasted through its silhouette, so the
    instance and trait masks are exact; the foam between them has a faint texture and the
    tray a darker frame, the two things a proposal generator sees besides the specimens.
    """
    s_idx = next((i for i, s in enumerate(_SPECIES) if s.epithet == species), None)
    if s_idx is None:
        raise ValueError(f"unknown synthetic species {species!r}; known: {[s.epithet for s in _SPECIES]}")
    if not 0 <= count <= MAX_DRAWER_SPECIMENS:
        raise ValueError(f"count must be in 0..{MAX_DRAWER_SPECIMENS}, got {count}")
    if min(size) < 96:
        raise ValueError(f"drawer size (H, W) must be at least 96x96 pixels, got {size}")
    if index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index}")
    return _tray(s_idx, count, size, np.random.default_rng((seed, s_idx, 2, index)))


def _tray(s_idx: int, count: int, size: tuple[int, int], rng: np.random.Generator) -> Drawer:
    h, w = size
    foam = np.array([222, 218, 206]) + rng.integers(-6, 7, size=3)
    texture = cv2.resize(rng.normal(0.0, 4.0, size=(h // 16 + 1, w // 16 + 1)), (w, h), interpolation=cv2.INTER_CUBIC)
    image = np.clip(foam[None, None, :] + texture[..., None], 0, 255)
    border = max(3, round(0.03 * min(h, w)))
    frame = np.ones((h, w), bool)
    frame[border:-border, border:-border] = False
    image[frame] = foam * 0.55
    image = image.astype(np.uint8)
    instances = np.zeros((h, w), np.uint8)
    traits = np.zeros((h, w), np.uint8)

    rows, cols = DRAWER_GRID
    cell_h, cell_w = (h - 2 * border) / rows, (w - 2 * border) / cols
    cells = sorted(rng.permutation(MAX_DRAWER_SPECIMENS)[:count].tolist())
    for k, cell in enumerate(cells, start=1):
        r, c = divmod(cell, cols)
        side = int(min(cell_h, cell_w) * rng.uniform(0.6, 1.0))
        y0 = int(border + r * cell_h + rng.uniform(0, cell_h - side))
        x0 = int(border + c * cell_w + rng.uniform(0, cell_w - side))
        rgb, labels, silhouette = _render(_SPECIES[s_idx], (side, side), rng)
        turn = cv2.getRotationMatrix2D((side / 2, side / 2), float(rng.uniform(-180.0, 180.0)), 1.0)
        rgb = cv2.warpAffine(rgb, turn, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        labels = cv2.warpAffine(labels, turn, (side, side), flags=cv2.INTER_NEAREST)
        silhouette = cv2.warpAffine(silhouette.astype(np.uint8), turn, (side, side), flags=cv2.INTER_NEAREST) > 0
        window = (slice(y0, y0 + side), slice(x0, x0 + side))
        image[window][silhouette] = rgb[silhouette]
        instances[window][silhouette] = k
        traits[window][silhouette] = labels[silhouette]
    return Drawer(image, instances, traits)


def _write_trait_reference(references: Path, s_idx: int, seed: int, size: tuple[int, int],
                           spec: _Species | None = None) -> None:
    spec = spec or _SPECIES[s_idx]
    ref_dir = references / spec.epithet
    ref_rgb, ref_mask, _ = _render(spec, size, np.random.default_rng((seed, s_idx, 1, 0)))
    save_image(ref_dir / f"{spec.epithet}-ref.png", ref_rgb)
    save_mask(ref_dir / f"{spec.epithet}-ref{MASK_SUFFIX}", ref_mask)
    write_traits(ref_dir / TRAITS_FILE, species_traits(spec.epithet))


def generate_drawers(
    out_dir: str | Path,
    counts: tuple[int, ...] | list[int] = (0, 1, 3, 7, 12),
    species: str = "alba",
    seed: int = 0,
    size: tuple[int, int] = (384, 512),
    reference_count: int = 4,
) -> SyntheticDrawers:
    """Write drawer photos holding ``counts[i]`` specimens each, their instance and trait ground
    truth, a manifest, the species' trait reference and one instance reference (a tray of
    ``reference_count`` specimens whose mask marks each one)."""
    from .references import write_instance_spec

    root = Path(out_dir)
    out = SyntheticDrawers(
        root=root, manifest=root / "manifest.csv", references=root / "references",
        instance_references=root / "references" / "instances", ground_truth=root / "ground_truth", counts=list(counts),
    )
    s_idx = next((i for i, s in enumerate(_SPECIES) if s.epithet == species), None)
    if s_idx is None:
        raise ValueError(f"unknown synthetic species {species!r}; known: {[s.epithet for s in _SPECIES]}")
    if not counts:
        raise ValueError("counts must list at least one drawer")
    if not 1 <= reference_count <= MAX_DRAWER_SPECIMENS:
        raise ValueError(f"reference_count must be in 1..{MAX_DRAWER_SPECIMENS}, got {reference_count}")
    _write_trait_reference(out.references, s_idx, seed, (192, 256))
    ref = _tray(s_idx, reference_count, size, np.random.default_rng((seed, s_idx, 4, 0)))
    save_image(out.instance_references / "tray-ref.png", ref.image)
    save_mask(out.instance_references / f"tray-ref{MASK_SUFFIX}", ref.instances)
    write_instance_spec(out.instance_references / TRAITS_FILE, INSTANCE_KIND)
    rows: list[dict[str, str]] = []
    for i, count in enumerate(counts):
        drawer = render_drawer(species, count, size, seed, index=i)
        stem = f"drawer-{i:03d}"
        rel = Path("images") / f"{stem}.png"
        save_image(root / rel, drawer.image)
        save_mask(out.ground_truth / "instances" / f"{stem}.png", drawer.instances)
        save_mask(out.ground_truth / "traits" / f"{stem}.png", drawer.traits)
        meta = _metadata(np.random.default_rng((seed, s_idx, 3, i)), i + 1, species)
        meta["catalogNumber"] = f"SYN-DRAWER-{i + 1:04d}"
        rows.append({"path": rel.as_posix(), "group": species, **meta})
    with out.manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out
