"""Export: measurements as CSV / Parquet or a Darwin Core Archive, trait regions, masks as PNG label maps or COCO RLE,
crops of specimens or traits, the failures list."""

from __future__ import annotations

import streamlit as st

from sst_search import SearchEngine, dwca_export, export, regions_table

from ..render import escape_markdown
from ..state import cache_key
from .collection import measurements


@st.cache_data(show_spinner="Packing masks...")
def _masks_zip(_engine: SearchEngine, key: str, groups: tuple[str, ...]) -> bytes:
    return export.masks_zip(_engine.store, groups=groups)


@st.cache_data(show_spinner="Building COCO annotations...")
def _coco(_engine: SearchEngine, key: str, groups: tuple[str, ...]) -> bytes:
    return export.to_json_bytes(export.coco_dataset(_engine.store, groups=groups))


@st.cache_data(show_spinner="Building the Darwin Core Archive...")
def _dwca(_engine: SearchEngine, key: str, groups: tuple[str, ...]) -> bytes:
    return dwca_export.dwca_zip(_engine.store, groups=groups)


@st.cache_data(show_spinner="Listing trait regions...")
def _regions(_engine: SearchEngine, key: str, groups: tuple[str, ...]) -> bytes:
    return export.to_csv_bytes(regions_table(_engine.store, groups=groups))


@st.cache_data(show_spinner="Cutting out crops...")
def _crops(_engine: SearchEngine, key: str, groups: tuple[str, ...], trait: str | None, background: str) -> tuple[bytes, list]:
    skipped: list[tuple[str, str]] = []
    return export.crops_zip(_engine.store, trait, background, groups, skipped=skipped), skipped


def _download(label: str, data: bytes, file_name: str, mime: str, key: str) -> None:
    st.download_button(label, data, file_name=file_name, mime=mime, key=key, on_click="ignore")
    st.caption(f"{file_name}: {len(data):,} bytes")


def render(engine: SearchEngine) -> None:
    st.header("Export")
    all_groups = engine.groups()
    groups = tuple(st.multiselect("Groups", all_groups, default=all_groups, key="export_groups"))
    if not groups:
        st.info("Choose at least one group.")
        return
    key = cache_key(engine)
    table = measurements(engine, key, groups)
    st.markdown(f"**{table['specimen_id'].nunique()}** specimens, **{len(table)}** trait masks")
    st.dataframe(table.head(50).astype({"specimen_id": str}), hide_index=True)  # ids exceed JS integers
    if table.empty:
        return
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        _download("Measurements (CSV)", export.to_csv_bytes(table), "measurements.csv", "text/csv", "dl_csv")
    with c2:
        _download("Measurements (Parquet)", export.to_parquet_bytes(table), "measurements.parquet",
                  "application/vnd.apache.parquet", "dl_parquet")
    with c3:
        _download("Masks (PNG zip)", _masks_zip(engine, key, groups), "masks.zip", "application/zip", "dl_zip")
    with c4:
        _download("Masks (COCO RLE JSON)", _coco(engine, key, groups), "masks_coco.json", "application/json", "dl_coco")
    _download("Darwin Core Archive (occurrences, images, measurements)", _dwca(engine, key, groups), "dwca.zip",
              "application/zip", "dl_dwca")
    _download("Trait regions (Audubon Core regions of interest, CSV)", _regions(engine, key, groups),
              "trait_regions.csv", "text/csv", "dl_regions")

    st.subheader("Crops")
    w1, w2 = st.columns(2)
    whole = "(whole specimen)"
    trait = w1.selectbox("Cut out", [whole, *sorted(table["trait"].unique())], key="crop_trait")
    background = w2.radio("Outside the mask", export.BACKGROUNDS, horizontal=True, key="crop_background")
    if st.button("Make crops", key="make_crops"):
        data, skipped = _crops(engine, key, groups, None if trait == whole else trait, background)
        _download("Crops (PNG zip)", data, "crops.zip", "application/zip", "dl_crops")
        for path, reason in skipped:
            st.warning(f"skipped {escape_markdown(path)}: {escape_markdown(reason)}")
    failures = export.failures_table(engine.store)
    if not failures.empty:
        _download(f"Failed items ({len(failures)}, CSV)", export.to_csv_bytes(failures), "failures.csv", "text/csv",
                  "dl_failures")
