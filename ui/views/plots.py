"""Plots: one trait's measurement by group (distribution) and two measurements against each other;
every point links to its specimen."""

from __future__ import annotations

import altair as alt
import streamlit as st

from sst_search import FIELDS, SearchEngine

from ..render import escape_markdown
from ..state import cache_key, open_specimen
from .collection import measurements

#: Preferred defaults when the index has them (mm only when a scale is known).
DEFAULT_X = ("area_mm2", "area_px")
DEFAULT_Y = ("L_mean", "major_axis_mm", "major_axis_px")


def _pick(label: str, options: list[str], preferred: tuple[str, ...], key: str) -> str:
    default = next((options.index(p) for p in preferred if p in options), 0)
    return st.selectbox(label, options, index=default, key=key)


def render(engine: SearchEngine) -> None:
    st.header("Plots")
    table = measurements(engine, cache_key(engine))
    numeric = [f.name for f in FIELDS if f.sql_type == "DOUBLE" and f.name in table and table[f.name].notna().any()]
    if table.empty or not numeric:
        st.info("No measurements yet: index a collection, or run `sst-search measure --db INDEX` on an older one.")
        return
    c1, c2, c3 = st.columns(3)
    traits = table["trait"].value_counts()  # the most widely found trait first
    trait = c1.selectbox("Trait", sorted(traits.index, key=lambda t: (-traits[t], t)), key="plot_trait")
    with c2:
        measure = _pick("Measurement", numeric, DEFAULT_X, "plot_measure")
    fixed = {"specimen_id", "path", "trait_id", "trait", "quality", "source", "unit", "scale_source", "pixels_per_mm",
             "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", *(f.name for f in FIELDS)}
    by = c3.selectbox("Group by", ["group", *(c for c in table.columns if c not in fixed and c != "group")], key="plot_by")
    st.caption(f"unit: {', '.join(sorted(table['unit'].dropna().unique())) or 'px'} (mm columns are empty without a scale)")
    data = table[table["trait"] == trait].copy()
    data["sid"] = data["specimen_id"].astype(str)  # 63-bit ids exceed JavaScript integers
    data["link"] = "?page=specimen&specimen=" + data["sid"]
    data["label"] = data["catalogNumber"] if "catalogNumber" in data else data["path"].map(lambda p: p.rsplit("/", 1)[-1])
    data[by] = data[by].astype(str)
    tooltip = ["label:N", f"{by}:N", f"{measure}:Q"]

    st.subheader(f"{escape_markdown(trait)}: {escape_markdown(measure)} by {escape_markdown(by)}")
    box = alt.Chart(data).mark_boxplot(extent="min-max", opacity=0.5).encode(
        x=alt.X(f"{by}:N", title=by), y=alt.Y(f"{measure}:Q", title=measure), color=alt.Color(f"{by}:N", legend=None))
    points = alt.Chart(data).mark_circle(size=50, color="black").encode(
        x=f"{by}:N", y=f"{measure}:Q", href="link:N", tooltip=tooltip)
    st.altair_chart(box + points, width="stretch")

    st.subheader(f"{escape_markdown(trait)}: two measurements")
    other = _pick("Against", numeric, DEFAULT_Y, "plot_measure_y")
    pick = alt.selection_point(fields=["sid"], name="specimen")
    scatter = alt.Chart(data).mark_circle(size=70).encode(
        x=alt.X(f"{measure}:Q", scale=alt.Scale(zero=False)), y=alt.Y(f"{other}:Q", scale=alt.Scale(zero=False)),
        color=f"{by}:N", href="link:N", tooltip=[*tooltip, f"{other}:Q"],
    ).add_params(pick)
    event = st.altair_chart(scatter, width="stretch", on_select="rerun", key="plot_scatter")
    chosen = [p.get("sid") for p in (event.selection.get("specimen") or [])] if event else []
    if chosen and chosen[0]:
        row = data[data["sid"] == str(chosen[0])].iloc[0]
        st.button(f"Open specimen {row['label']}", on_click=open_specimen, args=(int(row["specimen_id"]),), key="plot_open")
    st.caption("Click a point to open its specimen.")
