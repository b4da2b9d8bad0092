"""Where the app's index comes from, how it is shared between sessions, and page navigation state."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import streamlit as st

from sst_search import SearchEngine, item_name, load_image

DB_ENV = "SST_SEARCH_DB"
PAGES = ("Search", "Specimen", "Collection", "Plots", "Export", "References", "Review", "Photos", "Map")

def _app_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db")
    parser.add_argument("--weights")
    return parser.parse_known_args(argv)[0]


def db_path_from_args(argv: list[str]) -> str | None:
    """``--db PATH`` after ``streamlit run ui/app.py --``, else ``$SST_SEARCH_DB``."""
    return _app_args(argv).db or os.environ.get(DB_ENV) or None


def weights_from_args(argv: list[str]) -> str | None:
    """``--weights CHECKPOINT`` after ``streamlit run ui/app.py --`` (``sst-search ui --weights``), else None."""
    return _app_args(argv).weights


def live_db() -> str:
    """The live store the app was started on (decisions are written there, then published)."""
    db = db_path_from_args(sys.argv[1:])
    if db is None:
        raise RuntimeError(f"no index given (--db or {DB_ENV})")
    return db


@st.cache_resource(show_spinner="Opening the index...")
def load_engine(db: str) -> SearchEngine:
    """The latest published snapshot, read-only; "Reload index" clears this to pick up a newer one.
    SAM 2 (labeling, uploads) is built from ``--weights`` when the app was started with it."""
    engine = SearchEngine.open(Path(db), weights=weights_from_args(sys.argv[1:]))
    engine.warm()  # under the spinner, not in the first searches
    return engine


@contextmanager
def engine_session(db: str) -> Iterator[SearchEngine]:
    """The shared engine. Streamlit runs each session in its own thread and the store gives
    every thread its own DuckDB cursor, so sessions search in parallel: one segmenting an
    upload never holds up another's search."""
    yield load_engine(db)


def cache_key(engine: SearchEngine) -> str:
    """Identifies the snapshot an engine reads, so cached results never outlive it."""
    return str(engine.store.db_path)


@st.cache_data(max_entries=1024, show_spinner=False)
def specimen_image(_engine: SearchEngine, key: str, specimen_id: int, max_side: int = 768) -> np.ndarray:
    """The specimen's image, read from the path the catalog stores for it (never from user text),
    downscaled for display. Raises ``ImageLoadError`` naming the file."""
    row = _engine.store.get_specimen(specimen_id)
    if row is None:
        raise KeyError(f"no specimen {specimen_id} in the catalog")
    image = load_image(row["path"])
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


def specimen_label(row: dict) -> str:
    """``"catalogNumber · image name (group)"`` of a :meth:`~sst_search.store.Store.specimens` row; a
    file named after its catalogNumber (0010007.jpg) is named once, not "0010007 · 0010007"."""
    catalog_number = row["metadata"].get("catalogNumber")
    name = item_name(row["path"], row.get("source"), row["metadata"])
    shown = name if not catalog_number or catalog_number == name else f"{catalog_number} · {name}"
    label = f"{shown} ({row['group_name'] or 'no group'})"
    return label if row["status"] == "indexed" else f"{label} [{row['status']}]"


@st.cache_data(show_spinner=False)
def specimen_labels(_engine: SearchEngine, key: str, group: str | None = None, indexed_only: bool = True) -> dict[int, str]:
    """``specimen_id -> specimen_label`` for pick lists, in path order."""
    rows = _engine.store.specimens(status="indexed" if indexed_only else None,
                                   groups=[group] if group is not None else None)
    labels = {row["specimen_id"]: specimen_label(row) for row in rows}
    counts = Counter(labels.values())  # two images of one record must not share a label
    return {sid: f"{label} #{sid}" if counts[label] > 1 else label for sid, label in labels.items()}


def init_navigation() -> None:
    """First run of a session: take page and specimen from the URL (shared links)."""
    if "page" in st.session_state:
        return
    page = st.query_params.get("page", "").capitalize()
    st.session_state["page"] = page if page in PAGES else PAGES[0]
    specimen = st.query_params.get("specimen", "")
    if specimen.isdigit():
        st.session_state["specimen_id"] = int(specimen)


def open_specimen(specimen_id: int) -> None:
    """Button callback: show one specimen, and put it in the URL so the view can be shared."""
    st.session_state["page"] = "Specimen"
    st.session_state["specimen_id"] = int(specimen_id)
    st.query_params["page"] = "specimen"
    st.query_params["specimen"] = str(specimen_id)
