"""What reader processes cost on a published store: one reader's memory after opening and a
run of mixed searches, and what a second reader of the same store adds.

A search app runs several worker processes, and CLI readers come and go beside them; the
store's files are memory-mapped so that the OS holds one copy of each page for all of them.
This runs two fresh reader processes, one after the other, on a store that
``bench/bench_query.py --workdir DIR`` built and published (or any published store with one
IVF index). Each imports the library, opens the store with ``SearchEngine.open`` and warms
it (``SearchEngine.warm``: its index files read into the page cache), as the app does, and
runs the same ``--queries`` searches: query specimens drawn with a fixed seed, cycling
through bench_query's seven filter scenarios (none, own group, locality contains "ridge",
another group, the latest 1% of event dates, and 90% and 1% of the preparations field).
The first reader stays alive while the
second runs. For each it prints, from psutil's ``memory_full_info``:

- RSS: everything resident in the process, its imports (torch, FAISS, DuckDB) included;
- USS: pages only this process holds: what it adds to the machine beside the other reader;
- PSS: its share, pages shared with other processes divided among them;

after the imports, after opening, and after the searches, with the open time and the
searches' p50 / p95 (the first reader's page cache may be cold; the second finds what the
first touched). The load average is printed with the figures.

    python bench/bench_readers.py --db /tmp/work/bench-1000000.duckdb --queries 500
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
from bench_query import EMBEDDER, SCENARIOS, TRAIT, scenario_filters
from machine_load import load


def memory() -> dict[str, int]:
    import psutil

    info = psutil.Process().memory_full_info()
    return {"rss": info.rss, "uss": info.uss, "pss": info.pss}


def reader(db: str, queries: int, k: int, seed: int, pipe) -> None:
    """One reader process: imports, open, searches, reporting its memory at each step through
    ``pipe``; then it waits for word to exit, so that its pages stay mapped meanwhile."""
    from sst_search.query import SearchEngine

    report = {"imports": memory()}
    t = time.perf_counter()
    engine = SearchEngine.open(db)
    population = engine.store.population(EMBEDDER, TRAIT)
    report["open_s"] = time.perf_counter() - t
    t = time.perf_counter()
    engine.warm()  # as the app does on opening
    report["warm_s"] = time.perf_counter() - t
    report["open"] = memory()
    rng = np.random.default_rng(seed)
    asked = [int(i) for i in rng.choice(population, size=queries, replace=False)]
    groups = {sid: row["group_name"] for sid, row in engine.store.listing(asked).items()}
    names = sorted(set(groups.values()))
    latencies = []
    for j, sid in enumerate(asked):
        own = groups[sid]
        filters = scenario_filters(SCENARIOS[j % len(SCENARIOS)], own, names[(names.index(own) + len(names) // 2) % len(names)])
        t = time.perf_counter()
        engine.search(TRAIT, k, specimen_id=sid, filters=filters, embedder=EMBEDDER)
        latencies.append(1000 * (time.perf_counter() - t))
    report["searched"] = memory()
    report["p50"], report["p95"] = (float(x) for x in np.percentile(latencies, [50, 95]))
    report["vectors"] = len(population)
    pipe.send(report)
    pipe.recv()  # exit when told
    engine.close()


def start(context, db: str, queries: int, k: int, seed: int):
    ours, theirs = context.Pipe()
    process = context.Process(target=reader, args=(db, queries, k, seed, theirs))
    process.start()
    return process, ours


def show(name: str, report: dict) -> None:
    n = report["vectors"]
    print(f"{name}: open {report['open_s']:.1f} s, warm {report['warm_s']:.1f} s; searches p50 {report['p50']:.1f} ms, p95 {report['p95']:.1f} ms; {load()}")
    for step in ("imports", "open", "searched"):
        m = report[step]
        print(f"  after {step:<9} RSS {m['rss'] / 2**30:6.2f} GiB  USS {m['uss'] / 2**30:6.2f} GiB  "
              f"PSS {m['pss'] / 2**30:6.2f} GiB")
    grown = {key: report["searched"][key] - report["imports"][key] for key in ("rss", "uss", "pss")}
    print(f"  grown since the imports: RSS {grown['rss'] / 2**20:,.0f} MiB ({grown['rss'] / n:,.0f} bytes/vector), "
          f"USS {grown['uss'] / 2**20:,.0f} MiB ({grown['uss'] / n:,.0f} bytes/vector), "
          f"PSS {grown['pss'] / 2**20:,.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, type=Path, help="a published store (bench_query's --workdir holds one)")
    ap.add_argument("--queries", type=int, default=500, help="searches per reader, the scenarios in turn")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    context = mp.get_context("spawn")  # fresh processes: nothing inherited from this one
    print(f"{args.db}; {load()}")
    first, first_pipe = start(context, str(args.db), args.queries, args.k, args.seed)
    show("first reader", first_pipe.recv())
    second, second_pipe = start(context, str(args.db), args.queries, args.k, args.seed)
    second_report = second_pipe.recv()
    show("second reader, the first still running", second_report)
    print(f"the second reader adds {second_report['searched']['uss'] / 2**30:.2f} GiB of its own (USS), "
          f"imports included; {(second_report['searched']['uss'] - second_report['imports']['uss']) / 2**20:,.0f} MiB "
          "of it beyond the imports")
    for process, pipe in ((first, first_pipe), (second, second_pipe)):
        pipe.send("exit")
        process.join()


if __name__ == "__main__":
    main()
