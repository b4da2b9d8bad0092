"""Catalog and vector store: one DuckDB file plus one FAISS index per (embedder, trait).

All of the library's SQL lives in this package. :class:`Store` (the live store, in
:mod:`~sst_search.store.core`) and :class:`SnapshotStore` (a published snapshot, read-only)
are what callers hold; :mod:`~sst_search.store.core` lists the module each of their jobs
lives in, :mod:`~sst_search.store.schema` the tables, and :mod:`~sst_search.store.writer`
the crash-safety rules. The FAISS side, which needs no SQL, is :mod:`sst_search.vector_search`.
"""

from sst_search.store.core import Store
from sst_search.store.records import (
    SpecimenRecord,
    TraitMask,
    masks_from_label_map,
    specimen_id,
)
from sst_search.store.rle import decode_mask, encode_mask
from sst_search.store.schema import SPECIMEN_TRAIT, STATUSES
from sst_search.store.snapshot_catalog import SnapshotStore

__all__ = [
    "SPECIMEN_TRAIT",
    "STATUSES",
    "SnapshotStore",
    "SpecimenRecord",
    "Store",
    "TraitMask",
    "decode_mask",
    "encode_mask",
    "masks_from_label_map",
    "specimen_id",
]
