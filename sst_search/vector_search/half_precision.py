"""Matrices of vectors between float32 and float16, the catalog's and the files' width.

numpy converts value by value; torch uses the CPU's conversion instructions (F16C,
AVX-512) and gives the same bits (both round to nearest, ties to even). Two callers, two
ways of using it:

- a bulk build converts every vector several times (rounded to float16 and back, so that
  the writer's index equals one rebuilt from the catalog; to float16 for the catalog and
  the spill file; back to float32 to fill the index): numpy took 0.45 s to float16 and
  0.28 s back for 100,000 x 768 on a 2-core machine, 1.9 s of every 100,000 vectors'
  build, torch 0.11 s and 0.18 s, with its threads;
- a search widens the float16 rows it scores exactly (``one_thread``), in pieces below
  torch's parallel grain so that no worker thread wakes: 5,000 rows of dim 768 took 1.6 ms
  against numpy's 11.9 on a busy 2-core machine (FAISS's decoder wakes its OpenMP threads,
  which cost tens of ms there).

Small matrices stay with numpy: a writer of a few specimens, or a re-rank's few rows, need
not import torch for them.
"""

from __future__ import annotations

import warnings

import numpy as np

#: Rows from which a whole matrix goes through torch; below, numpy (a review's one vector, an indexer's batch).
TORCH_ROWS = 4_096
#: Elements below which torch converts in the calling thread (``at::internal::GRAIN_SIZE``).
TORCH_GRAIN = 32_768


def to_float16(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` as contiguous float16."""
    return _converted(matrix, np.float16, TORCH_ROWS, one_thread=False)


def to_float32(matrix: np.ndarray, min_rows: int = TORCH_ROWS, one_thread: bool = False) -> np.ndarray:
    """``matrix`` as contiguous float32: through torch from ``min_rows`` rows, in the calling
    thread only when ``one_thread``."""
    return _converted(matrix, np.float32, min_rows, one_thread)


def _converted(matrix: np.ndarray, dtype: type, min_rows: int, one_thread: bool) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.dtype == dtype or len(matrix) < min_rows or matrix.dtype not in (np.float16, np.float32):
        return np.ascontiguousarray(matrix, dtype)
    import torch  # a core dependency, loaded already wherever a build assigns lists or a search engine encodes

    out = np.empty(matrix.shape, dtype)
    with warnings.catch_warnings():  # a read-only mapping (a spill file) is only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        source = torch.from_numpy(np.ascontiguousarray(matrix))
    target = torch.from_numpy(out)
    step = max(1, TORCH_GRAIN // max(1, matrix[0].size)) if one_thread else len(matrix)
    for start in range(0, len(matrix), step):
        target[start : start + step].copy_(source[start : start + step])
    return out
