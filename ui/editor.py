"""The mask editor shared by the References and Review pages: click points or drag a box and
SAM 2 proposes a mask; more clicks refine it; a brush adds or erases pixels by hand. Without
SAM 2 (no weights here) the brush and eraser still work: drawing by hand needs no model."""

from __future__ import annotations

import cv2
import numpy as np
import streamlit as st
from PIL import Image
from streamlit_image_coordinates import streamlit_image_coordinates

from sst_search import (
    ClickSegmenter,
    QueryError,
    SearchEngine,
    WeightsError,
    build_click_segmenter,
    overlay,
)

from .render import escape_markdown
from .state import cache_key

TOOLS = ("Positive point", "Negative point", "Box", "Brush", "Eraser")
HAND_TOOLS = ("Brush", "Eraser")
#: Longest side of the image shown for clicking (clicks are mapped back to full resolution).
DISPLAY_SIDE = 640


@st.cache_resource(show_spinner="Building SAM 2's image predictor...")
def click_segmenter(_engine: SearchEngine, key: str) -> ClickSegmenter:
    """Built once per index snapshot, over the tracker the index was built with (same checkpoint and size)."""
    return build_click_segmenter(_engine.tracker)


def segmenter_or_error(engine: SearchEngine) -> ClickSegmenter | None:
    """SAM 2's click segmenter, or None (with a warning saying how to get it): the editor then draws by hand."""
    try:
        segmenter = click_segmenter(engine, cache_key(engine))
    except (QueryError, WeightsError, ValueError) as exc:
        st.warning(f"SAM 2 is not available to propose masks: {escape_markdown(exc)}. Draw with the brush, or start the app with "
                   "`sst-search ui --db INDEX --weights CHECKPOINT.pt` to click instead.")
        return None
    if segmenter.random_weights:
        st.warning("SAM 2 has random weights: its proposals are not meaningful (the page still works; "
                   "use the brush, or install the real checkpoint).")
    return segmenter


def _state(key: str) -> dict:
    return st.session_state.setdefault(f"{key}-editor", {"clicks": [], "box": None, "proposal": None, "mask": None,
                                                         "strokes": 0})


def reset(key: str) -> None:
    st.session_state.pop(f"{key}-editor", None)


def _display(image: np.ndarray, mask: np.ndarray | None, clicks: list, scale: float) -> np.ndarray:
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    shown = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale != 1 else image.copy()
    if mask is not None:
        small = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        shown = overlay(shown, small)
    for x, y, positive in clicks:
        cv2.circle(shown, (round(x * scale), round(y * scale)), 5, (0, 200, 0) if positive else (220, 0, 0), -1)
    return shown


def _add_prompt(state: dict, value: dict, tool: str, to_image: float) -> bool:
    """Record a click or a dragged box (in image pixels); False for a box too small to mean anything."""
    if tool != "Box":
        state["clicks"].append((value["x"] * to_image, value["y"] * to_image, tool == "Positive point"))
        return True
    x1, x2 = sorted((value["x1"] * to_image, value["x2"] * to_image))
    y1, y2 = sorted((value["y1"] * to_image, value["y2"] * to_image))
    if min(x2 - x1, y2 - y1) < 2:
        return False
    state["box"] = (x1, y1, x2, y2)
    return True


def mask_editor(segmenter: ClickSegmenter | None, image: np.ndarray, key: str) -> np.ndarray | None:
    """Render the editor for ``image``; returns the current mask (boolean, image size) or None.
    Without a ``segmenter`` only the brush and eraser are offered."""
    state = _state(key)
    scale = min(1.0, DISPLAY_SIDE / max(image.shape[:2]))
    tool = st.radio("Tool", TOOLS if segmenter is not None else HAND_TOOLS, horizontal=True, key=f"{key}-tool",
                    help="Points and boxes ask SAM 2 for a mask; the brush and eraser edit it by hand.")
    shown = _display(image, state["mask"], state["clicks"], scale)
    if tool in HAND_TOOLS:
        # Imported here: the canvas declares its component at import time, which fails outside a
        # Streamlit runtime, so importing the pages (tests, tooling) would fail with it.
        from streamlit_drawable_canvas import st_canvas

        width = st.slider("Brush size", 2, 60, 15, key=f"{key}-brush")
        canvas = st_canvas(
            stroke_width=width, stroke_color="#ff00ff", background_image=Image.fromarray(shown),
            height=shown.shape[0], width=shown.shape[1], drawing_mode="freedraw", return_image_data=True,
            key=f"{key}-canvas-{state['strokes']}",
        )
        if st.button("Apply strokes", key=f"{key}-apply") and canvas.image_data is not None:
            painted = cv2.resize((canvas.image_data[..., 3] > 0).astype(np.uint8), (image.shape[1], image.shape[0]),
                                 interpolation=cv2.INTER_NEAREST).astype(bool)
            current = state["mask"] if state["mask"] is not None else np.zeros(image.shape[:2], bool)
            state["mask"] = current | painted if tool == "Brush" else current & ~painted
            state["proposal"] = None  # a hand edit is not a SAM 2 proposal any more
            state["strokes"] += 1  # a fresh canvas for the next strokes
            st.rerun()
    else:
        value = streamlit_image_coordinates(shown, key=f"{key}-click-{tool}", click_and_drag=tool == "Box",
                                            cursor="crosshair")
        seen = f"{key}-seen-{tool}"  # the component repeats its last click on every rerun; act on new ones only
        if value is not None and value != st.session_state.get(seen):
            st.session_state[seen] = value
            if _add_prompt(state, value, tool, image.shape[1] / value["width"]):
                with st.spinner("SAM 2 is proposing a mask..."):
                    proposal = segmenter.propose(image, state["clicks"], state["box"], previous=state["proposal"])
                state["proposal"], state["mask"] = proposal, proposal.mask
                st.rerun()
            st.info("Drag to draw a box.")
    mask = state["mask"]
    if mask is not None:
        score = f", SAM 2 score {state['proposal'].score:.2f}" if state["proposal"] is not None else " (edited by hand)"
        st.caption(f"Proposed mask: {int(mask.sum())} pixels{score}")
    if st.button("Clear mask", key=f"{key}-clear"):
        reset(key)
        st.rerun()
    return mask
