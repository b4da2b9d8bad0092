"""How the catalog keeps a vector: its float16 bit patterns in a ``SMALLINT[]`` column.

At museum scale the vectors are most of a store: 10 million BioCLIP 2 vectors (dim 768)
are 31 GB as float32, and every published version copied them again. Kept as float16 they
take half that, and they equal, bit for bit, the vectors at rest that readers map (float16
too): the writer's FAISS index, the catalog, an exact scan, a re-rank and an index rebuilt
from the catalog all see the same numbers. A unit vector loses at most 2^-12 per component
to float16, which moves a cosine similarity by less than 1e-3 (bench/README.md gives the
recall cost: none measured at 1M and 10M).

DuckDB has no half-precision type; ``SMALLINT[]`` holds the 16 bits (1,541 bytes per vector
of dim 768 on disk against 3,125 as ``FLOAT[]``) and reads back through Arrow without a
copy. Stores written before keep ``FLOAT[]`` until a writer opens them
(:func:`sst_search.store.schema.migrate`); readers decode either kind (:func:`decode`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sst_search.vector_search.half_precision import to_float16, to_float32

#: The column type of ``vectors.vector``.
SQL_TYPE = "SMALLINT[]"


def rounded(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` (float32) holding the values the catalog will: what the writer indexes, so
    that its in-memory index equals one rebuilt from the catalog later."""
    return to_float32(to_float16(np.asarray(matrix, np.float32)))


def encode(matrix: np.ndarray) -> pa.ListArray:
    """The ``vector`` column of the rows of ``matrix``, as an Arrow list array DuckDB ingests."""
    halves = to_float16(np.asarray(matrix, np.float32))
    flat = pa.array(halves.view(np.int16).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, halves.shape[1]).cast(pa.list_(pa.int16()))


def parameter(vector: np.ndarray) -> list[int]:
    """One vector as a SQL parameter of the column's type."""
    return np.asarray(vector, np.float32).astype(np.float16).view(np.int16).tolist()


def decode(column: pa.Array | pa.ChunkedArray, rows: int) -> np.ndarray:
    """The ``(rows, dim)`` float32 matrix of a non-empty ``vector`` column read through Arrow:
    float16 bit patterns, or the float32 lists of a store written before."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    if values.dtype == np.int16:
        values = values.view(np.float16)
    return values.astype(np.float32, copy=False).reshape(rows, -1)
