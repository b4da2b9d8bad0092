"""sst-search: trait segmentation by tracking (SST) and trait-level image search.

The public surface, for notebooks, the app and the batch indexer::

    from sst_search import Config, load_config, SearchEngine, Filter, Store

- configuration: :class:`Config` (and its :class:`IndexConfig` part), :func:`load_config`
- models: :func:`build_tracker`, :func:`tracker_from_config`, :func:`embedder_from_config`
- references: :func:`load_references`, :func:`load_group_references`, :class:`Support`,
  :class:`ReferencesError`
- the index: :class:`Store` (catalog + FAISS), :class:`SpecimenRecord`
- search: :class:`SearchEngine`, :class:`QueryEncoder`, :class:`QueryResult`,
  :class:`Filter`, :func:`parse_filter`, :class:`QueryError`
- pattern space: :func:`build_map`, :func:`load_map`, :func:`convergence`

Names are imported on first use, so ``import sst_search`` (and the CLI's start-up) does
not pull in torch, SAM 2 or open_clip.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "sst_search.config",
    "IndexConfig": "sst_search.config",
    "load_config": "sst_search.config",
    "build_tracker": "sst_search.builder",
    "tracker_from_config": "sst_search.builder",
    "embedder_from_config": "sst_search.builder",
    "Support": "sst_search.references",
    "ReferencesError": "sst_search.references",
    "load_references": "sst_search.references",
    "load_group_references": "sst_search.references",
    "Store": "sst_search.store",
    "SpecimenRecord": "sst_search.store",
    "Filter": "sst_search.store.filters",
    "parse_filter": "sst_search.store.filters",
    "QueryError": "sst_search.errors",
    "QueryEncoder": "sst_search.encoding",
    "QueryResult": "sst_search.query",
    "SearchEngine": "sst_search.query",
    "build_map": "sst_search.pattern_map",
    "load_map": "sst_search.pattern_map",
    "convergence": "sst_search.convergence",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sst_search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
