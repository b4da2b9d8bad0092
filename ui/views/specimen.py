"""Specimen: every trait overlaid with a legend, its measurements, and its nearest neighbours per trait."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from sst_search import SPECIMEN_TRAIT, ImageLoadError, QueryError, SearchEngine, export

from ..render import escape_markdown, legend, overlaid, result_grid, trait_label
from ..state import cache_key, specimen_image, specimen_labels
from . import photos

NEIGHBOURS = 4


def _neighbours(engine: SearchEngine, specimen_id: int, traits: list[str]) -> None:
    st.subheader("Nearest neighbours")
    for trait in [SPECIMEN_TRAIT, *traits]:
        st.markdown(f"**{trait_label(trait)}**")
        try:
            results = engine.search(trait, NEIGHBOURS, specimen_id=specimen_id)
        except (QueryError, KeyError) as exc:
            st.caption(f"no neighbours: {escape_markdown(exc)}")
            continue
        result_grid(engine, results, f"nn-{trait}", columns=NEIGHBOURS, compact=True)


def _provenance(row: dict) -> None:
    """Where the pixels came from and under which licence (plain text: never rendered as Markdown)."""
    licence, holder, source = row.get("license"), row.get("rights_holder"), row.get("source")
    st.text(f"Licence: {licence or 'not recorded'}" + (f" · rights holder: {holder}" if holder else ""))
    if source:
        fetched = row.get("fetched_at")
        st.text(f"Fetched {fetched:%Y-%m-%d %H:%M} UTC" if fetched else "Fetched from the web")
        st.link_button("Image source", source)
    if row.get("full_source"):
        size = f"{row['original_width']}x{row['original_height']} px" if row.get("original_width") else "full size"
        st.text(f"Indexed at {row['width']}x{row['height']} px; the original ({size}) is fetched for crops")
        st.link_button("Full-resolution image", row["full_source"])
    if licence and licence.lower().startswith(("http://", "https://")):
        st.link_button("Licence", licence)


def render(engine: SearchEngine) -> None:
    st.header("Specimen")
    labels = specimen_labels(engine, cache_key(engine), indexed_only=False)
    if not labels:
        st.info("The index holds no specimens yet.")
        return
    if st.session_state.get("specimen_id") not in labels:
        st.session_state.pop("specimen_id", None)  # a stale link or a specimen gone from this snapshot
    sid = st.selectbox("Specimen", list(labels), format_func=labels.get, key="specimen_id")
    row = engine.store.get_specimen(sid)
    masks = engine.store.trait_masks(sid)
    if row["status"] != "indexed":
        st.error(f"{escape_markdown(row['path'])}: {row['status']}: {escape_markdown(row['error'])}")

    left, right = st.columns([3, 2])
    with left:
        try:
            image = specimen_image(engine, cache_key(engine), sid)
        except (ImageLoadError, KeyError) as exc:
            st.warning(f"image unavailable: {escape_markdown(exc)}")
        else:
            label_map = engine.store.label_map(sid)
            st.image(overlaid(image, label_map) if label_map is not None else image, width="stretch")
        legend([(m.trait_id, m.trait_name) for m in masks])
    with right:
        turned = row.get("orientation")
        st.markdown(f"**Group:** {escape_markdown(row['group_name'] or '-')}  \n**Path:** {escape_markdown(row['path'])}  \n**Size:** "
                    f"{row['width']} x {row['height']} px"
                    + (f"  \n**Segmented turned by:** {turned} degrees" if turned else "")
                    + ("  \n**Segmented mirrored** (flipped left-right)" if row.get("mirrored") else ""))
        _provenance(row)
        metadata = row["metadata"] or {}
        if metadata:
            st.table(pd.DataFrame({"value": [str(v) for v in metadata.values()]}, index=list(metadata)))
        photos.source_link(engine, row["path"])

    st.subheader("Traits")
    if not masks:
        st.info("No trait was found on this specimen.")
        return
    table = export.measurements_table(engine.store, specimen_ids=[sid])
    st.dataframe(table[list(export.PER_TRAIT_COLUMNS)], hide_index=True)
    st.caption("Confidence: SAM 2's object score (a logit: above 0 SAM 2 sees the trait), its predicted IoU, "
               "and the cycle-consistency IoU when indexed with --quality.")
    st.dataframe(
        pd.DataFrame(
            [(m.trait_name, m.object_score, m.predicted_iou, m.quality) for m in masks],
            columns=["trait", "object score", "predicted IoU", "cycle IoU"],
        ),
        hide_index=True,
    )
    _neighbours(engine, sid, [m.trait_name for m in masks])
