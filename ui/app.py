"""sst-search app entry point: ``streamlit run ui/app.py -- --db INDEX`` (or ``$SST_SEARCH_DB``).

The index is opened read-only through :class:`sst_search.query.SearchEngine` (its latest
published snapshot), so the app can run while the indexer writes the next version.
"""

from __future__ import annotations

import sys

import streamlit as st

from sst_search import SnapshotError
from ui.render import escape_markdown
from ui.state import (
    DB_ENV,
    PAGES,
    db_path_from_args,
    engine_session,
    init_navigation,
    load_engine,
)
from ui.views import (
    collection,
    export,
    pattern,
    photos,
    plots,
    references,
    review,
    search,
    specimen,
)

VIEWS = {"Search": search.render, "Specimen": specimen.render, "Collection": collection.render, "Export": export.render,
         "References": references.render, "Review": review.render}
VIEWS["Plots"] = plots.render
VIEWS["Photos"] = photos.render
VIEWS["Map"] = pattern.render

st.set_page_config(page_title="sst-search", page_icon="🦋", layout="wide")

db = db_path_from_args(sys.argv[1:])
if db is None:
    st.error(f"No index given: start the app with `sst-search ui --db INDEX` or set {DB_ENV}.")
    st.stop()

init_navigation()
with st.sidebar:
    st.title("sst-search")
    page = st.radio("Page", PAGES, key="page")
    st.caption(f"Index: {escape_markdown(db)}")
    if st.button("Reload index", help="Open the newest published snapshot"):
        load_engine.clear()
        st.cache_data.clear()
        st.session_state.pop("results", None)

try:
    load_engine(db)
except (FileNotFoundError, SnapshotError, RuntimeError) as exc:
    st.error(f"Cannot open the index: {escape_markdown(exc)}")
    st.stop()

with engine_session(db) as engine:
    with st.sidebar:
        st.caption(f"Snapshot: {escape_markdown(engine.store.db_path)}")
        if engine.fingerprints().get("random_weights"):
            st.warning("Random model weights: results are not meaningful.")
    VIEWS[page](engine)
