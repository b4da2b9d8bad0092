"""A trait map as a table and a picture: what ``sst-search map --out`` writes and the app draws.

The same table (coordinates, group, catalogNumber, the colouring column) feeds the PNG, the
interactive HTML and the app's WebGL scatter (``ui/map_scatter``), so all three show the same
points in the same colours. The PNG is rasterised with NumPy and OpenCV (a million points in well under a
second, no plotting library needed); the HTML is a plotly ``Scattergl`` figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd

from .measure import FIELD_NAMES
from .pattern_map import TraitMap
from .store import Store
from .store.maps import trait_measurement

#: Categorical colours (RGB); values beyond the first few share the last, grey, "other".
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127))
#: Categories given their own colour; the rest are "other".
MAX_CATEGORIES = len(PALETTE) - 1


def color_columns(store: Store) -> list[str]:
    """What a map can be coloured by: group, each metadata column, each measurement."""
    return ["group", *sorted(store.metadata_keys()), *FIELD_NAMES]


def map_table(store: Store, tmap: TraitMap, color_by: str | None = "group") -> pd.DataFrame:
    """One row per point: ``specimen_id, x, y, fitted, group, catalogNumber`` and ``color_by``
    (a metadata column, or a measurement of the map's trait)."""
    groups = store.group_labels()
    numbers = store.metadata_labels("catalogNumber")
    ids = [int(i) for i in tmap.ids]
    table = pd.DataFrame({"specimen_id": tmap.ids.astype(np.int64), "x": tmap.xy[:, 0], "y": tmap.xy[:, 1],
                          "fitted": tmap.fitted, "group": [groups.get(i) for i in ids],
                          "catalogNumber": [numbers.get(i) for i in ids]})
    if color_by and color_by not in table:
        if color_by in FIELD_NAMES:
            values = trait_measurement(store, tmap.trait_name, color_by)
        elif color_by in store.metadata_keys():
            values = store.metadata_labels(color_by)
        else:
            raise ValueError(f"cannot colour by {color_by!r}: not a metadata column or measurement "
                             f"(choose from {', '.join(color_columns(store))})")
        table[color_by] = [values.get(i) for i in ids]
    return table


def is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and values.dtype != bool


def categories(values: pd.Series) -> list[str]:
    """The most frequent values, each shown in its own colour (the rest are "other")."""
    return [str(v) for v in values.dropna().astype(str).value_counts().index[:MAX_CATEGORIES]]


#: Colour code of a point whose numeric value is missing (the ramp takes codes 0 to 254).
MISSING_CODE = 255


class ColorCodes(NamedTuple):
    codes: np.ndarray  # uint8 per point
    palette: np.ndarray  # RGB rows the codes index
    legend: list[tuple[str, tuple[int, int, int]]]
    numeric: bool  # a ramp between two values, rather than categories


def color_codes(values: pd.Series) -> ColorCodes:
    """One byte per point indexing a palette of RGB rows, and the legend: so the
    app's scatter receives a million colours as a million bytes. Text: a code per frequent
    category, the last palette entry for the rest; numbers: a 255-step viridis ramp between
    the smallest and largest value, code :data:`MISSING_CODE` (grey) for missing ones."""
    if is_numeric(values):
        numbers = values.astype(float).to_numpy()
        finite = np.isfinite(numbers)
        lo, hi = (numbers[finite].min(), numbers[finite].max()) if finite.any() else (0.0, 1.0)
        codes = np.full(len(numbers), MISSING_CODE, np.uint8)
        codes[finite] = np.round((MISSING_CODE - 1) * (numbers[finite] - lo) / ((hi - lo) or 1)).astype(np.uint8)
        steps = np.round(np.linspace(0, 255, MISSING_CODE)).astype(np.uint8)[:, None]
        palette = np.vstack([cv2.applyColorMap(steps, cv2.COLORMAP_VIRIDIS)[:, 0, ::-1], [PALETTE[-1]]]).astype(np.uint8)
        return ColorCodes(codes, palette, [(f"{lo:.4g}", tuple(int(c) for c in palette[0])),
                                           (f"{hi:.4g}", tuple(int(c) for c in palette[MISSING_CODE - 1]))], True)
    names = categories(values)
    found = pd.Categorical(values.astype(str).where(values.notna(), None), categories=names).codes
    codes = np.where(found < 0, MAX_CATEGORIES, found).astype(np.uint8)
    legend = [(n, PALETTE[i]) for i, n in enumerate(names)]
    if (codes == MAX_CATEGORIES).any():
        legend.append(("other / none", PALETTE[-1]))
    return ColorCodes(codes, np.asarray(PALETTE, np.uint8), legend, False)


def point_colors(values: pd.Series) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int]]]]:
    """RGB per point and the legend (:func:`color_codes` looked up)."""
    codes, palette, legend, _ = color_codes(values)
    return palette[codes], legend


def map_png(table: pd.DataFrame, color_by: str = "group", size: int = 1200, title: str = "") -> np.ndarray:
    """The map as an RGB picture with a legend: one dot per point, later points on top."""
    legend_width, margin = 260, 20
    out = np.full((size, size + legend_width, 3), 255, np.uint8)
    colors, legend = point_colors(table[color_by]) if color_by in table else (
        np.tile(np.asarray(PALETTE[0], np.uint8), (len(table), 1)), [])
    if len(table):
        xy = table[["x", "y"]].to_numpy(float)
        lo, hi = xy.min(0), xy.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        px = margin + ((xy[:, 0] - lo[0]) / span[0] * (size - 2 * margin)).astype(int)
        py = size - margin - ((xy[:, 1] - lo[1]) / span[1] * (size - 2 * margin)).astype(int)
        radius = 1 if len(table) > 20_000 else 2 if len(table) > 2_000 else 5
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                if dx * dx + dy * dy <= radius * radius:
                    out[np.clip(py + dy, 0, size - 1), np.clip(px + dx, 0, size - 1)] = colors
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(out, title[:60], (margin, 16), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(out, color_by[:28], (size + 10, 40), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (name, rgb) in enumerate(legend):
        y = 70 + 24 * i
        cv2.rectangle(out, (size + 10, y - 12), (size + 26, y + 2), tuple(int(c) for c in rgb), -1)
        cv2.putText(out, name[:26], (size + 34, y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return out


#: Maps up to this many points carry catalogNumber and group per point for hovering in the HTML
#: export; larger ones leave hover labels out (per-point strings would be most of the file).
HOVER_MAX = 20_000


def map_figure(table: pd.DataFrame, color_by: str = "group", title: str = ""):
    """The map as a plotly figure (what ``sst-search map --out FILE.html`` writes): one WebGL
    (``Scattergl``) trace per category in one flat colour, or one trace with a colour scale
    for numbers; coordinates as float32 typed arrays, hover labels up to :data:`HOVER_MAX` points."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labelled = len(table) <= HOVER_MAX
    label = (table["catalogNumber"].fillna(table["specimen_id"].astype(str)) + "<br>"
             + table["group"].fillna("").astype(str)).to_numpy() if labelled else None
    x, y = table["x"].to_numpy(np.float32), table["y"].to_numpy(np.float32)

    def add(rows: np.ndarray, name: str, marker: dict) -> None:
        hover = {"text": label[rows], "hovertemplate": "%{text}<extra></extra>"} if labelled else {"hoverinfo": "none"}
        fig.add_trace(go.Scattergl(x=x[rows], y=y[rows], mode="markers", name=name, marker=marker, **hover))

    values = table[color_by] if color_by in table else pd.Series([None] * len(table))
    if is_numeric(values):
        add(np.arange(len(table)), color_by, {"size": 6, "color": values.to_numpy(np.float32), "colorscale": "Viridis",
                                              "showscale": True, "colorbar": {"title": color_by}})
    else:
        names = categories(values)
        codes = pd.Categorical(values.astype(str).where(values.notna(), None), categories=names).codes
        for code, name in [*enumerate(names), (-1, "other / none")]:
            rows = np.flatnonzero(codes == code)
            if len(rows):
                add(rows, name, {"size": 6, "color": f"rgb{tuple(PALETTE[code])}"})
    fig.update_layout(title=title, dragmode="zoom", height=640, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      xaxis={"showticklabels": False, "title": None}, yaxis={"showticklabels": False, "title": None},
                      legend={"itemsizing": "constant"})
    return fig


def save_map(table: pd.DataFrame, out: Path, color_by: str = "group", title: str = "") -> None:
    """Write the map by ``out``'s suffix: ``.png`` picture, ``.html`` interactive, ``.parquet`` / ``.csv`` coordinates."""
    suffix = out.suffix.lower()
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        ok = cv2.imwrite(str(out), map_png(table, color_by, title=title)[:, :, ::-1])
        if not ok:
            raise OSError(f"{out}: could not write the picture")
    elif suffix == ".html":
        map_figure(table, color_by, title).write_html(out, include_plotlyjs=True)
    elif suffix == ".parquet":
        table.to_parquet(out, index=False)
    elif suffix == ".csv":
        table.to_csv(out, index=False)
    else:
        raise ValueError(f"{out}: write .png, .html, .parquet or .csv")
