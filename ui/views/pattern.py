"""Map: one trait's whole pattern space (a WebGL scatter of every specimen), lasso or box to a
result set (gallery, search within it, export), a pattern atlas and which groups converge."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import streamlit as st

from sst_search import (
    METHODS,
    SPECIMEN_TRAIT,
    Convergence,
    MapError,
    SearchEngine,
    Store,
    StoreError,
    TraitMap,
    atlas_cells,
    atlas_image,
    build_map,
    color_columns,
    convergence,
    default_embedder,
    export,
    load_map,
    map_table,
    publish_snapshot,
    trait_thumbnails,
)

from ..map_scatter import Colors, Points, colors_of, map_scatter, points_of
from ..render import escape_markdown, trait_label
from ..state import cache_key, live_db, load_engine, open_specimen

#: Selected specimens shown in the gallery at most (the export holds them all).
GALLERY_MAX = 48
GALLERY_COLUMNS = 6


# Maps, tables and figures are held, not copied (cache_resource): a lasso's rerun must not
# unpickle a million-row table; nothing here mutates them.
@st.cache_resource(show_spinner="Reading the map...", max_entries=8)
def _map(_engine: SearchEngine, key: str, embedder: str, trait: str) -> TraitMap | None:
    return load_map(_engine.store, embedder, trait)


@st.cache_resource(show_spinner=False, max_entries=8)
def _table(_engine: SearchEngine, key: str, embedder: str, trait: str, color_by: str) -> pd.DataFrame:
    return map_table(_engine.store, _map(_engine, key, embedder, trait), color_by)


@st.cache_resource(show_spinner=False, max_entries=4)
def _points(_engine: SearchEngine, key: str, embedder: str, trait: str) -> Points:
    """The map's points as the scatter takes them, packed once per snapshot and map."""
    table = _table(_engine, key, embedder, trait, "group")
    return points_of(table, f"{key}/{embedder}/{trait}")


@st.cache_resource(show_spinner=False, max_entries=8)
def _colors(_engine: SearchEngine, key: str, embedder: str, trait: str, color_by: str) -> Colors:
    """One colouring of the map's points, packed once per snapshot, map and column."""
    table = _table(_engine, key, embedder, trait, color_by)
    return colors_of(table[color_by], color_by, f"{key}/{embedder}/{trait}/{color_by}")


#: Encoded thumbnails kept per snapshot and trait before the oldest are dropped.
THUMBNAILS_KEPT = 4096


@st.cache_resource(show_spinner=False, max_entries=4)
def _thumbnail_store(key: str, trait: str) -> dict[int, bytes | None]:
    return {}


def _thumbnails(engine: SearchEngine, ids: list[int], trait: str) -> dict[int, bytes | None]:
    """JPEG thumbnails of ``ids``: those not seen before are cut in one batch, and kept encoded so
    a rerun neither cuts nor re-encodes them."""
    kept = _thumbnail_store(cache_key(engine), trait)
    missing = [sid for sid in ids if sid not in kept]
    if missing:
        for sid, picture in trait_thumbnails(engine.store, missing, trait, 128).items():
            kept[sid] = None if picture is None else cv2.imencode(".jpg", picture[:, :, ::-1])[1].tobytes()
        for old in list(kept)[:max(0, len(kept) - THUMBNAILS_KEPT)]:
            del kept[old]
    return {sid: kept.get(sid) for sid in ids}


@st.cache_data(show_spinner="Comparing groups...", max_entries=8)
def _convergence(_engine: SearchEngine, key: str, embedder: str, trait: str, by: str) -> Convergence:
    return convergence.convergence(_engine.store, embedder, trait, by)


def _build(embedder: str, trait: str, method: str) -> None:
    """Fit the map on the live store and publish it, like a review decision: every reader then has it."""
    try:
        with st.spinner(f"Fitting a {method} map of {trait_label(trait)}..."):
            with Store.open(live_db()) as store:
                build_map(store, embedder, trait, method)
            publish_snapshot(live_db())
    except (StoreError, MapError, RuntimeError) as exc:
        st.error(f"Could not build the map: {escape_markdown(exc)}")
        return
    load_engine.clear()
    st.cache_data.clear()
    _map.clear()  # held, not copied: a "no map" answer must not outlive the build
    st.rerun()


def _highlight(table: pd.DataFrame, trait: str) -> tuple[list[int], int | None] | None:
    """The Search page's last result, when it searched this trait: the map rows of its hits and
    of its query specimen."""
    results = st.session_state.get("results")
    if not results or results[0].trait_name != trait:
        return None
    query = st.session_state.get("query_specimen") if st.session_state.get("query_mode") == "Specimen" else None
    rows = _rows_of(table, [r.specimen_id for r in results] + ([int(query)] if query is not None else []))
    hits = [r for r in rows[:len(results)] if r is not None]
    return hits, rows[-1] if query is not None else None


def _rows_of(table: pd.DataFrame, ids: list[int]) -> list[int | None]:
    """Map rows of a few ids (the table is sorted by id); None for an id not on the map."""
    column = table["specimen_id"].to_numpy()
    at = np.minimum(np.searchsorted(column, ids), len(column) - 1)
    return [int(r) if len(column) and column[r] == i else None for r, i in zip(at, ids)]


def _catalog_numbers(table: pd.DataFrame, ids: list[int]) -> dict[int, str | None]:
    """catalogNumber of a few ids, looked up in the map's table without a dictionary of a
    million rows per rerun."""
    numbers = table["catalogNumber"].to_numpy()
    return {sid: None if row is None else numbers[row] for sid, row in zip(ids, _rows_of(table, ids))}


def _gallery(engine: SearchEngine, table: pd.DataFrame, ids: list[int], trait: str, prefix: str,
             scores: dict[int, float] | None = None) -> list[int]:
    """Cards of one page of ``ids`` (GALLERY_MAX each); returns the ids shown."""
    pages = -(-len(ids) // GALLERY_MAX)
    page = int(st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{prefix}-page")) if pages > 1 else 1
    shown = ids[(page - 1) * GALLERY_MAX:page * GALLERY_MAX]
    numbers = _catalog_numbers(table, shown)
    pictures = _thumbnails(engine, shown, trait)
    for start in range(0, len(shown), GALLERY_COLUMNS):
        for col, sid in zip(st.columns(GALLERY_COLUMNS), shown[start:start + GALLERY_COLUMNS]):
            with col, st.container(border=True, key=f"{prefix}-{sid}"):
                if pictures[sid] is not None:
                    st.image(pictures[sid], width="stretch")
                caption = escape_markdown(numbers.get(sid) or sid)
                st.caption(caption + (f" · {scores[sid]:.3f}" if scores else ""))
                st.button("Open", key=f"{prefix}-open-{sid}", on_click=open_specimen, args=(sid,))
    if len(ids) > len(shown):
        st.caption(f"showing {len(shown)} of {len(ids)}; the exports below hold all of them")
    return shown


def _selection(engine: SearchEngine, table: pd.DataFrame, rows: np.ndarray, embedder: str, trait: str) -> None:
    selected = table["specimen_id"].to_numpy()[rows]  # ids stay a NumPy array until an export asks for a list
    st.subheader(f"Selection: {len(selected)} specimens")
    shown = _gallery(engine, table, selected.tolist(), trait, "map-sel")
    c1, c2 = st.columns(2)  # written when asked for: a 10,000-specimen lasso must answer at once
    c1.download_button("Selection: measurements (CSV)",
                       lambda: export.to_csv_bytes(export.measurements_table(engine.store, specimen_ids=selected.tolist())),
                       "selection.csv", "text/csv", key="map_dl_csv", on_click="ignore")
    c2.download_button("Selection: Darwin Core Archive (MeasurementOrFact)",
                       lambda: export.dwca_zip(engine.store, specimen_ids=selected.tolist()), "selection-dwca.zip",
                       "application/zip", key="map_dl_dwca", on_click="ignore")
    with st.expander("Search within the selection"):
        numbers = _catalog_numbers(table, shown)
        # the query is one of the specimens shown: a pick list of 10,000 would cost more than the search
        query = st.selectbox("Query specimen (from the gallery page)", shown,
                             format_func=lambda s: str(numbers.get(s) or s), key="map_query")
        k = int(st.number_input("Results", 1, 100, min(8, len(selected)), key="map_k"))
        if st.button("Search the selection", key="map_search"):
            _, vector = engine.store.vectors_of(embedder, trait, [query])
            hits = engine.store.search(embedder, trait, vector, k + 1, candidate_ids=selected.tolist())[0]
            hits = [(sid, s) for sid, s in hits if sid != query][:k]
            _gallery(engine, table, [sid for sid, _ in hits], trait, "map-hit", dict(hits))


def _point(engine: SearchEngine, table: pd.DataFrame, row: int, trait: str) -> None:
    sid = int(table["specimen_id"].iloc[row])
    with st.container(border=True, key="map-point"):
        picture = _thumbnails(engine, [sid], trait)[sid]
        if picture is not None:
            st.image(picture, width=160)
        st.markdown(f"**{escape_markdown(table['catalogNumber'].iloc[row] or sid)}** · {escape_markdown(table['group'].iloc[row] or '-')}")
        st.button("Open specimen", key="map-point-open", on_click=open_specimen, args=(sid,), type="primary")


def _map_view(engine: SearchEngine, tmap: TraitMap, embedder: str, trait: str) -> None:
    key = cache_key(engine)
    color_by = st.selectbox("Colour by", color_columns(engine.store), key="map_color")
    table = _table(engine, key, embedder, trait, color_by)
    highlight = _highlight(table, trait)
    title = f"{trait_label(trait)}: {len(table):,} specimens ({tmap.method}, seed {tmap.seed})"
    left, right = st.columns([4, 1])
    with left:
        picked = map_scatter(_points(engine, key, embedder, trait), _colors(engine, key, embedder, trait, color_by),
                             key=f"map-scatter-{embedder}-{trait}", title=title,
                             hits=highlight[0] if highlight else None, query=highlight[1] if highlight else None)
    with right:
        st.caption("Drag to move the map, the wheel zooms, a double-click shows all of it. Hover a point for its "
                   "catalogNumber, click it to see it. To collect specimens, pick Lasso or Box above the map and "
                   "drag over it.")
        if highlight:
            st.caption("Search result shown: the query (gold disc) and its hits (rings).")
        if len(picked.rows) == 1:  # a clicked point, or a lasso around one
            _point(engine, table, int(picked.rows[0]), trait)
    if picked.mode in ("lasso", "box"):
        _selection(engine, table, picked.rows, embedder, trait)


def _atlas_view(engine: SearchEngine, tmap: TraitMap, trait: str) -> None:
    grid = st.slider("Grid", 2, 16, 6, key="atlas_grid")
    cells = atlas_cells(tmap, grid, grid)
    st.image(atlas_image(engine.store, trait, cells, tile=96), caption=(
        "Each cell: the specimen nearest the cell's centre among those in it (the number: specimens in the cell)."))


def _convergence_view(engine: SearchEngine, embedder: str, trait: str) -> None:
    import plotly.graph_objects as go

    by = st.selectbox("Groups", ["group", *sorted(engine.metadata_keys())], key="conv_by")
    try:
        result = _convergence(engine, cache_key(engine), embedder, trait, by)
    except MapError as exc:
        st.info(escape_markdown(exc))
        return
    heat = go.Heatmap(z=result.mean.to_numpy(), x=list(result.mean.columns), y=list(result.mean.index),
                      customdata=result.spread.to_numpy(), colorscale="Viridis", colorbar={"title": "cosine"},
                      hovertemplate="%{y} → %{x}: %{z:.3f} ± %{customdata:.3f}<extra></extra>")
    fig = go.Figure(heat).update_layout(height=520, yaxis={"autorange": "reversed"},
                                        title="Mean best-match similarity of each row's specimens in the column's group")
    st.plotly_chart(fig, key="conv-heat")
    ranked = result.ranked()
    st.dataframe(ranked.head(30), hide_index=True)
    st.download_button("Table (CSV)", export.to_csv_bytes(result.table()), "convergence.csv", "text/csv",
                       key="conv_dl", on_click="ignore")
    st.subheader("Closest cross-group specimen pairs")
    numbers = engine.store.metadata_labels("catalogNumber")
    for i, pair in enumerate(result.pairs.head(10).itertuples()):
        c1, c2, c3 = st.columns([1, 2, 2])
        c1.markdown(f"**{pair.similarity:.3f}**")
        for col, sid, group, side in ((c2, pair.specimen_a, pair.group_a, "a"), (c3, pair.specimen_b, pair.group_b, "b")):
            col.button(f"{numbers.get(int(sid), sid)} ({group})", key=f"conv-pair-{i}-{side}", on_click=open_specimen,
                       args=(int(sid),))


def render(engine: SearchEngine) -> None:
    st.header("Map")
    traits = sorted({t for _, t in engine.store.index_keys()}, key=lambda t: (t == SPECIMEN_TRAIT, t))
    if not traits:
        st.info("The index holds no vectors yet.")
        return
    c1, c2, c3 = st.columns([2, 2, 3])
    trait = c1.selectbox("Trait", traits, format_func=trait_label, key="map_trait")
    embedders = [e for e, t in engine.store.index_keys() if t == trait]
    preferred = default_embedder(engine.store, trait)
    embedder = c2.selectbox("Embedder", embedders, index=embedders.index(preferred), key="map_embedder")
    view = c3.radio("View", ["Map", "Atlas", "Convergence"], horizontal=True, key="map_view")
    if engine.fingerprints().get("random_weights"):
        st.warning("Random model weights: the map's neighbourhoods are not meaningful.")
    if view == "Convergence":
        _convergence_view(engine, embedder, trait)
        return
    tmap = _map(engine, cache_key(engine), embedder, trait)
    if tmap is None:
        st.info(f"No current map of {escape_markdown(trait_label(trait))} in this snapshot. Build it here, or run "
                f"sst-search map --db INDEX --trait {escape_markdown(trait)}; index runs keep it current afterwards.")
        method = st.radio("Method", METHODS, horizontal=True, key="map_method",
                          help="umap: neighbourhoods kept (fitted on up to 50,000); pca: exact and fast")
        if st.button("Build the map", type="primary", key="map_build"):
            _build(embedder, trait, method)
        return
    if tmap.placed_now:
        st.caption(f"{tmap.placed_now} specimens newer than the stored map were placed on it for this view.")
    if view == "Map":
        _map_view(engine, tmap, embedder, trait)
    else:
        _atlas_view(engine, tmap, trait)
