"""Photos split into instances (``index --instances``): the photo with each instance outlined
and numbered, and a link from each number to that instance's specimen page."""

from __future__ import annotations

import cv2
import numpy as np
import streamlit as st

from sst_search import (
    ImageLoadError,
    InstanceSource,
    SearchEngine,
    decode_mask,
    instance_sources,
    load_image,
    source_of_item,
    trait_color,
)

from ..render import escape_markdown
from ..state import open_specimen

COLUMNS = 6


def numbered_outlines(image: np.ndarray, source: InstanceSource) -> np.ndarray:
    """The photo with every instance's outline in its colour and its number at its box corner."""
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for row in source.instances:
        colour = trait_color(row.number)
        contours, _ = cv2.findContours(decode_mask(row.rle).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, thickness)
        x0, y0 = row.box[0], max(row.box[1], 12 * thickness)
        cv2.putText(out, str(row.number), (x0, y0), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, (0, 0, 0), 3 * thickness)
        cv2.putText(out, str(row.number), (x0, y0), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour, thickness)
    return out


def open_photo(source_key: str) -> None:
    """Button callback: show one photo on this page."""
    st.session_state["page"] = "Photos"
    st.session_state["photo_key"] = source_key


def source_link(engine: SearchEngine, item_path: str) -> None:
    """On a specimen page: which photo this instance was cut from, with a way back to it."""
    linked = source_of_item(engine.store, item_path)
    if linked is None:
        return
    source, number = linked
    st.markdown(f"Instance **{number}** of {len(source.instances)} in photo {escape_markdown(source.source_key)}")
    st.button("Show the photo", key="open-photo", on_click=open_photo, args=(source.source_key,))


def render(engine: SearchEngine) -> None:
    st.header("Photos")
    sources = instance_sources(engine.store)
    if not sources:
        st.info("No photo has been split into instances (`sst-search index --instances`).")
        return
    by_key = {s.source_key: s for s in sources}
    key = st.selectbox(
        "Photo", list(by_key), key="photo_key",
        format_func=lambda k: f"{k} ({len(by_key[k].instances)} instances)" if by_key[k].status == "split"
        else f"{k} [{by_key[k].status}]",
    )
    source = by_key[key]
    if source.status != "split":
        st.error(f"{escape_markdown(source.source_path)}: {escape_markdown(source.error)}")
        return
    try:
        image = load_image(source.source_path)
    except ImageLoadError as exc:
        st.warning(f"image unavailable: {escape_markdown(exc)}")
    else:
        st.image(numbered_outlines(image, source), width="stretch")
    st.caption(f"{len(source.instances)} instances from {source.candidates} candidates; "
               "score = best IoU of the cycle (instance tracked back onto a reference instance) or forward direction.")
    cols = st.columns(COLUMNS)
    for i, row in enumerate(source.instances):
        with cols[i % COLUMNS]:
            label = f"{row.number} · score {row.score:.2f}" if row.score is not None else str(row.number)
            if row.specimen_id is None:
                st.caption(f"{label} (not indexed)")
            else:
                st.button(label, key=f"instance-{row.number}", on_click=open_specimen, args=(row.specimen_id,))
