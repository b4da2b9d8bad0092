"""Whole matrices of vectors between float32 and float16, the catalog's and the files' width.

A bulk build converts every vector several times: rounded to float16 and back (what the
writer's index must hold to equal one rebuilt from the catalog), to float16 for the catalog
and for the spill file, and back to float32 to fill the index. numpy converts value by value:
0.45 s to float16 and 0.28 s back for 100,000 x 768 on a 2-core machine, 1.9 s of every
100,000 vectors' build. torch uses the CPU's conversion instructions (F16C, AVX-512): 0.11 s
and 0.18 s, the same bits (both round to nearest, ties to even). Small matrices stay with
numpy: a writer of a few specimens need not import torch for them.
"""

from __future__ import annotations

import warnings

import numpy as np

#: Rows from which torch converts; below, numpy (a review's one vector, an indexer's batch).
TORCH_ROWS = 4_096


def to_float16(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` as contiguous float16."""
    return _converted(matrix, np.float16)


def to_float32(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` as contiguous float32."""
    return _converted(matrix, np.float32)


def _converted(matrix: np.ndarray, dtype: type) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.dtype == dtype or len(matrix) < TORCH_ROWS or matrix.dtype not in (np.float16, np.float32):
        return np.ascontiguousarray(matrix, dtype)
    import torch  # a core dependency, loaded already wherever a build assigns lists or embeds

    out = np.empty(matrix.shape, dtype)
    with warnings.catch_warnings():  # a read-only mapping (a spill file) is only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        source = torch.from_numpy(np.ascontiguousarray(matrix))
    torch.from_numpy(out).copy_(source)
    return out
