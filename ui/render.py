"""Drawing shared by the pages: trait outlines, the colour legend, result cards."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

import cv2
import numpy as np
import streamlit as st

from sst_search import (
    SPECIMEN_TRAIT,
    ImageLoadError,
    QueryResult,
    SearchEngine,
    overlay,
    trait_color,
)

from .state import cache_key, open_specimen, specimen_image, specimen_labels

#: Metadata a curator recognises a specimen by, shown on every result card.
CARD_FIELDS = ("catalogNumber", "scientificName", "locality")


#: Characters Markdown (and Streamlit's LaTeX and GFM tables) read anywhere in a line.
_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]!|<>~$&])")
#: What makes a line a heading, quote, list item or rule.
_MARKDOWN_LINE_START = re.compile(r"^(\s*)([#>+=-]|\d+(?=[.)]))")


def escape_markdown(text: object) -> str:
    """``text`` shown literally in Markdown: manifest values and file names are data, never markup
    (``![x](http://...)`` in a catalogNumber must not load an image, a backtick in a file name must
    not end a code span). Hyphens and dots inside the text stay as they are (``SYN-000001``)."""
    escaped = _MARKDOWN_INLINE.sub(r"\\\1", " ".join(str(text).splitlines()))
    return _MARKDOWN_LINE_START.sub(lambda m: m[1] + ("\\" + m[2] if not m[2][0].isdigit() else m[2] + "\\"), escaped)


def trait_label(trait: str) -> str:
    return "whole specimen" if trait == SPECIMEN_TRAIT else trait


def _fit(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A mask at the (possibly downscaled) display image's size."""
    if mask.shape == shape[:2]:
        return mask
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def outlined(image: np.ndarray, mask: np.ndarray, trait_id: int) -> np.ndarray:
    """The image with one trait's contours drawn in the trait's colour."""
    out = image.copy()
    contours, _ = cv2.findContours(_fit(mask, image.shape).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, trait_color(trait_id), max(2, round(max(image.shape[:2]) / 200)))
    return out


def overlaid(image: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    return overlay(image, _fit(label_map, image.shape))


def legend(traits: Sequence[tuple[int, str]]) -> None:
    """Colour swatch + trait name per trait; names come from traits.yaml, so they are escaped."""
    items = " ".join(
        f'<span style="display:inline-block;width:0.9em;height:0.9em;background:rgb{trait_color(tid)};'
        f'border:1px solid #444;vertical-align:middle"></span>&nbsp;{html.escape(name)}&emsp;'
        for tid, name in traits
    )
    st.markdown(items, unsafe_allow_html=True)


def result_card(engine: SearchEngine, result: QueryResult, key_prefix: str, compact: bool = False) -> None:
    """Image with the searched trait outlined, rank, score, key metadata and a link to the specimen."""
    with st.container(border=True, key=f"{key_prefix}-result-{result.rank}"):
        try:
            image = specimen_image(engine, cache_key(engine), result.specimen_id)
        except (ImageLoadError, KeyError) as exc:
            st.warning(f"image unavailable: {escape_markdown(exc)}")
        else:
            mask = result.mask()
            if mask is not None and result.trait_id is not None:
                image = outlined(image, mask, result.trait_id)
            st.image(image, width="stretch")
        score = f"**#{result.rank}** · score **{result.score:.3f}**"
        if result.rerank_iou is not None:
            score += f" · cycle IoU {result.rerank_iou:.2f}"
        st.markdown(score)
        # First what a curator calls the specimen (catalogNumber, else its image's name), never its id.
        name = specimen_labels(engine, cache_key(engine)).get(result.specimen_id, str(result.specimen_id))
        fields = [] if compact else CARD_FIELDS[1:]
        lines = [escape_markdown(name), *(escape_markdown(result.metadata[f]) for f in fields if result.metadata.get(f))]
        st.caption("  \n".join(lines))
        st.button("Open specimen", key=f"{key_prefix}-open-{result.rank}-{result.specimen_id}",
                  on_click=open_specimen, args=(result.specimen_id,))


def result_grid(engine: SearchEngine, results: Sequence[QueryResult], key_prefix: str, columns: int = 4,
                compact: bool = False) -> None:
    for start in range(0, len(results), columns):
        for col, result in zip(st.columns(columns), results[start:start + columns]):
            with col:
                result_card(engine, result, key_prefix, compact=compact)
