"""Collection: what is indexed, how trait areas are distributed, what failed, and which models made it."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st

from sst_search import SearchEngine, export

from ..render import escape_markdown
from ..state import cache_key


@st.cache_data(show_spinner=False)
def measurements(_engine: SearchEngine, key: str, groups: tuple[str, ...] | None = None) -> pd.DataFrame:
    return export.measurements_table(_engine.store, groups=groups)


def _weights_word(sha256: str | None) -> str:
    if sha256 == "random":
        return "random weights"
    return f"weights {sha256[:12]}" if sha256 and sha256 != "none" else "no learned weights"


def fingerprint_banner(engine: SearchEngine) -> None:
    """Which model of the index has random weights, each named (SAM 2, and the embedder by its name)."""
    fp = engine.fingerprints()
    if fp.get("random_weights"):
        st.error(
            "RANDOM WEIGHTS: this index was built with randomly initialised model weights "
            f"(SAM 2 {fp.get('sam2_model') or ''}: {_weights_word(fp.get('sam2_weights'))}; "
            f"embedder {fp.get('embedder') or 'unknown'}: {_weights_word(fp.get('embedder_weights'))}). "
            "Its masks, measurements and search results are NOT meaningful.",
            icon="🚨",
        )


def _fingerprints(engine: SearchEngine) -> None:
    st.subheader("Index fingerprint")
    fp = engine.fingerprints()
    st.table(pd.DataFrame({"value": ["-" if v is None else str(v) for v in fp.values()]}, index=list(fp)))
    status = engine.store.status()
    if status["indexes"]:
        st.dataframe(pd.DataFrame(status["indexes"]), hide_index=True)
    runs = engine.store.runs()
    if runs:
        st.caption(f"{len(runs)} indexing runs; the last finished {runs[-1]['finished_at']} "
                   f"({escape_markdown(json.loads(runs[-1]['counts'] or '{}'))})")


def render(engine: SearchEngine) -> None:
    st.header("Collection")
    fingerprint_banner(engine)
    status = engine.store.status()
    by_status = status["specimens"]
    cols = st.columns(max(len(by_status), 1))
    for col, (name, n) in zip(cols, sorted(by_status.items())):
        col.metric(name, n)

    st.subheader("Specimens per group and status")
    counts = pd.DataFrame(status["groups"]).T.fillna(0).astype(int)
    counts.index.name = "group"
    st.dataframe(counts)
    long = counts.reset_index().melt("group", var_name="status", value_name="specimens")
    # Horizontal bars, labels never truncated: species names are long ("Heliconius erato cyrbia").
    st.altair_chart(alt.Chart(long).mark_bar().encode(
        y=alt.Y("group:N", title=None, axis=alt.Axis(labelLimit=0)),
        x=alt.X("specimens:Q", stack=True), color="status:N", tooltip=["group", "status", "specimens"],
    ), width="stretch")

    st.subheader("Trait areas per group")
    areas = measurements(engine, cache_key(engine))
    if areas.empty:
        st.info("No trait masks yet.")
    else:
        chart = alt.Chart(areas).mark_boxplot(extent="min-max").encode(
            x=alt.X("trait:N", title="trait"),
            xOffset="group:N",
            y=alt.Y("area:Q", title="area (pixels)"),
            color="group:N",
        )
        st.altair_chart(chart, width="stretch")

    st.subheader("Failed items")
    failures = export.failures_table(engine.store)
    if failures.empty:
        st.success("No failed items.")
    else:
        st.warning(f"{len(failures)} items could not be indexed; a re-run retries them.")
        st.dataframe(failures.astype({"specimen_id": str}), hide_index=True)

    _fingerprints(engine)
