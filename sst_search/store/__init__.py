"""Catalog and vector store: one DuckDB file plus one FAISS index per (embedder, trait).

See :mod:`sst_search.store.schema` for the tables and :mod:`sst_search.store.core` for the
consistency rules.
"""

from sst_search.store.core import Store
from sst_search.store.records import SpecimenRecord, TraitMask, masks_from_label_map, specimen_id
from sst_search.store.rle import decode_mask, encode_mask
from sst_search.store.schema import SPECIMEN_TRAIT, STATUSES

__all__ = [
    "SPECIMEN_TRAIT",
    "STATUSES",
    "SpecimenRecord",
    "Store",
    "TraitMask",
    "decode_mask",
    "encode_mask",
    "masks_from_label_map",
    "specimen_id",
]
