"""The join of ids against a table's ascending ids: the same rows and misses whether the ids
come few (bisected as given) or many (bisected in ascending order, returned in their order)."""

from __future__ import annotations

import numpy as np
import pytest

from sst_search.vector_search.vector_table import SORTED_PROBES, sorted_rows


@pytest.mark.parametrize("asked", [5, SORTED_PROBES + 1, 2_000])
def test_rows_and_misses_come_back_in_the_order_asked(asked):
    rng = np.random.default_rng(asked)
    table = np.sort(rng.choice(1 << 40, size=50_000, replace=False)).astype(np.int64)
    hits = table[rng.integers(0, len(table), asked)]
    misses = np.array([-1, table[0] + 1 if table[0] + 1 not in table else -2, table[-1] + 7], np.int64)
    ids = rng.permutation(np.concatenate([hits, misses, hits[:3]]))  # unsorted, with repeats
    found, rows = sorted_rows(table, ids)
    expected = np.isin(ids, table)
    assert np.array_equal(found, expected) and expected.sum() == asked + 3
    assert np.array_equal(table[rows[found]], ids[found])
    assert ((rows >= 0) & (rows < len(table))).all()  # a miss's row is meaningless but never out of range
