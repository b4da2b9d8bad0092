"""The Map page's scatter: a Streamlit component of our own (``frontend/``: plain HTML and
JavaScript, no build step, nothing fetched from a CDN) that draws every point of a trait map
with WebGL in one draw call.

Why not a plotting library: at a million points, plotly's figure was 13.7 MB of JSON that
Streamlit stringified and the page re-parsed, and a lasso sent every selected point back as
a JSON object. Here the points travel once as binary (float32 coordinates, one colour byte
each, catalogNumbers as one UTF-8 block), the browser does the hovering, picking, lasso and
box selection itself, and a selection comes back as row numbers packed into base64.

The points are sent only when the browser does not hold them yet: each payload carries a
token (snapshot, map, colouring), the session remembers which tokens it sent, and a frame
that lacks what a token names (a fresh page load has a fresh session; a frame that was
re-created asks) gets them again. A rerun after a lasso sends a few hundred bytes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import streamlit.components.v1 as components

from sst_search import color_codes

_scatter = components.declare_component("map_scatter", path=str(Path(__file__).parent / "frontend"))


@dataclass(frozen=True)
class Points:
    """A map's points as the frame takes them: built once per snapshot and map."""

    token: str
    count: int
    xy: bytes  # float32 x, y per row
    labels: bytes  # each row's catalogNumber (or id), UTF-8, one per line
    groups: bytes  # each row's group as an index into group_names, uint16 or uint32
    group_width: int
    group_names: list[str]


@dataclass(frozen=True)
class Colors:
    """One colouring of a map's points: a byte per point and the palette it indexes."""

    token: str
    name: str
    codes: bytes
    palette: list[list[int]]
    legend: list[tuple[str, list[int]]]
    numeric: bool


@dataclass(frozen=True)
class Picked:
    """What the curator did on the map: a lasso or box (``rows``, each once, ascending) or a
    click on one point (``clicked``)."""

    mode: str | None = None
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    clicked: int | None = None


def points_of(table: pd.DataFrame, token: str) -> Points:
    """``table``: a map table (:func:`sst_search.map_view.map_table`); rows keep its order."""
    xy = np.ascontiguousarray(table[["x", "y"]].to_numpy(np.float32))
    labels = table["catalogNumber"].fillna(table["specimen_id"].astype(str)).astype(str).str.replace("\n", " ")
    codes, names = pd.factorize(table["group"].fillna("-").astype(str))
    width = 2 if len(names) < 2**16 else 4
    return Points(token, len(table), xy.tobytes(), "\n".join(labels).encode(),
                  codes.astype(np.uint16 if width == 2 else np.uint32).tobytes(), width, [str(n) for n in names])


def colors_of(values: pd.Series, name: str, token: str) -> Colors:
    codes, palette, legend, numeric = color_codes(values)
    return Colors(token, name, codes.tobytes(), palette.tolist(), [(n, list(rgb)) for n, rgb in legend], numeric)


def decode_rows(selection: dict, count: int) -> np.ndarray:
    """Row numbers of a selection the frame sent: ``rows`` (little-endian int32) or, for a
    large one, ``bitmap`` (a bit per row, least significant first); rows outside the map are
    dropped."""
    if "bitmap" in selection:
        bits = np.unpackbits(np.frombuffer(base64.b64decode(selection["bitmap"]), np.uint8), bitorder="little")
        return np.flatnonzero(bits[:count]).astype(np.int64)
    rows = np.frombuffer(base64.b64decode(selection.get("rows", "")), "<i4").astype(np.int64)
    return np.unique(rows[(rows >= 0) & (rows < count)])


def map_scatter(points: Points, colors: Colors, *, key: str, title: str = "", hits: list[int] | None = None,
                query: int | None = None, height: int = 640) -> Picked:
    """Draw the map; ``hits`` and ``query``: rows of a search result to ring and mark."""
    value = st.session_state.get(key) or {}
    sent_key = f"{key}-sent"
    sent = st.session_state.get(sent_key, {})
    need = value.get("need")
    resend = need is not None and need != sent.get("need")
    args: dict = {"points_token": points.token, "colors_token": colors.token, "title": title, "height": height,
                  "hits": [int(r) for r in hits or []], "query": None if query is None else int(query),
                  "color_name": colors.name, "palette": colors.palette, "legend": colors.legend,
                  "numeric": colors.numeric, "served": need if resend else sent.get("served")}
    if resend or sent.get("points") != points.token:
        args |= {"xy": points.xy, "labels": points.labels, "groups": points.groups,
                 "group_width": points.group_width, "group_names": points.group_names}
    if resend or sent.get("colors") != colors.token:
        args["codes"] = colors.codes
    st.session_state[sent_key] = {"points": points.token, "colors": colors.token, "need": need,
                                  "served": args["served"]}
    value = _scatter(key=key, default=None, **args) or {}
    if value.get("token") != points.token:  # a pick on another snapshot's or map's rows
        return Picked()
    selection, clicked = value.get("selection"), value.get("clicked")
    if selection:
        return Picked(selection.get("mode"), decode_rows(selection, points.count))
    if clicked is not None and 0 <= int(clicked) < points.count:
        return Picked("click", np.array([int(clicked)], np.int64), int(clicked))
    return Picked()
