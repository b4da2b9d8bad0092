"""A store's health: what it holds (:func:`status`), what failed (:func:`unindexed`), whether
its files are intact (:func:`verify`) and agree with each other (:func:`check_consistency`),
and the repair of FAISS files that do not (:func:`repair_indexes`).

The checks themselves are :mod:`sst_search.store.verify`'s (they also run on a file no
process holds); here they are asked of an opened store, whose in-memory indexes count too.
The repair rebuilds an index from the catalog's vectors, the truth its files are a cache of.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sst_search.store import verify as vf
from sst_search.vector_search import at_rest
from sst_search.vector_search.cache import IndexKey

if TYPE_CHECKING:
    from sst_search.store.core import Store
    from sst_search.store.indexed import IndexedStore


def status(store: IndexedStore) -> dict:
    """Counts per status and per group, and per index: vectors, generation, file state, the
    factory string it was built from and the bytes per vector of its file and of what its
    re-ranking reads (stores from before these were recorded show None)."""
    con = store.con
    by_status = dict(con.execute("SELECT status, count(*) FROM specimens GROUP BY 1 ORDER BY 1").fetchall())
    groups: dict[str, dict[str, int]] = {}
    for group, st, n in con.execute(
        "SELECT coalesce(group_name, ''), status, count(*) FROM specimens GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall():
        groups.setdefault(group, {})[st] = n
    counts = {
        (e, t): n
        for e, t, n in con.execute("SELECT embedder, trait_name, count(*) FROM vectors GROUP BY 1, 2").fetchall()
    }
    index_rows = []
    dims = store.index_dims()
    for key, generation in sorted(store.generations().items()):
        state, manifest = store.index_cache.file_state(key, generation)
        manifest = manifest or {}
        index_rows.append(
            {"embedder": key[0], "trait": key[1], "vectors": counts.get(key, 0), "generation": generation,
             "file": state, "kind": manifest.get("kind"), "factory": manifest.get("factory"),
             "index_bytes_per_vector": manifest.get("bytes_per_vector"),
             **_rerank_bytes(store, key, generation, dims.get(key, 0))}
        )
    return {"specimens": by_status, "groups": groups, "indexes": index_rows,
            "runs": con.execute("SELECT count(*) FROM runs").fetchall()[0][0]}


def _rerank_bytes(store: IndexedStore, key: IndexKey, generation: int, dim: int) -> dict:
    """What re-ranking and exact scans read per vector: the snapshot's float16 files at rest
    (measured: their bytes over their rows), else the catalog's float32 vectors held in RAM."""
    root = store.index_cache.at_rest_db
    manifest = at_rest.read_manifest(at_rest.vectors_dir(root), key) if root is not None else None
    if manifest and manifest.get("generation") == generation and manifest.get("count"):
        return {"rerank": "float16 mapped",
                "rerank_bytes_per_vector": round((manifest["bytes"] + manifest["ids_bytes"]) / manifest["count"], 1)}
    return {"rerank": "float32 in RAM", "rerank_bytes_per_vector": 4 * dim + 8}


def unindexed(store: IndexedStore, limit: int = 20) -> list[tuple[str, str, str | None]]:
    """``(location, status, error)`` of items that are not indexed, by location: the URL of an
    image fetched by URL (its cached file means nothing to whoever fixes it), else its path."""
    return store.con.execute(
        "SELECT COALESCE(source, path) AS location, status, error FROM specimens WHERE status <> 'indexed' "
        "ORDER BY location LIMIT ?", [int(limit)]
    ).fetchall()


def verify(store: IndexedStore, sample: int = vf.SAMPLE, indexes: bool = True) -> list[vf.Problem]:
    """Full check of the store's database, FAISS files and vectors at rest; empty when intact."""
    problems = vf.check_database(store.con, store.db_path)
    if problems or not indexes:
        return problems
    return vf.check_beside(store.con, store.db_path, store.faiss_dir, sample)


def check_consistency(store: IndexedStore) -> list[str]:
    """Problems between the catalog and the FAISS indexes (in memory, else on disk); empty when consistent."""
    problems = []
    orphans = store.con.execute(
        "SELECT count(*) FROM vectors v LEFT JOIN specimens s USING (specimen_id) "
        "WHERE s.specimen_id IS NULL OR s.status <> 'indexed'"
    ).fetchall()[0][0]
    if orphans:
        problems.append(f"{orphans} vectors belong to specimens that are missing or not indexed")
    for embedder, trait, generation, dim in vf.index_states(store.con):
        key = (embedder, trait)
        in_memory = store.index_cache.in_memory(key, generation)
        problems += [f"{embedder}/{trait}: {p.what}"
                     for p in vf.check_index(store.con, store.faiss_dir, key, generation, dim, in_memory)]
    return problems


def repair_indexes(store: Store, deep: bool = False) -> list[IndexKey]:
    """Rebuild and save every index whose file is missing, stale or of the wrong size;
    ``deep``: also every file that fails :func:`verify.check_index` (load, checksum,
    count, ids, sampled vectors). Returns the rebuilt keys."""
    store.flush_indexes()
    repaired = []
    for embedder, trait, generation, dim in vf.index_states(store.con):
        key = (embedder, trait)
        if deep:
            damaged = bool(vf.check_index(store.con, store.faiss_dir, key, generation, dim))
        else:
            damaged = store.index_cache.file_state(key, generation)[0] != "fresh"
        if damaged:
            store.index_cache.replace(key, store.index_cache.rebuild(key, dim), generation)
            repaired.append(key)
    store.flush_indexes()
    return repaired
