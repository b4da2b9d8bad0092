"""Search: one trait, queried by an indexed specimen, an uploaded photo or text, with metadata and
measurement (``<trait>.<measurement>``) filters."""

from __future__ import annotations

import numpy as np
import streamlit as st

from sst_search import (
    UPLOAD_FORMATS,
    Filter,
    ImageLoadError,
    QueryError,
    SearchEngine,
    load_image,
)

from ..render import escape_markdown, result_grid, trait_label
from ..state import cache_key, specimen_labels

MAX_UPLOAD_MB = 20
#: A phone photo is 12-48 MP; more is refused from the header, before decoding (a 0.2 MB PNG can
#: decode to gigabytes).
MAX_UPLOAD_PIXELS = 50_000_000
UPLOAD_TYPES = ["jpg", "jpeg", "png", "tif", "tiff"]


def decode_upload(upload) -> np.ndarray:
    """The pixels of an uploaded photo (a Streamlit ``UploadedFile``): only what the whole
    pipeline reads (JPEG, PNG, TIFF by their content, not their name), within the upload size
    and pixel limits, both checked before decoding; :class:`ImageLoadError` naming it otherwise."""
    if upload.size > MAX_UPLOAD_MB * 2**20:
        raise ImageLoadError(upload.name, f"{upload.size / 2**20:.1f} MB is over the {MAX_UPLOAD_MB} MB limit")
    return load_image(upload.name, data=upload.getvalue(), formats=UPLOAD_FORMATS, max_pixels=MAX_UPLOAD_PIXELS)


OPS = ["==", "!=", "contains", "in", "not in", ">=", "<=", ">", "<"]
MAX_FILTERS = 6


def _filter_value(op: str, text: str) -> str | float | list[str]:
    """What the user typed, as the Filter expects it: lists for (not) in, numbers for comparisons."""
    if op in ("in", "not in"):
        return [v.strip() for v in text.split(",") if v.strip()]
    if op in (">=", "<=", ">", "<"):
        try:
            return float(text)
        except ValueError:
            return text  # dates and other text compare as text
    return text


def _filters(engine: SearchEngine, group: str) -> list[Filter]:
    filters = []
    if st.checkbox(f"Only specimens of {group}", key="only_group"):
        filters.append(Filter(field="group", op="==", value=group))
    fields = sorted(engine.metadata_keys()) + ["group", "path"] + engine.trait_fields()
    count = st.number_input("Metadata, measurement and mask confidence filters", min_value=0, max_value=MAX_FILTERS, value=0, key="filter_count")
    for i in range(int(count)):
        c1, c2, c3 = st.columns([2, 1, 2])
        field = c1.selectbox("Field", fields, key=f"filter_field_{i}")
        op = c2.selectbox("Op", OPS, key=f"filter_op_{i}")
        text = c3.text_input("Value", key=f"filter_value_{i}", help="comma-separated for 'in' / 'not in'").strip()
        if text:
            filters.append(Filter(field=field, op=op, value=_filter_value(op, text)))
    return filters


def _query(engine: SearchEngine, group: str) -> dict | None:
    """The query as ``search()`` keyword arguments, or None while it is incomplete."""
    mode = st.radio("Query by", ["Specimen", "Upload", "Text"], horizontal=True, key="query_mode")
    if mode == "Specimen":
        labels = specimen_labels(engine, cache_key(engine), group)
        if not labels:
            st.info(f"No indexed specimens in {escape_markdown(group)}.")
            return None
        sid = st.selectbox("Query specimen", list(labels), format_func=labels.get, key="query_specimen")
        return {"specimen_id": sid}
    if mode == "Upload":
        upload = st.file_uploader(f"Photo (JPEG, PNG or TIFF, at most {MAX_UPLOAD_MB} MB)", type=UPLOAD_TYPES,
                                  max_upload_size=MAX_UPLOAD_MB, key="upload")
        if upload is None:
            return None
        try:
            image = decode_upload(upload)
        except ImageLoadError as exc:
            st.error(escape_markdown(exc))
            return None
        st.image(image, caption=escape_markdown(upload.name), width=240)
        return {"image": image, "group": group}
    text = st.text_input("Describe the trait", key="query_text", placeholder="e.g. a broad red forewing band").strip()
    return {"text": text} if text else None


def render(engine: SearchEngine) -> None:
    st.header("Search by trait")
    groups = engine.groups()
    if not groups:
        st.info("The index holds no specimens yet.")
        return
    c1, c2 = st.columns(2)
    group = c1.selectbox("Group", groups, key="group")
    trait = c2.selectbox("Trait", engine.traits(group), format_func=trait_label, key="trait")
    query = _query(engine, group)
    with st.expander("Filters and options", expanded=False):
        filters = _filters(engine, group)
        c1, c2, c3 = st.columns(3)
        k = int(c1.number_input("Results (k)", min_value=1, max_value=100, value=8, key="k"))
        direction = c2.radio("Direction", ["similar", "different"], horizontal=True, key="direction")
        rerank = c3.checkbox("Re-rank by cycle consistency", key="rerank",
                             help="Tracks the query's trait into each candidate and back with SAM 2 (slow).")
    if st.button("Search", type="primary", disabled=query is None, key="run_search"):
        try:
            with st.spinner("Searching..."):
                st.session_state["results"] = engine.search(
                    trait, k, filters=filters, direction=direction, rerank=rerank, **query)
            st.session_state["results_for"] = f"{trait_label(trait)} · {direction}"
        except (QueryError, ImageLoadError, KeyError, ValueError, RuntimeError) as exc:
            st.session_state.pop("results", None)
            st.error(f"Search failed: {escape_markdown(exc)}")
    results = st.session_state.get("results")
    if results is None:
        return
    if not results:
        st.info("No specimens match these filters.")
        return
    st.subheader(f"{len(results)} results: {st.session_state['results_for']}")
    result_grid(engine, results, "search")
