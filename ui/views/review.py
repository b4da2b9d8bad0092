"""Review: masks worth a second look (low confidence, unusual area, missing trait), with the overlay;
accept, reject, or correct with the click/brush editor; promote a specimen to a support."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from sst_search import (
    EmbedderError,
    ImageLoadError,
    QueryError,
    ReferencesError,
    ReviewItem,
    SearchEngine,
    decide,
    default_reviewer,
    load_image,
    promote,
    references_dir_of,
    review_queue,
)

from ..editor import mask_editor, segmenter_or_error
from ..render import escape_markdown, outlined
from ..state import cache_key, live_db, load_engine, specimen_labels

EDITOR = "review"


def _item_label(item: ReviewItem, names: dict[int, str]) -> str:
    return f"{names.get(item.specimen_id, item.specimen_id)} · {item.trait_name}: {'; '.join(item.reasons)}"


def _published(message: str) -> None:
    """A decision was written and published: read the new snapshot from now on."""
    load_engine.clear()
    st.cache_data.clear()
    st.session_state["review_message"] = message
    st.rerun()


def _embedder(engine: SearchEngine):
    """The index's embedder, so a corrected trait is re-embedded; None when the index records none."""
    try:
        return engine.embedder
    except (QueryError, EmbedderError) as exc:
        st.warning(f"The corrected trait cannot be re-embedded: {escape_markdown(exc)}")
        return None


def _decide(engine: SearchEngine, item: ReviewItem, decision: str, reviewer: str, mask=None) -> None:
    try:
        problems = decide(live_db(), item.specimen_id, item.trait_name, decision, reviewer, mask=mask,
                          embedder=_embedder(engine) if decision == "correct" else None)
    except (KeyError, ValueError, RuntimeError) as exc:
        st.error(f"Could not store the decision: {escape_markdown(exc)}")
        return
    _published("; ".join([f"{decision}: {item.trait_name} of specimen {item.specimen_id}", *problems]))


def render(engine: SearchEngine) -> None:
    st.header("Review")
    if "review_message" in st.session_state:
        st.success(st.session_state.pop("review_message"))
    groups = engine.groups()
    c1, c2, c3 = st.columns([2, 1, 2])
    group = c1.selectbox("Group", ["(all)", *groups], key="review_group")
    include = c2.checkbox("Show decided", key="review_all")
    reviewer = c3.text_input("Reviewer", value=default_reviewer(), key="review_by").strip() or default_reviewer()
    items = review_queue(engine.store, group=None if group == "(all)" else group, include_decided=include)
    if not items:
        st.success("Nothing to review.")
        return
    st.caption(f"{len(items)} masks to review, worst first.")
    names = specimen_labels(engine, cache_key(engine))  # catalogNumber / file stem, not 19-digit ids
    st.dataframe(pd.DataFrame([{"specimen": names.get(i.specimen_id, str(i.specimen_id)), "trait": i.trait_name,
                                "reasons": "; ".join(i.reasons), "decision": i.decision or ""} for i in items]),
                 hide_index=True)
    index = st.selectbox("Mask", range(len(items)), format_func=lambda k: _item_label(items[k], names), key="review_item")
    item = items[index]
    row = engine.store.get_specimen(item.specimen_id)
    try:
        image = load_image(row["path"])
    except ImageLoadError as exc:
        st.warning(f"image unavailable: {escape_markdown(exc)}")
        return
    masks = {m.trait_name: m for m in engine.store.trait_masks(item.specimen_id)}
    current = masks.get(item.trait_name)
    left, right = st.columns([3, 2])
    with left:
        shown = outlined(image, current.mask(), current.trait_id) if current is not None else image
        st.image(shown, caption=f"{row['path']}: {item.trait_name}" + ("" if current else " (not found)"),
                 width="stretch")
    with right:
        st.markdown("  \n".join(f"- {escape_markdown(r)}" for r in item.reasons))
        if item.decision:
            st.info(f"Decided: {item.decision} by {escape_markdown(item.reviewer)}")
        b1, b2 = st.columns(2)
        if b1.button("Accept", key="review_accept", disabled=current is None):
            _decide(engine, item, "accept", reviewer)
        if b2.button("Reject", key="review_reject"):
            _decide(engine, item, "reject", reviewer)
        if st.button("Promote specimen to a support of its group", key="review_promote",
                     help="Adds the image and its current masks to the references; re-index to use it."):
            try:
                support = promote(live_db(), item.specimen_id, references_dir_of(engine.store), reviewer)
            except (KeyError, ReferencesError, RuntimeError) as exc:
                st.error(f"Could not promote: {escape_markdown(exc)}")
            else:
                _published(f"added support {support.image_path}; re-index to apply it to group {item.group_name}")
    # SAM 2 is built only when a correction is wanted: listing and deciding stay instant
    if st.toggle("Correct this mask", key="review_correcting"):
        mask = mask_editor(segmenter_or_error(engine), image, f"{EDITOR}-{item.specimen_id}-{item.trait_name}")
        if st.button("Save correction", key="review_correct", disabled=mask is None or not mask.any()):
            _decide(engine, item, "correct", reviewer, mask=mask)
