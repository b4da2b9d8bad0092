"""A pattern atlas: a trait map cut into a grid, each cell shown by a real specimen.

A map's axes mean nothing by themselves; what a region of pattern space *looks like* is
what a curator wants to read off it (the R package patternize draws patterns along a
principal axis from a model). Here every cell of a grid over the map shows the trait of
the real specimen nearest the cell's centre among the specimens inside the cell, so the
picture is of the collection itself and a cell is never drawn from a specimen that lies
elsewhere. Empty cells stay blank.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .pattern_map import TraitMap
from .store import Store
from .thumbnails import trait_thumbnails


@dataclass
class AtlasCell:
    """One grid cell: its place (row 0 at the top of the map), its bounds on the map, and the
    specimen shown (None for an empty cell) with how many points the cell holds."""

    row: int
    col: int
    x0: float
    x1: float
    y0: float
    y1: float
    specimen_id: int | None
    count: int


def atlas_cells(tmap: TraitMap, rows: int = 8, cols: int = 8) -> list[AtlasCell]:
    """The grid over the map's extent, row-major from the top left."""
    if rows < 1 or cols < 1:
        raise ValueError(f"an atlas needs at least one row and column, not {rows} x {cols}")
    xy = tmap.xy
    if not len(xy):
        return []
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    # column from x, row from y with row 0 on top; points on the upper edges belong to the last cell
    col = np.minimum(((xy[:, 0] - lo[0]) / span[0] * cols).astype(int), cols - 1)
    row = np.minimum(((hi[1] - xy[:, 1]) / span[1] * rows).astype(int), rows - 1)
    width, height = span[0] / cols, span[1] / rows
    cells = []
    for r in range(rows):
        for c in range(cols):
            x0, y1 = lo[0] + c * width, hi[1] - r * height
            inside = np.flatnonzero((row == r) & (col == c))
            chosen = None
            if len(inside):
                centre = np.array([x0 + width / 2, y1 - height / 2])
                chosen = int(tmap.ids[inside[np.linalg.norm(xy[inside] - centre, axis=1).argmin()]])
            cells.append(AtlasCell(r, c, float(x0), float(x0 + width), float(y1 - height), float(y1), chosen, len(inside)))
    return cells


def atlas_image(store: Store, trait: str, cells: list[AtlasCell], tile: int = 96, gap: int = 2) -> np.ndarray:
    """The atlas as one RGB picture: each cell's trait crop, blank (light grey) where empty."""
    if not cells:
        return np.full((tile, tile, 3), 255, np.uint8)
    rows, cols = max(c.row for c in cells) + 1, max(c.col for c in cells) + 1
    out = np.full((rows * (tile + gap) + gap, cols * (tile + gap) + gap, 3), 255, np.uint8)
    pictures = trait_thumbnails(store, [c.specimen_id for c in cells if c.specimen_id is not None], trait, tile)
    for cell in cells:
        y, x = gap + cell.row * (tile + gap), gap + cell.col * (tile + gap)
        picture = pictures.get(cell.specimen_id) if cell.specimen_id is not None else None
        if picture is None:
            out[y:y + tile, x:x + tile] = 235
            continue
        out[y:y + tile, x:x + tile] = picture
        cv2.putText(out, str(cell.count), (x + 3, y + tile - 4), cv2.FONT_HERSHEY_PLAIN, 0.8, (90, 90, 90), 1, cv2.LINE_AA)
    return out
