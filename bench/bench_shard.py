"""Ray-sharded search against one store: the fan-out's added latency and each shard's memory.

Builds (or, with ``--reuse``, reopens) the same synthetic store as bench_query.py (the same
chunks from the same seeds, through the streamed write path; ``--reuse`` also takes a store
bench_query.py left in ``--workdir`` with the same ``--n``/``--dim``/``--clusters``/``--groups``),
publishes it, then times the same queries, under the same filters, through one
:class:`~sst_search.store.Store` (the published snapshot, float16 vectors at rest) and
through :class:`~sst_search.sharding.ShardedIndex` with ``--shards`` Ray actors on a local
cluster. Printed per scenario: p50 / p95 of the single store, of one shard asked alone
through Ray, and of the fan-out, the fan-out's added p95 over the single store, and the overlap of the sharded top
k with the single store's (1.000 when both search exactly; below it where the single
store's index is approximate and the smaller shards' are exact). Per shard: its vector
count, index bytes per vector and resident memory. These per-shard figures are what
docs/scaling.md extrapolates from.

    python bench/bench_shard.py --n 200000 --shards 4            # development size
    nice python bench/bench_shard.py --n 4000000 --dim 128 --shards 4 --workdir /data/b --reuse
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from bench_query import (
    EMBEDDER,
    SCENARIOS,
    TRAIT,
    Synthetic,
    build_chunks,
    scenario_filters,
)
from machine_load import load

from sst_search.config import IndexConfig
from sst_search.query import Filter
from sst_search.sharding import ShardedIndex
from sst_search.store import Store
from sst_search.store.snapshots import (
    current_version,
    publish_snapshot,
    resolve_snapshot,
)
from sst_search.vector_search.indexes import bytes_per_vector


def scenarios(groups: np.ndarray, group_count: int) -> dict[str, list[list[Filter]]]:
    """Filters of each query (of the queries' ``groups``) per scenario of bench_query.py."""
    names = [f"g{g:02d}" for g in range(group_count)]
    return {name: [scenario_filters(name, names[g], names[(g + group_count // 2) % group_count]) for g in groups]
            for name in SCENARIOS}


class Opened:
    """An actor that imports what a shard imports and opens the catalog: the memory a shard pays before vectors."""

    def __init__(self, snapshot: str) -> None:
        self.store = Store.open(snapshot, read_only=True)

    def pid(self) -> int:
        return os.getpid()


def timed(search, count: int) -> tuple[list[float], list[list[int]]]:
    latencies, answers = [], []
    for j in range(count):
        t = time.perf_counter()
        answers.append([i for i, _ in search(j)])
        latencies.append(1000 * (time.perf_counter() - t))
    return latencies, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp dir, removed)")
    ap.add_argument("--reuse", action="store_true", help="reopen the store a previous run left in --workdir")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_shard_"))
    db = work / "bench.duckdb"
    print(f"n {args.n:,}  dim {args.dim}  shards {args.shards}  cpus {os.cpu_count()}  {load()}")
    data = Synthetic(args.n, args.dim, args.clusters, args.groups, 0.05)
    if not (args.reuse and db.is_file()):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t = time.perf_counter()
        build_chunks(db, IndexConfig(exact_threshold=min(50_000, args.n - 1)),
                     ((p.ids, p.vectors, *data.columns(p)) for p in data.parts()))
        print(f"build {time.perf_counter() - t:.1f} s; {load()}")
    if current_version(db) is None:
        publish_snapshot(db)
    snapshot = resolve_snapshot(db)
    asked = data.rows(np.sort(np.random.default_rng(2).choice(args.n, size=args.queries, replace=False)))
    queries, skips = asked.vectors, asked.ids
    filters = scenarios(asked.groups, args.groups)

    import ray

    ray.init(num_cpus=max(args.shards, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    t = time.perf_counter()
    sharded = ShardedIndex(db, EMBEDDER, TRAIT, shards=args.shards, num_cpus=1)
    start_s = time.perf_counter() - t
    pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in sharded.actors])
    shard_memory = [psutil.Process(pid).memory_full_info() for pid in pids]
    empty = ray.remote(num_cpus=0)(Opened).remote(str(snapshot))  # imports and an open catalog, no vectors
    base = psutil.Process(ray.get(empty.pid.remote())).memory_full_info()
    ray.kill(empty)
    print(f"{args.shards} shards started (each opens the snapshot, maps its vectors, copies its entries of the index) in "
          f"{start_s:.1f} s; {load()}")
    index_bytes = ray.get([a.__ray_call__.remote(lambda self: bytes_per_vector(self.index)) for a in sharded.actors])
    for i, (info, memory, per) in enumerate(zip(sharded.shards, shard_memory, index_bytes, strict=True)):
        print(f"  shard {i}: {info['vectors']:,} vectors, {info['kind']} index of {per:.0f} bytes/vector, "
              f"resident {memory.rss / 2**30:.2f} GiB (its own {memory.uss / 2**30:.2f}, its share of pages shared "
              f"with other processes {memory.pss / 2**30:.2f}); its own pages are "
              f"{(memory.uss - base.uss) / max(1, info['vectors']):.0f} bytes/vector above an actor with the catalog "
              f"open and no vectors ({base.uss / 2**30:.2f} GiB its own, {base.rss / 2**30:.2f} GiB resident)")

    single = Store.open(snapshot, read_only=True)
    t = time.perf_counter()
    single.warm()  # as the app warms its engine; the shards hold their parts of the index in memory
    print(f"single store warmed in {time.perf_counter() - t:.1f} s")
    print(f"\n{'filter':<12} {'one p50':>8} {'one p95':>8} {'shard0 p50':>10} {'shard0 p95':>10} {'fan p50':>8} "
          f"{'fan p95':>8} {'added p95':>9} {'overlap':>8}")
    for name, per_query in filters.items():
        def one(j, per_query=per_query):
            return single.filtered_search(EMBEDDER, TRAIT, queries[j], args.k, single.admission(per_query[j]),
                                          skip=int(skips[j])).hits

        def fanned(j, per_query=per_query):
            return sharded.search(queries[j], args.k, per_query[j], skip=int(skips[j]))

        def shard0(j, per_query=per_query):
            return ray.get(sharded.actors[0].search.remote(queries[j], args.k, per_query[j], int(skips[j])))

        for j in range(3):
            one(j), fanned(j), shard0(j)
        one_ms, one_ids = timed(one, args.queries)
        alone_ms, _ = timed(shard0, args.queries)
        shard_ms, shard_ids = timed(fanned, args.queries)
        same = np.mean([len(set(a) & set(b)) / max(1, len(a)) for a, b in zip(one_ids, shard_ids, strict=True)])
        o50, o95 = np.percentile(one_ms, [50, 95])
        a50, a95 = np.percentile(alone_ms, [50, 95])
        s50, s95 = np.percentile(shard_ms, [50, 95])
        print(f"{name:<12} {o50:>8.1f} {o95:>8.1f} {a50:>10.1f} {a95:>10.1f} {s50:>8.1f} {s95:>8.1f} {s95 - o95:>9.1f} "
              f"{same:>8.3f}", flush=True)
    after = [psutil.Process(pid).memory_full_info() for pid in pids]
    masks = ray.get([a.__ray_call__.remote(lambda self: self.store.columns().masks_kept) for a in sharded.actors])
    print("\nshards after the searches (their filter columns and masks loaded), resident / own GiB: "
          + ", ".join(f"{m.rss / 2**30:.2f} / {m.uss / 2**30:.2f}" for m in after) + f"; masks over the catalog's "
          f"specimens each keeps (the indexed specimens' one built at start): {masks}; {load()}")
    sharded.close()
    single.close()
    ray.shutdown()
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
