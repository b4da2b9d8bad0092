"""Index generations: every transaction that changes vectors bumps the generation of each
index it touches, and after the commit the cached FAISS indexes are brought to it.

The generation in ``index_state`` is what makes the FAISS files a cache (see
:mod:`sst_search.vector_search.cache`): an index is used only at its catalog's generation.
Bumping inside the transaction and applying after it means a kill between the two leaves a
stale cache, which is rebuilt, never a cache that claims rows the catalog lacks. The writer,
the relocation and the review's corrections all change vectors, and all go through here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import duckdb
import numpy as np

from sst_search.vector_search.cache import IndexKey

if TYPE_CHECKING:
    from sst_search.store.core import Store


def keys_of_registered_ids(con: duckdb.DuckDBPyConnection) -> set[IndexKey]:
    """Indexes holding vectors of the specimens in the registered ``_ids`` table."""
    rows = con.execute(
        "SELECT DISTINCT embedder, trait_name FROM vectors WHERE specimen_id IN (SELECT specimen_id FROM _ids)"
    ).fetchall()
    return {(e, t) for e, t in rows}


def bump(store: Store, keys: Iterable[IndexKey], dims: Mapping[IndexKey, int]) -> dict[IndexKey, int]:
    """Inside a transaction: a new generation for each of ``keys`` (created at dimension
    ``dims[key]`` when new); returns every index's generation."""
    keys = sorted(keys)
    if keys:  # one statement for all keys: an upsert's fixed cost is most of a small batch's write
        store.connection.execute(
            f"INSERT INTO index_state VALUES {', '.join(['(?, ?, 1, ?)'] * len(keys))} "
            "ON CONFLICT (embedder, trait_name) DO UPDATE SET generation = index_state.generation + 1",
            [v for key in keys for v in (*key, dims.get(key, 0))],
        )
    return store.generations()


def apply_committed(
    store: Store,
    touched: Iterable[IndexKey],
    removed_ids: np.ndarray | list[int],
    added: Mapping[IndexKey, tuple[np.ndarray, np.ndarray]],
    generations: Mapping[IndexKey, int],
) -> None:
    """After the commit: bring the cached indexes to the just-committed ``generations``,
    removing ``removed_ids`` and adding ``added`` (see :meth:`IndexCache.apply`)."""
    removed = np.asarray(removed_ids, dtype=np.int64)
    touched = sorted(touched)
    if not touched:
        return
    dims = store.index_dims()
    counts = dict.fromkeys(touched, 0)
    counts.update({(e, t): n for e, t, n in store.con.execute(  # one query for every index of the batch
        "SELECT embedder, trait_name, count(*) FROM vectors WHERE (embedder, trait_name) IN "
        f"({', '.join(['(?, ?)'] * len(touched))}) GROUP BY embedder, trait_name",
        [v for key in touched for v in key],
    ).fetchall()})
    for key in touched:
        store.index_cache.apply(key, generations[key], counts[key], dims[key], removed,
                                added.get(key, (np.zeros(0, np.int64), None)))
