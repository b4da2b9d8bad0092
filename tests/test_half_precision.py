"""The build's float16 conversions give numpy's bits, through torch for large matrices."""

from __future__ import annotations

import numpy as np
import pytest

from sst_search.vector_search import half_precision
from sst_search.vector_search.half_precision import to_float16, to_float32


@pytest.mark.parametrize("rows", [3, half_precision.TORCH_ROWS + 5])
def test_conversions_equal_numpys_bit_for_bit_on_ties_subnormals_and_specials(rows):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 64)).astype(np.float32)
    # halfway between two float16 values (both ways of rounding a tie), subnormal and out-of-range values
    specials = np.array([1 + 2**-11, 1 + 3 * 2**-11, 2**-20, -(2**-24), 7e4, -1e5, np.inf, np.nan], np.float32)
    x[0, : len(specials)] = specials
    with np.errstate(over="ignore"):
        halves, expected = to_float16(x), x.astype(np.float16)
    assert halves.dtype == np.float16 and halves.flags.c_contiguous
    assert np.array_equal(halves.view(np.int16), expected.view(np.int16))
    mapped = halves.copy()
    mapped.flags.writeable = False  # a read-only mapping (a spill file)
    for one_thread in (False, True):  # a build's whole-matrix copy; a search's pieces below torch's grain
        back = to_float32(mapped, one_thread=one_thread)
        assert back.dtype == np.float32 and np.array_equal(back, halves.astype(np.float32), equal_nan=True)
