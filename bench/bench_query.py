"""Query latency and recall at collection scale: top-10 trait search over 1M vectors.

Builds a store of ``--n`` synthetic trait vectors (dim 512, clustered like species, float32,
L2-normalised) with one metadata row set per specimen (group, locality, eventDate), then
times ``SearchEngine.search`` - the very code path the app uses: the query specimen's vector
from DuckDB, the FAISS search, the metadata filter in SQL and the metadata join of the
results - and measures recall@10 against exact (brute-force) search under the same filter.

The store is written straight into the catalog tables (same schema, same FAISS file layout,
``index_state`` generation matching the FAISS manifest) instead of through
``Store.write_batch``: that path is built for batches of a few specimens and would spend the
whole run inserting. The FAISS index is an IVF-Flat like the store's, but trained on a
sample (``--train-per-list`` points per list, ``--niter`` k-means iterations): training on
all vectors, as ``IndexConfig``'s rebuild does, takes far longer on a small CPU.

Filters (each a scenario):
  none            no filter
  group-own       group == the query's group (most neighbours pass: answered by post-filtering)
  locality        locality contains "ridge" (a fifth of the specimens, unrelated to vectors)
  group-other     group == another group (no neighbour passes: answered by the filtered search)
  date-1%         eventDate >= a date that 1% of the specimens reach (a small candidate set)

    python bench/bench_query.py [--n 1000000] [--nprobe 8,16,32,64] [--queries 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import faiss
import numpy as np
import psutil
import pyarrow as pa

from sst_search.query import Filter, SearchEngine
from sst_search.config import IndexConfig
from sst_search.store import Store, encode_mask
from sst_search.store import indexes as ix

EMBEDDER, TRAIT = "bench", "forewing_band"
LOCALITIES = ("O'Brien's \"Ridge\", 1200 m", "Río Napo", "Cerro Azul", "Station 7 (light trap)", "Finca La Esperanza")


def clustered_vectors(n: int, dim: int, clusters: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``clusters`` random centres; returns ``(vectors, cluster of each)``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(clusters, size=n)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        part = slice(start, min(n, start + 100_000))
        x = centres[labels[part]] + noise * rng.standard_normal((part.stop - part.start, dim), dtype=np.float32)
        out[part] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, labels


def write_catalog(db: Path, ids: np.ndarray, vectors: np.ndarray, groups: np.ndarray, localities: np.ndarray,
                  dates: np.ndarray) -> None:
    n, dim = vectors.shape
    group_names = np.array([f"g{g:02d}" for g in range(groups.max() + 1)])[groups]
    rle = encode_mask(np.pad(np.ones((8, 8), bool), 4))
    with Store.open(db) as store:  # creates the schema
        con = store.con
        con.register("_s", pa.table({
            "specimen_id": ids, "path": pa.array([f"images/{i}.png" for i in range(n)]), "group_name": group_names,
            "content_hash": pa.nulls(n, pa.string()), "status": pa.array(["indexed"] * n),
            "error": pa.nulls(n, pa.string()), "fingerprint": pa.nulls(n, pa.string()),
            "width": pa.array(np.full(n, 16, np.int32)), "height": pa.array(np.full(n, 16, np.int32)),
            "metadata": pa.array([json.dumps({"locality": loc, "eventDate": d}) for loc, d in zip(localities, dates)]),
        }))
        con.execute("INSERT INTO specimens SELECT *, now()::TIMESTAMP FROM _s")
        con.register("_m", pa.table({
            "specimen_id": np.concatenate([ids, ids]), "key": ["locality"] * n + ["eventDate"] * n,
            "value": np.concatenate([localities, dates]),
        }))
        con.execute("INSERT INTO specimen_metadata SELECT * FROM _m")
        con.register("_t", pa.table({
            "specimen_id": ids, "trait_id": pa.array(np.ones(n, np.int32)), "trait_name": pa.array([TRAIT] * n),
            "area": pa.array(np.full(n, 64, np.int64)),
            **{f"bbox_{c}": pa.array(np.full(n, v, np.int32)) for c, v in zip(("x0", "y0", "x1", "y1"), (4, 4, 12, 12))},
            "rle": pa.array([rle] * n), "quality": pa.nulls(n, pa.float64()), "source": pa.array(["sst"] * n),
        }))
        con.execute("INSERT INTO trait_masks SELECT * FROM _t")
        for start in range(0, n, 200_000):
            part = slice(start, min(n, start + 200_000))
            flat = pa.array(vectors[part].ravel())
            con.register("_v", pa.table({
                "embedder": pa.array([EMBEDDER] * (part.stop - part.start)),
                "trait_name": pa.array([TRAIT] * (part.stop - part.start)),
                "specimen_id": ids[part], "faiss_id": ids[part],
                "vector": pa.FixedSizeListArray.from_arrays(flat, dim).cast(pa.list_(pa.float32())),
            }))
            con.execute("INSERT INTO vectors SELECT * FROM _v")
            con.unregister("_v")
        con.execute("INSERT INTO index_state VALUES (?, ?, 1, ?)", [EMBEDDER, TRAIT, dim])
        fingerprint = {"embedder": {"embedder": EMBEDDER, "model": "synthetic", "weights": "none"}}
        run = store.begin_run(fingerprint)
        store.finish_run(run, {"indexed": n})


def build_ivf(vectors: np.ndarray, ids: np.ndarray, nlist: int, train_per_list: int, niter: int, seed: int) -> faiss.Index:
    dim = vectors.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.niter = seed, niter
    sample = np.random.default_rng(seed).choice(len(vectors), size=min(len(vectors), nlist * train_per_list), replace=False)
    index.train(vectors[np.sort(sample)])
    for start in range(0, len(vectors), 200_000):
        index.add_with_ids(vectors[start : start + 200_000], ids[start : start + 200_000])
    return index


def exact_scores(vectors: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """Cosine of every query against every vector, the query itself excluded (-inf)."""
    scores = np.concatenate(
        [vectors[query_rows] @ vectors[s : s + 200_000].T for s in range(0, len(vectors), 200_000)], axis=1
    )
    scores[np.arange(len(query_rows)), query_rows] = -np.inf
    return scores


def exact_top(scores: np.ndarray, ids: np.ndarray, passing: np.ndarray, k: int) -> set[int]:
    """Brute-force top-``k`` ids among ``passing`` vectors for one query's ``scores``."""
    masked = np.where(passing, scores, -np.inf)
    top = np.argpartition(-masked, k)[:k]
    return {int(ids[j]) for j in top if np.isfinite(masked[j])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=2000, help="vector clusters (think: species x morphs)")
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.05, help="per-dimension noise around a cluster centre")
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default: the store's IndexConfig choice)")
    ap.add_argument("--train-per-list", type=int, default=40)
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--nprobe", default="8,16,32,64", help="comma-separated nprobe values to sweep")
    ap.add_argument("--queries", type=int, default=100, help="queries per scenario")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=None, help="where to build the store (default: a temp dir, removed)")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_query_"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "bench.duckdb"
    for stale in (db, db.with_name(db.name + ".wal")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(db.with_name(db.name + ".faiss"), ignore_errors=True)
    proc = psutil.Process()
    print(f"n {args.n:,}  dim {args.dim}  clusters {args.clusters}  groups {args.groups}  "
          f"cpus {os.cpu_count()}  faiss threads {faiss.omp_get_max_threads()}")

    t = time.perf_counter()
    vectors, clusters = clustered_vectors(args.n, args.dim, args.clusters, args.noise, seed=0)
    rng = np.random.default_rng(1)
    ids = rng.choice(1 << 62, size=args.n, replace=False).astype(np.int64)  # ids look like specimen_id() hashes
    groups = clusters % args.groups  # a species' specimens look alike
    localities = np.array(LOCALITIES)[rng.integers(len(LOCALITIES), size=args.n)]
    start = date(1950, 1, 1)
    dates = np.array([(start + timedelta(days=int(d))).isoformat() for d in rng.integers(0, 27_000, size=args.n)])
    print(f"generate vectors + metadata: {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    write_catalog(db, ids, vectors, groups, localities, dates)
    print(f"write DuckDB catalog (specimens, metadata, masks, vectors): {time.perf_counter() - t:.1f} s, "
          f"{db.stat().st_size / 2**30:.2f} GiB on disk")

    nlist = args.nlist or IndexConfig().nlist_for(args.n)
    t = time.perf_counter()
    index = build_ivf(vectors, ids, nlist, args.train_per_list, args.niter, seed=1234)
    build_s = time.perf_counter() - t
    ix.save_index(db.with_name(db.name + ".faiss"), EMBEDDER, TRAIT, index, generation=1)
    index_bytes = ix.index_paths(db.with_name(db.name + ".faiss"), EMBEDDER, TRAIT)[0].stat().st_size
    print(f"IVF-Flat build (nlist {nlist}, trained on {min(args.n, nlist * args.train_per_list):,} vectors, "
          f"{args.niter} k-means iterations, then add {args.n:,}): {build_s:.1f} s")
    print(f"index size {index_bytes / 2**30:.2f} GiB = {index_bytes / args.n:.0f} bytes/vector "
          f"(raw float32 vector: {4 * args.dim} bytes)")
    del index

    engine = SearchEngine.open(db)
    t = time.perf_counter()
    live_index = faiss.downcast_index(engine.store.index(EMBEDDER, TRAIT))
    print(f"engine open + index load: {time.perf_counter() - t:.1f} s; process RSS {proc.memory_info().rss / 2**30:.1f} GiB")

    query_rows = rng.choice(args.n, size=args.queries, replace=False)
    other = (groups[query_rows] + args.groups // 2) % args.groups
    recent = np.sort(dates)[int(0.99 * args.n)]  # the latest 1% of collecting dates
    ridge = np.char.find(np.char.lower(localities.astype(str)), "ridge") >= 0
    # scenario -> (filters of query j, which vectors pass them)
    scenarios = {
        "none": (lambda j: [], lambda j: np.ones(args.n, bool)),
        "group-own": (lambda j: [Filter(field="group", op="==", value=f"g{groups[query_rows[j]]:02d}")],
                      lambda j: groups == groups[query_rows[j]]),
        "locality": (lambda j: [Filter(field="locality", op="contains", value="ridge")], lambda j: ridge),
        "group-other": (lambda j: [Filter(field="group", op="==", value=f"g{other[j]:02d}")],
                        lambda j: groups == other[j]),
        "date-1%": (lambda j: [Filter(field="eventDate", op=">=", value=recent)], lambda j: dates >= recent),
    }
    t = time.perf_counter()
    scores = exact_scores(vectors, query_rows)
    truth = {name: [exact_top(scores[j], ids, passing(j), args.k) for j in range(args.queries)]
             for name, (_, passing) in scenarios.items()}
    del scores
    print(f"exact ground truth ({len(scenarios)} x {args.queries} queries): {time.perf_counter() - t:.1f} s\n")

    print(f"{'nprobe':>6} {'filter':<12} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>10}")
    for nprobe in [int(p) for p in args.nprobe.split(",")]:
        live_index.nprobe = nprobe
        for name, (filters_of, _) in scenarios.items():
            for j in range(3):  # warm caches
                engine.search(TRAIT, args.k, specimen_id=int(ids[query_rows[j]]), filters=filters_of(j), embedder=EMBEDDER)
            latencies, recalls = [], []
            for j, expected in enumerate(truth[name]):
                t = time.perf_counter()
                results = engine.search(TRAIT, args.k, specimen_id=int(ids[query_rows[j]]), filters=filters_of(j),
                                        embedder=EMBEDDER)
                latencies.append(1000 * (time.perf_counter() - t))
                recalls.append(len({r.specimen_id for r in results} & expected) / max(1, len(expected)))
            p50, p95 = np.percentile(latencies, [50, 95])
            print(f"{nprobe:>6} {name:<12} {p50:>8.1f} {p95:>8.1f} {np.mean(recalls):>10.3f}", flush=True)
    print(f"\nprocess RSS {proc.memory_info().rss / 2**30:.1f} GiB")
    engine.close()
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
