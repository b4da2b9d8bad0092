"""sst-search: trait segmentation by tracking (SST) and trait-level image search.

The public surface, for notebooks, the app, the CLI and the batch indexer::

    import sst_search

    summary = sst_search.index("collection/", references="refs/", db="index.duckdb")
    engine = sst_search.SearchEngine.open("index.duckdb")
    hits = engine.search("forewing", specimen_id=1, filters=[sst_search.parse_filter("group == erato")])

- configuration: :class:`Config` (and its :class:`IndexConfig` part), :func:`load_config`
- indexing: :func:`index` (a collection into a store; returns a :class:`RunSummary`),
  :class:`CollectionError`, :class:`MassRemovalError`
- segmenting: :func:`segment` (one image; a :class:`TrackResult`), :func:`build_tracker`,
  :func:`tracker_from_config`, :func:`embedder_from_config`, :func:`build_click_segmenter`
  and :class:`ClickSegmenter` (label by clicking)
- images and masks: :func:`load_image`, :data:`UPLOAD_FORMATS`, :func:`overlay`,
  :func:`trait_color`, :func:`decode_mask`
- references: :func:`load_references`, :func:`load_group_references`, :func:`load_traits`,
  :func:`save_support`, :func:`unique_stem`, :data:`TRAITS_FILE`, :class:`Support`,
  :func:`suggest_from_store` (what to label next)
- the index: :class:`Store` (catalog + FAISS), :class:`SpecimenRecord`, :data:`SPECIMEN_TRAIT`,
  :func:`publish_snapshot`, :func:`item_name`; instances split from photos:
  :class:`InstanceSource`, :func:`instance_sources`, :func:`source_of_item`
- search: :class:`SearchEngine`, :class:`QueryEncoder`, :class:`QueryResult`,
  :class:`Filter`, :func:`parse_filter`
- measuring: :func:`measure_label_map`, :class:`Scale`, :func:`remeasure`, :data:`FIELDS`
- exporting: the modules :mod:`export` (tables, masks, COCO, crops) and :mod:`dwca_export`
  (Darwin Core Archives), :func:`regions_table` (Audubon Core regions)
- reviewing masks: :func:`review_queue`, :class:`ReviewItem`, :func:`decide`, :func:`promote`,
  :func:`default_reviewer`, :func:`references_dir_of`
- pattern space: :func:`build_map`, :func:`load_map`, :class:`TraitMap`, :data:`METHODS`,
  :func:`default_embedder`, :func:`map_table`, :func:`map_figure`, :func:`color_columns`,
  :func:`color_codes`, :func:`atlas_cells`, :func:`atlas_image`, :func:`trait_thumbnail`, :func:`trait_thumbnails`,
  the module :mod:`convergence` and its :class:`Convergence`
- errors a caller may catch: :class:`QueryError`, :class:`ReferencesError`,
  :class:`ImageLoadError`, :class:`WeightsError`, :class:`EmbedderError`, :class:`StoreError`,
  :class:`SnapshotError`, :class:`MapError`

Names are imported on first use, so ``import sst_search`` (and the CLI's start-up) does
not pull in torch, SAM 2 or open_clip. The four indexing names come from the batch layer,
``indexer/`` (planning, resumable runs, local and Ray runners): this table is the one place
the library names it, resolved only when a caller asks for them, and no library module
imports it. A public name never shares its name with a
submodule (importing that submodule would replace it), so those are public as modules.
"""

from importlib import import_module as _import_module

__version__ = "0.1.0"

_EXPORTS = {
    # configuration
    "Config": "sst_search.config",
    "IndexConfig": "sst_search.config",
    "load_config": "sst_search.config",
    # indexing: the batch layer's entry points, resolved on first use (see the docstring)
    "index": "indexer.entry",
    "RunSummary": "indexer.job",
    "MassRemovalError": "indexer.job",
    "CollectionError": "indexer.collection",
    # segmenting and models
    "segment": "sst_search.segmentation_run",
    "TrackResult": "sst_search.tracking",
    "build_tracker": "sst_search.builder",
    "tracker_from_config": "sst_search.builder",
    "embedder_from_config": "sst_search.builder",
    "build_click_segmenter": "sst_search.builder",
    "ClickSegmenter": "sst_search.labeling",
    # images and masks
    "load_image": "sst_search.images",
    "UPLOAD_FORMATS": "sst_search.images",
    "overlay": "sst_search.masks",
    "trait_color": "sst_search.masks",
    "decode_mask": "sst_search.store",
    # references
    "Support": "sst_search.references",
    "load_references": "sst_search.references",
    "load_group_references": "sst_search.references",
    "load_traits": "sst_search.references",
    "save_support": "sst_search.references",
    "unique_stem": "sst_search.references",
    "TRAITS_FILE": "sst_search.references",
    "suggest_from_store": "sst_search.suggest",
    # the index
    "Store": "sst_search.store",
    "SpecimenRecord": "sst_search.store",
    "SPECIMEN_TRAIT": "sst_search.store",
    "publish_snapshot": "sst_search.store.snapshots",
    "item_name": "sst_search.sources.naming",
    "InstanceSource": "sst_search.store.instance_tables",
    "instance_sources": "sst_search.store.instance_tables",
    "source_of_item": "sst_search.store.instance_tables",
    # search
    "SearchEngine": "sst_search.query",
    "QueryEncoder": "sst_search.encoding",
    "QueryResult": "sst_search.query",
    "Filter": "sst_search.store.filters",
    "parse_filter": "sst_search.store.filters",
    # measuring
    "measure_label_map": "sst_search.measure",
    "Scale": "sst_search.measure",
    "remeasure": "sst_search.remeasuring",
    "FIELDS": "sst_search.measure",
    # exporting
    "regions_table": "sst_search.trait_regions",
    # reviewing masks
    "review_queue": "sst_search.store.review_tables",
    "ReviewItem": "sst_search.store.review_tables",
    "decide": "sst_search.mask_review",
    "promote": "sst_search.mask_review",
    "default_reviewer": "sst_search.mask_review",
    "references_dir_of": "sst_search.mask_review",
    # pattern space
    "build_map": "sst_search.pattern_map",
    "load_map": "sst_search.pattern_map",
    "TraitMap": "sst_search.pattern_map",
    "METHODS": "sst_search.pattern_map",
    "default_embedder": "sst_search.pattern_map",
    "map_table": "sst_search.map_view",
    "map_figure": "sst_search.map_view",
    "color_columns": "sst_search.map_view",
    "color_codes": "sst_search.map_view",
    "atlas_cells": "sst_search.pattern_atlas",
    "atlas_image": "sst_search.pattern_atlas",
    "trait_thumbnail": "sst_search.thumbnails",
    "trait_thumbnails": "sst_search.thumbnails",
    "Convergence": "sst_search.convergence",
    # errors
    "QueryError": "sst_search.errors",
    "ReferencesError": "sst_search.references",
    "ImageLoadError": "sst_search.images",
    "WeightsError": "sst_search.weights",
    "EmbedderError": "sst_search.errors",
    "StoreError": "sst_search.store.errors",
    "SnapshotError": "sst_search.store.snapshots",
    "MapError": "sst_search.pattern_map",
}

#: Submodules that are public as a whole: their functions are used through the module.
_MODULES = ("convergence", "dwca_export", "export")

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str):
    if name in _MODULES:
        return _import_module(f"sst_search.{name}")  # the import binds it here
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sst_search' has no attribute {name!r}")
    value = getattr(_import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
