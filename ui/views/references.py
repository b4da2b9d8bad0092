"""References: label a specimen by clicking (SAM 2 proposes each trait's mask) and save it as a support."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from sst_search import (
    TRAITS_FILE,
    ImageLoadError,
    ReferencesError,
    SearchEngine,
    load_image,
    load_traits,
    references_dir_of,
    save_support,
    suggest_from_store,
    unique_stem,
)

from ..editor import mask_editor, reset, segmenter_or_error
from ..render import escape_markdown, legend, overlaid
from ..state import cache_key, specimen_labels
from .search import MAX_UPLOAD_MB, UPLOAD_TYPES, decode_upload

EDITOR = "ref"
NEW_TRAIT = "(new trait)"


def _group_traits(refs_dir: Path, group: str) -> list[str]:
    path = refs_dir / group / TRAITS_FILE
    try:
        return [t.name for _, t in sorted(load_traits(path).items())] if path.exists() else []
    except ReferencesError as exc:
        st.warning(escape_markdown(exc))
        return []


def _suggestions(engine: SearchEngine, group: str, labels: dict[int, str]) -> None:
    try:
        picks = suggest_from_store(engine.store, group, n=3)
    except KeyError:
        return
    if picks:
        st.caption("Worth labeling (most typical first, then most different): "
                   + "; ".join(labels.get(p.key, str(p.key)) for p in picks))


def _source(engine: SearchEngine) -> tuple[str, str, np.ndarray, str | Path | None] | None:
    """``(group, stem, pixels, file or None)`` of the image to label, or None until one is chosen."""
    kind = st.radio("Image", ["Specimen of the collection", "Upload"], horizontal=True, key="ref_kind")
    if kind == "Upload":
        upload = st.file_uploader(f"Specimen photo (at most {MAX_UPLOAD_MB} MB)", type=UPLOAD_TYPES,
                                  max_upload_size=MAX_UPLOAD_MB, key="ref_upload")
        group = st.text_input("Group (species)", key="ref_new_group").strip()
        if upload is None or not group:
            return None
        try:
            return group, Path(upload.name).stem, decode_upload(upload), None
        except ImageLoadError as exc:
            st.error(escape_markdown(exc))
            return None
    groups = engine.groups()
    if not groups:
        st.info("The index has no groups yet; upload an image instead.")
        return None
    group = st.selectbox("Group", groups, key="ref_group")
    labels = specimen_labels(engine, cache_key(engine), group, indexed_only=False)
    _suggestions(engine, group, labels)
    if not labels:
        return None
    sid = st.selectbox("Specimen", list(labels), format_func=labels.get, key="ref_specimen")
    path = engine.store.get_specimen(sid)["path"]
    try:
        return group, Path(path).stem, load_image(path), path
    except ImageLoadError as exc:
        st.error(escape_markdown(exc))
        return None


def _accepted() -> dict[str, np.ndarray]:
    return st.session_state.setdefault("ref_accepted", {})


def render(engine: SearchEngine) -> None:
    st.header("References")
    st.caption("Label the traits of one specimen per group: click on a trait (or drag a box), refine with more "
               "clicks or the brush, name it, and save the specimen as a support.")
    default_refs = references_dir_of(engine.store)
    refs_text = st.text_input("References folder", value=str(default_refs or ""), key="ref_dir").strip()
    segmenter = segmenter_or_error(engine)
    chosen = _source(engine)
    if chosen is None or not refs_text:
        return
    group, stem, image, file = chosen
    refs_dir = Path(refs_text)
    identity = (group, stem, image.shape)
    if st.session_state.get("ref_identity") != identity:  # another image: start over
        st.session_state["ref_identity"] = identity
        st.session_state["ref_accepted"] = {}
        reset(EDITOR)

    accepted = _accepted()
    left, right = st.columns([3, 2])
    with left:
        mask = mask_editor(segmenter, image, EDITOR)
    with right:
        existing = _group_traits(refs_dir, group)
        options = [n for n in existing if n not in accepted] + [NEW_TRAIT]
        choice = st.selectbox("Trait", options, key="ref_trait_choice")
        name = st.text_input("New trait name", key="ref_trait_name").strip() if choice == NEW_TRAIT else choice
        if st.button("Accept trait", key="ref_accept", disabled=mask is None or not mask.any() or not name):
            accepted[name] = mask
            reset(EDITOR)
            st.rerun()
        if accepted:
            ids = {n: i for i, n in enumerate(accepted, start=1)}
            label_map = np.zeros(image.shape[:2], np.uint8)
            for n, m in accepted.items():
                label_map[m] = ids[n]
            st.image(overlaid(image, label_map), width="stretch")
            legend([(i, n) for n, i in ids.items()])
            drop = st.selectbox("Remove a trait", ["-", *accepted], key="ref_drop")
            if drop != "-" and st.button("Remove", key="ref_remove"):
                accepted.pop(drop)
                st.rerun()
        name_as = st.text_input("Support name", value=unique_stem(refs_dir / group, stem), key=f"ref_stem_{stem}")
        if st.button("Save support", type="primary", key="ref_save", disabled=not accepted):
            try:
                support = save_support(refs_dir, group, name_as.strip(), file if file is not None else image, accepted)
            except ReferencesError as exc:
                st.error(escape_markdown(exc))
            else:
                st.session_state["ref_accepted"] = {}
                st.success(f"Saved support {escape_markdown(support.image_path)} ({len(support.trait_ids)} traits). "
                           f"Re-index to segment group {group} with it.")
