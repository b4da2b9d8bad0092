"""The DuckDB catalog schema.

DuckDB is the single source of truth: catalog rows *and* vectors live in one file and
change together inside one transaction, so a crash can never leave a specimen half
written. The FAISS files beside the database are a derived cache (see
:mod:`sst_search.vector_search.indexes`).

Tables and columns:

``specimens``: one row per collection item, whatever happened to it.
    - ``specimen_id BIGINT PRIMARY KEY``: stable id from the item's key (:func:`specimen_id`),
      also the FAISS id of all its vectors.
    - ``path VARCHAR``: absolute, normalised path of the local file holding the pixels (for a
      URL item, its copy in the image cache); ``sst-search relocate`` rewrites its prefix.
    - ``group_name VARCHAR``: the reference group (usually the species) used to segment it.
    - ``content_hash VARCHAR``: sha256 of the image bytes; a change means re-index.
    - ``status VARCHAR``: ``indexed`` | ``failed`` | ``no_reference`` | ``pending``.
    - ``error VARCHAR``: why it failed (NULL unless ``failed``/``no_reference``).
    - ``fingerprint JSON``: what produced its masks and vectors (models, weights sha256 or
      ``random``, reference ids, config hash); a change means re-index.
    - ``width INTEGER``, ``height INTEGER``: image size in pixels.
    - ``orientation INTEGER``: degrees (counter-clockwise) the image was turned for
      segmentation (``--orientation``); masks are stored in the image's own orientation.
      NULL for provided masks and for rows written before the column existed.
    - ``mirrored BOOLEAN``: whether the image was also flipped left-right (before turning)
      for segmentation (``--mirror``); NULL like ``orientation``.
    - ``metadata JSON``: the manifest's other columns verbatim (Darwin Core terms etc.).
    - ``updated_at TIMESTAMP``: when the row was last written.
    - ``item_key VARCHAR``: the item's key in its collection (manifest path relative to the
      manifest's folder, path within a collection folder, or ``occurrence|image`` in a Darwin
      Core Archive); ``specimen_id`` is derived from it. NULL in rows written before keys
      existed (ids then came from the absolute path; the next ``index`` run re-keys them).
    - ``source VARCHAR``: the URL the pixels were fetched from (NULL for local files).
    - ``fetched_at TIMESTAMP``: when they were fetched (NULL for local files).
    - ``license VARCHAR``, ``rights_holder VARCHAR``: the image's licence and rights holder
      (Multimedia ``license``/``rightsHolder`` or the manifest's columns of those names).
    - ``full_source VARCHAR``: where the full-resolution image is when ``path`` holds a
      downsampled one (an IIIF image fetched at the model's size); crops and exports fetch
      it on demand. NULL when ``path`` is the original.
    - ``original_width INTEGER``, ``original_height INTEGER``: the full image's size (from the
      IIIF ``info.json``); masks and ``width``/``height`` are at the downsampled size, and
      millimetre measurements are converted through the ratio. NULL when unknown or the same.

``specimen_metadata``: ``metadata`` again as key/value rows, so filters are plain
    parameterised SQL (``key = ? AND value = ?``) instead of JSON path expressions.
    - ``specimen_id BIGINT``, ``key VARCHAR``, ``value VARCHAR``; primary key ``(specimen_id, key)``.

``trait_masks``: one row per trait found in a specimen.
    - ``specimen_id BIGINT``, ``trait_id INTEGER`` (label value), ``trait_name VARCHAR``.
    - ``area BIGINT``: pixels; ``bbox_x0, bbox_y0, bbox_x1, bbox_y1 INTEGER``: box, exclusive ends.
    - ``rle VARCHAR``: COCO RLE as JSON (``{"size": [h, w], "counts": "..."}``, pycocotools'
      compressed counts as a UTF-8 string).
    - ``quality DOUBLE``: cycle-consistency IoU of the trait, NULL when not computed.
    - ``object_score DOUBLE``: SAM 2's object score logit for the trait (above 0 SAM 2
      predicts it present, below 0 absent). Cheap, stored for every tracked mask; NULL for
      provided masks.
    - ``predicted_iou DOUBLE``: the mask decoder's own IoU estimate for the mask; NULL for
      provided masks.
    - ``source VARCHAR``: ``sst`` (tracked) | ``provided`` (a label mask given with the item) |
      ``corrected`` (drawn by a reviewer; see ``review_decisions``).
    - primary key ``(specimen_id, trait_id)``.

``trait_measurements``: one row per trait mask: its shape and colour (see :mod:`sst_search.measure`).
    - ``specimen_id BIGINT``, ``trait_id INTEGER``, ``trait_name VARCHAR``; primary key ``(specimen_id, trait_id)``.
    - ``unit VARCHAR``: ``mm`` when a scale was known, else ``px`` (the ``*_mm``/``*_mm2`` columns are NULL).
    - ``pixels_per_mm DOUBLE``: the scale used; ``scale_source VARCHAR``: where it came from
      (``metadata:<column>`` for the item's own value, ``collection`` for ``--pixels-per-mm``).
    - one ``DOUBLE`` per measurement of :data:`sst_search.measure.FIELDS` (area_px, perimeter_px,
      bbox_width_px, bbox_height_px, centroid_x, centroid_y, major_axis_px, minor_axis_px,
      orientation_deg, eccentricity, solidity, their mm twins, CIELAB L_/a_/b_ and sRGB red_/green_/blue_ means and
      medians, dominant_share) and ``dominant_color VARCHAR`` (``#rrggbb``).
    - ``measured_at TIMESTAMP``.

``vectors``: one row per (embedder, trait, specimen): the vectors themselves.
    - ``embedder VARCHAR``: embedder name (e.g. ``bioclip``, ``color-pattern``).
    - ``trait_name VARCHAR``: the trait, or ``__specimen__`` for the whole-specimen vector.
    - ``specimen_id BIGINT``, ``faiss_id BIGINT`` (equal to ``specimen_id``).
    - ``vector SMALLINT[]``: the L2-normalised embedding's float16 bit patterns (see
      :mod:`sst_search.store.vector_column`; ``FLOAT[]`` in stores written before, migrated
      when a writer opens them).
    - primary key ``(embedder, trait_name, specimen_id)``.

``index_state``: one row per FAISS index.
    - ``embedder VARCHAR``, ``trait_name VARCHAR``: which index; primary key.
    - ``generation BIGINT``: bumped in the same transaction as every change to that index's
      vectors; a FAISS file whose manifest names another generation is stale.
    - ``dim INTEGER``: vector length.

``runs``: one row per indexing run.
    - ``run_id VARCHAR PRIMARY KEY``, ``started_at TIMESTAMP``, ``finished_at TIMESTAMP``.
    - ``fingerprint JSON``: models and weights of the run; ``config_hash VARCHAR``.
    - ``counts JSON`` (items per outcome), ``timings JSON`` (seconds per stage).
    - ``engine VARCHAR``: ``local`` | ``ray``.

``store_settings``: settings that every opening of the store must share.
    - ``key VARCHAR PRIMARY KEY``, ``value JSON``. ``index_config``: the
      :class:`~sst_search.config.IndexConfig` the writer built its FAISS indexes with;
      readers that rebuild a stale index use it.

``review_decisions``: a curator's latest verdict per (specimen, trait). Kept across
    re-indexing: it is not a child of ``specimens``, and a ``correct`` decision is written
    back into ``trait_masks`` (``source = corrected``) whenever the specimen is re-indexed
    with the same image content.
    - ``specimen_id BIGINT``, ``trait_name VARCHAR``: what was reviewed; primary key.
      ``trait_name`` is ``__specimen__`` for a ``promote`` decision.
    - ``trait_id INTEGER``: label value of the trait (NULL for ``promote``).
    - ``decision VARCHAR``: ``accept`` | ``reject`` | ``correct`` | ``promote`` (the
      specimen became a support of its group).
    - ``reviewer VARCHAR``, ``decided_at TIMESTAMP``: who and when.
    - ``content_hash VARCHAR``: sha256 of the image the decision was made on.
    - ``rle VARCHAR``, ``area BIGINT``, ``bbox_x0 .. bbox_y1 INTEGER``: the corrected mask
      (``correct`` only), as in ``trait_masks``.
    - ``note VARCHAR``: free text (``promote``: the support's image path).

``instance_sources``: one row per photo split into instances (``index --instances``).
    - ``source_path VARCHAR PRIMARY KEY``: the photo, absolute.
    - ``source_key VARCHAR``: its manifest key; ``group_name VARCHAR``; ``metadata JSON``: its
      manifest columns (every instance item carries them too).
    - ``content_hash VARCHAR``, ``fingerprint JSON``: photo bytes and what found the
      instances (instance references, SAM 2, thresholds); either changing re-splits it.
    - ``status VARCHAR``: ``split`` | ``failed``; ``error VARCHAR``.
    - ``width INTEGER``, ``height INTEGER``, ``instance_count INTEGER``, ``candidates INTEGER``.
    - ``updated_at TIMESTAMP``.

``trait_maps``: one row per 2-D map of an index (see :mod:`sst_search.pattern_map`).
    - ``embedder VARCHAR``, ``trait_name VARCHAR``: the index mapped; primary key.
    - ``method VARCHAR``: ``umap`` | ``pca``; ``seed BIGINT``: the seed of the sample and the fit.
    - ``generation BIGINT``: the ``index_state`` generation the map is current with.
    - ``fit_count BIGINT``: points when it was fitted; ``added_since_fit BIGINT``: points placed
      on it since (an index run refits once these exceed a share of ``fit_count``).
    - ``params JSON``: the fit's settings; ``model BLOB``: what places a new point (the
      projection, as a NumPy ``.npz``).
    - ``fitted_at TIMESTAMP``, ``updated_at TIMESTAMP``.

``trait_map_points``: one row per point of a map.
    - ``embedder VARCHAR``, ``trait_name VARCHAR``, ``specimen_id BIGINT``: primary key.
    - ``x DOUBLE``, ``y DOUBLE``: the point on the map.
    - ``fitted BOOLEAN``: in the sample the map was fitted on (else placed onto it).
    - ``signature DOUBLE``: the vector's projection on a fixed random direction, so a changed
      vector is told from an unchanged one without storing it twice.

``instances``: one row per instance found in a photo; the instance is also an item of
    ``specimens`` whose ``path`` is ``crop_path``.
    - ``source_path VARCHAR``, ``number INTEGER`` (1..n, reading order): primary key.
    - ``item_key VARCHAR``: the item's key (``<source key>#<number>``); ``crop_path VARCHAR``.
    - ``box_x0, box_y0, box_x1, box_y1 INTEGER``: instance box in the photo (exclusive ends).
    - ``crop_x0, crop_y0, crop_x1, crop_y1 INTEGER``: the crop (box plus margin) in the photo.
    - ``rle VARCHAR``: instance mask in photo pixels, COCO RLE JSON as in ``trait_masks``.
    - ``area BIGINT``; ``score DOUBLE`` (max of the two IoUs below), ``cycle_iou DOUBLE``,
      ``forward_iou DOUBLE``; ``origin VARCHAR``: ``proposal`` | ``forward`` | ``given``.
"""

from __future__ import annotations

import pyarrow as pa

from sst_search.measure import FIELDS
from sst_search.store import vector_column

#: Rows copied at a time when a store's vectors are migrated.
MIGRATION_BATCH = 32_768

SPECIMEN_TRAIT = "__specimen__"
STATUSES = ("indexed", "failed", "no_reference", "pending")
MASK_SOURCES = ("sst", "provided", "corrected")
DECISIONS = ("accept", "reject", "correct", "promote")
#: Columns of ``trait_measurements`` a writer fills, in order (``measured_at`` is set by the store).
TRAIT_MEASUREMENTS_COLUMNS = ("specimen_id", "trait_id", "trait_name", "unit", "pixels_per_mm", "scale_source",
                       *(f.name for f in FIELDS))

#: Columns a writer supplies for ``specimens`` (``updated_at`` is the store's), with their Arrow types.
SPECIMEN_COLUMNS = pa.schema([
    ("specimen_id", pa.int64()), ("path", pa.string()), ("group_name", pa.string()), ("content_hash", pa.string()),
    ("status", pa.string()), ("error", pa.string()), ("fingerprint", pa.string()), ("width", pa.int32()),
    ("height", pa.int32()), ("metadata", pa.string()), ("orientation", pa.int32()),
    ("mirrored", pa.bool_()),
    ("item_key", pa.string()), ("source", pa.string()), ("fetched_at", pa.timestamp("us")), ("license", pa.string()),
    ("rights_holder", pa.string()), ("full_source", pa.string()), ("original_width", pa.int32()),
    ("original_height", pa.int32()),
])

DDL = f"""
CREATE TABLE IF NOT EXISTS specimens (
    specimen_id BIGINT PRIMARY KEY,
    path VARCHAR NOT NULL,
    group_name VARCHAR,
    content_hash VARCHAR,
    status VARCHAR NOT NULL CHECK (status IN {STATUSES}),
    error VARCHAR,
    fingerprint JSON,
    width INTEGER,
    height INTEGER,
    metadata JSON,
    updated_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS specimen_metadata (
    specimen_id BIGINT NOT NULL,
    key VARCHAR NOT NULL,
    value VARCHAR,
    PRIMARY KEY (specimen_id, key)
);
CREATE TABLE IF NOT EXISTS review_decisions (
    specimen_id BIGINT NOT NULL,
    trait_name VARCHAR NOT NULL,
    trait_id INTEGER,
    decision VARCHAR NOT NULL CHECK (decision IN {DECISIONS}),
    reviewer VARCHAR,
    decided_at TIMESTAMP NOT NULL,
    content_hash VARCHAR,
    rle VARCHAR,
    area BIGINT,
    bbox_x0 INTEGER, bbox_y0 INTEGER, bbox_x1 INTEGER, bbox_y1 INTEGER,
    note VARCHAR,
    PRIMARY KEY (specimen_id, trait_name)
);
CREATE TABLE IF NOT EXISTS trait_masks (
    specimen_id BIGINT NOT NULL,
    trait_id INTEGER NOT NULL,
    trait_name VARCHAR NOT NULL,
    area BIGINT NOT NULL,
    bbox_x0 INTEGER, bbox_y0 INTEGER, bbox_x1 INTEGER, bbox_y1 INTEGER,
    rle VARCHAR NOT NULL,
    quality DOUBLE,
    source VARCHAR NOT NULL CHECK (source IN {MASK_SOURCES}),
    PRIMARY KEY (specimen_id, trait_id)
);
CREATE TABLE IF NOT EXISTS trait_measurements (
    specimen_id BIGINT NOT NULL,
    trait_id INTEGER NOT NULL,
    trait_name VARCHAR NOT NULL,
    unit VARCHAR NOT NULL CHECK (unit IN ('px', 'mm')),
    pixels_per_mm DOUBLE,
    scale_source VARCHAR,
    {", ".join(f"{f.name} {f.sql_type}" for f in FIELDS)},
    measured_at TIMESTAMP NOT NULL,
    PRIMARY KEY (specimen_id, trait_id)
);
CREATE TABLE IF NOT EXISTS vectors (
    embedder VARCHAR NOT NULL,
    trait_name VARCHAR NOT NULL,
    specimen_id BIGINT NOT NULL,
    faiss_id BIGINT NOT NULL,
    vector SMALLINT[] NOT NULL,
    PRIMARY KEY (embedder, trait_name, specimen_id)
);
CREATE TABLE IF NOT EXISTS index_state (
    embedder VARCHAR NOT NULL,
    trait_name VARCHAR NOT NULL,
    generation BIGINT NOT NULL,
    dim INTEGER NOT NULL,
    PRIMARY KEY (embedder, trait_name)
);
CREATE TABLE IF NOT EXISTS instance_sources (
    source_path VARCHAR PRIMARY KEY,
    source_key VARCHAR,
    group_name VARCHAR,
    metadata JSON,
    content_hash VARCHAR,
    fingerprint JSON,
    status VARCHAR NOT NULL,
    error VARCHAR,
    width INTEGER,
    height INTEGER,
    instance_count INTEGER,
    candidates INTEGER,
    updated_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    source_path VARCHAR NOT NULL,
    number INTEGER NOT NULL,
    item_key VARCHAR NOT NULL,
    crop_path VARCHAR NOT NULL,
    box_x0 INTEGER, box_y0 INTEGER, box_x1 INTEGER, box_y1 INTEGER,
    crop_x0 INTEGER, crop_y0 INTEGER, crop_x1 INTEGER, crop_y1 INTEGER,
    rle VARCHAR NOT NULL,
    area BIGINT NOT NULL,
    score DOUBLE,
    cycle_iou DOUBLE,
    forward_iou DOUBLE,
    origin VARCHAR,
    PRIMARY KEY (source_path, number)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    fingerprint JSON,
    config_hash VARCHAR,
    counts JSON,
    timings JSON,
    engine VARCHAR
);
ALTER TABLE specimens ADD COLUMN IF NOT EXISTS orientation INTEGER;
ALTER TABLE specimens ADD COLUMN IF NOT EXISTS mirrored BOOLEAN;
ALTER TABLE trait_masks ADD COLUMN IF NOT EXISTS object_score DOUBLE;
ALTER TABLE trait_masks ADD COLUMN IF NOT EXISTS predicted_iou DOUBLE;
ALTER TABLE specimens ADD COLUMN IF NOT EXISTS item_key VARCHAR;
ALTER TABLE specimens ADD COLUMN IF NOT EXISTS source VARCHAR;
ALTER TABLE specimens ADD COLUMN IF NOT EXISTS fetched_at TIMESTAMP;
ALTER TABLE specimens ADD COLUMN IF NOT EXISTS license VARCHAR;
ALTER TABLE specimens ADD COLUMN IF NOT EXISTS rights_holder VARCHAR;
ALTER TABLE specimens ADD COLUMN IF NOT EXISTS full_source VARCHAR;
ALTER TABLE specimens ADD COLUMN IF NOT EXISTS original_width INTEGER;
ALTER TABLE specimens ADD COLUMN IF NOT EXISTS original_height INTEGER;
CREATE TABLE IF NOT EXISTS trait_maps (
    embedder VARCHAR NOT NULL,
    trait_name VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    seed BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    fit_count BIGINT NOT NULL,
    added_since_fit BIGINT NOT NULL,
    params JSON,
    model BLOB,
    fitted_at TIMESTAMP,
    updated_at TIMESTAMP,
    PRIMARY KEY (embedder, trait_name)
);
CREATE TABLE IF NOT EXISTS trait_map_points (
    embedder VARCHAR NOT NULL,
    trait_name VARCHAR NOT NULL,
    specimen_id BIGINT NOT NULL,
    x DOUBLE NOT NULL,
    y DOUBLE NOT NULL,
    fitted BOOLEAN NOT NULL,
    signature DOUBLE NOT NULL,
    PRIMARY KEY (embedder, trait_name, specimen_id)
);
CREATE TABLE IF NOT EXISTS store_settings (
    key VARCHAR PRIMARY KEY,
    value JSON
);
"""


def migrate(con) -> None:
    """Bring a store created by an older version up to this schema; each step does nothing
    to a store already past it."""
    _allow_corrected_masks(con)
    _store_vectors_as_float16(con)


def _table_ddl(table: str, named: str | None = None) -> str:
    """The ``CREATE TABLE`` statement of ``table`` in :data:`DDL`, optionally under another name."""
    create = DDL[DDL.index(f"CREATE TABLE IF NOT EXISTS {table} ("):]
    create = create[: create.index(";") + 1]
    return create if named is None else create.replace(f" {table} (", f" {named} (", 1)


def _allow_corrected_masks(con) -> None:
    """Stores created before reviewer corrections existed have a ``trait_masks.source`` CHECK
    without ``corrected``; DuckDB cannot alter a CHECK, so the table is rebuilt once, in one
    transaction, keeping every column (including ones added later by ``ALTER TABLE``).
    """
    checks = con.execute(
        "SELECT constraint_text FROM duckdb_constraints() WHERE table_name = 'trait_masks' AND constraint_type = 'CHECK'"
    ).fetchall()
    if not checks or any("'corrected'" in text for (text,) in checks):
        return
    columns = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'trait_masks' ORDER BY column_index"
    ).fetchall()
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("ALTER TABLE trait_masks RENAME TO trait_masks_before_migration")
        con.execute(_table_ddl("trait_masks"))
        fresh = {name for (name,) in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'trait_masks'").fetchall()}
        for name, dtype in columns:
            if name not in fresh:
                con.execute(f'ALTER TABLE trait_masks ADD COLUMN "{name}" {dtype}')
        names = ", ".join(f'"{name}"' for name, _ in columns)
        con.execute(f"INSERT INTO trait_masks ({names}) SELECT {names} FROM trait_masks_before_migration")
        con.execute("DROP TABLE trait_masks_before_migration")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _store_vectors_as_float16(con) -> None:
    """Stores written before vectors were kept as float16 hold them as ``FLOAT[]``: copied,
    a batch at a time, into a table of the new kind, which then takes the old one's place in
    one transaction. A migration killed half-way leaves the old table whole and starts over.
    Every index's generation moves on, so the FAISS files (built from the float32 values)
    are rebuilt from the catalog's float16 ones."""
    kind = con.execute("SELECT data_type FROM duckdb_columns() "
                       "WHERE table_name = 'vectors' AND column_name = 'vector'").fetchall()
    if not kind or kind[0][0] == vector_column.SQL_TYPE:
        return
    columns = ("embedder", "trait_name", "specimen_id", "faiss_id")
    con.execute("DROP TABLE IF EXISTS vectors_float16")
    con.execute(_table_ddl("vectors", "vectors_float16"))
    reader = con.cursor().sql(f"SELECT {', '.join(columns)}, vector FROM vectors").to_arrow_reader(MIGRATION_BATCH)
    for batch in reader:
        if len(batch):
            con.register("_float16_rows", pa.table(
                [*(batch.column(c) for c in columns), vector_column.encode(vector_column.decode(batch.column("vector"), len(batch)))],
                names=[*columns, "vector"]))
            con.execute("INSERT INTO vectors_float16 SELECT * FROM _float16_rows")
            con.unregister("_float16_rows")
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DROP TABLE vectors")
        con.execute("ALTER TABLE vectors_float16 RENAME TO vectors")
        con.execute("UPDATE index_state SET generation = generation + 1")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
