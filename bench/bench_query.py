"""Query latency, recall and memory at collection scale, side by side with LanceDB.

Builds a store of ``--n`` synthetic trait vectors (dim 512, clustered like species,
L2-normalised) with metadata per specimen (group, locality, eventDate) and a trait mask
per specimen (COCO RLE, as the indexer writes them) through the product's own streamed
write path (:meth:`Store.write_chunks`: catalog rows, float16 vectors at rest and the
FAISS index of the configured kind), from a collection made ``--chunk`` vectors at a time
(:class:`Synthetic`), then times ``SearchEngine.search``, the code path the app uses, and
measures recall@10 against exact search under the same filter, computed chunk by chunk:
nothing holds the whole collection, so build and searches run in one process and its
memory grows with ``--n`` only by the index and the pages of the mapped float16 file the
searches touch (LanceDB, which is given the whole collection, only where that fits). The same vectors
and metadata go into LanceDB tables (an IVF_PQ and an IVF_HNSW_SQ index), searched with
its prefilter, in the same run, at equal recall: per scenario, the cheapest LanceDB setting
(partitions probed, refine factor, ef) that reaches ``--lance-target`` recall@10
(bench/lance_sweep.py), or "not reached".

Filters (each a scenario):
  none            no filter
  group-own       group == the query's group (most neighbours pass)
  locality        locality contains "ridge" (a fifth of the specimens, unrelated to vectors)
  group-other     group == another group (no neighbour passes)
  date-1%         eventDate >= a date that 1% of the specimens reach
  prep-90%        preparations in (pinned, papered): 90%, on a field of four values that
                  ``index.posting_fields`` does not name (posted at publish for its few values;
                  ``--categorical-values 0``: a field without postings)
  prep-1%         preparations == slide: 1%, on the same field

The store is then published (:func:`publish_snapshot`, which writes each index's vectors
at rest as a float16 file) and searched through the snapshot, as the app searches it:
exact scans and re-ranking read the mapped float16 rows. Like the app, the bench warms the
engine after opening it (``SearchEngine.warm``: the index's files read into the page cache,
timed apart); ``--no-warm`` searches a cold engine, as a one-off reader does. The ground truth is computed from
the generated float32 vectors, so recall counts the cost of keeping vectors as float16
(the catalog and the files at rest both do); it is kept in ``--workdir``, so a ``--reuse``
run of the same collection and queries does not compute it again.

Printed: build time and its peak memory, disk bytes per vector (the DuckDB file, the
index file, its postings and list layouts, the float16 file, the reader columns), bytes per vector of the index in RAM, process RSS,
per scenario p50/p95 latency, recall@10, the share of queries answered with exactly k
results and the plans used; p95 with ``--threads`` concurrent searching threads; and the
LanceDB figures at equal recall with the ratio of p95s and both engines' throughput with
``--threads`` threads. The load average is printed with the figures, with the share of CPU
time the host took (stolen) and, around the scenario table, one core's memory read rate:
on a shared machine they are only comparable within one run, and a memory-bound search
follows the host's memory bandwidth, which its other guests can halve.

    python bench/bench_query.py --n 100000            # development size
    nice python bench/bench_query.py --n 1000000      # the issue's configuration
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from functools import cache, cached_property
from pathlib import Path
from typing import Self

import faiss
import lance_sweep
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
from machine_load import load, memory_read_rate

from sst_search.config import IndexConfig, IndexTier
from sst_search.query import Filter, SearchEngine
from sst_search.store import Store
from sst_search.store.published_columns import columns_dir
from sst_search.store.rle import encode_mask
from sst_search.store.snapshots import (
    current_version,
    publish_snapshot,
    resolve_snapshot,
)
from sst_search.store.writer import Chunk
from sst_search.vector_search.at_rest import vector_paths, vectors_dir
from sst_search.vector_search.indexes import index_paths, ivf_of, lists_path, read_manifest
from sst_search.vector_search.postings import fields_with_postings

EMBEDDER, TRAIT = "bench", "forewing_band"
#: Vectors per chunk of a streamed build (and of the ground truth's pass over the collection).
CHUNK = 100_000
#: Event dates are uniform over DAYS days from START.
DAYS, START = 27_000, np.datetime64(date(1950, 1, 1))
#: The first day of the latest 1% of event dates (event days are uniform), and its ISO date.
RECENT_DAY = int(np.ceil(0.99 * DAYS))
RECENT = str(START + np.timedelta64(RECENT_DAY, "D"))
SCENARIOS = ("none", "group-own", "locality", "group-other", "date-1%", "prep-90%", "prep-1%")
LOCALITIES = ("O'Brien's \"Ridge\", 1200 m", "Río Napo", "Cerro Azul", "Station 7 (light trap)", "Finca La Esperanza")
#: A specimen's preparation (Darwin Core ``preparations``, not among the default posting
#: fields, posted for its few values) and each one's share, independent of the vectors.
PREPARATIONS, PREPARATION_SHARES = ("pinned", "papered", "spread", "slide"), (0.6, 0.3, 0.09, 0.01)
#: The metadata keys of the synthetic collection, in the order of :meth:`Synthetic.columns`' arrays after the group.
METADATA_KEYS = ("locality", "eventDate", "preparations")


def scenario_filters(name: str, own: str, other: str) -> list[Filter]:
    """The product's filters of scenario ``name`` for a query of group ``own``, ``other``
    being the group a query is searched against in ``group-other``."""
    return {"none": [], "group-own": [Filter(field="group", op="==", value=own)],
            "locality": [Filter(field="locality", op="contains", value="ridge")],
            "group-other": [Filter(field="group", op="==", value=other)],
            "date-1%": [Filter(field="eventDate", op=">=", value=RECENT)],
            "prep-90%": [Filter(field="preparations", op="in", value=["pinned", "papered"])],
            "prep-1%": [Filter(field="preparations", op="==", value="slide")]}[name]


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



def _store_bytes(db: Path) -> int:
    """Bytes of every file of the store at ``db``, each inode once (a publish links the FAISS
    folder's files instead of copying them)."""
    seen, total = set(), 0
    for root in (db, Path(f"{db}.wal"), Path(f"{db}.faiss"), Path(f"{db}.versions")):
        for path in ([root] if root.is_file() else root.rglob("*") if root.is_dir() else []):
            info = path.stat()
            if path.is_file() and info.st_ino not in seen:
                seen.add(info.st_ino)
                total += info.st_size
    return total


def _tree_bytes(root: Path) -> int:
    """Bytes of every file under ``root`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

@dataclass(frozen=True)
class Part:
    """Rows ``start..start + len(ids)`` of a :class:`Synthetic` collection."""

    start: int
    ids: np.ndarray
    vectors: np.ndarray
    groups: np.ndarray
    locality_codes: np.ndarray
    days: np.ndarray
    preparation_codes: np.ndarray


PART_FIELDS = ("ids", "vectors", "groups", "locality_codes", "days", "preparation_codes")


@dataclass(frozen=True)
class Synthetic:
    """A synthetic collection made chunk by chunk, each chunk from its own seed: any chunk
    can be made again alone, so the build, the queries and the exact ground truth each make
    the rows they need and none holds all of them (10 million x 768 float32 are 31 GB).
    Vectors are unit vectors around ``clusters`` centres (species x morphs); a specimen's
    group is its cluster modulo ``groups`` (a species' specimens look alike); locality, event
    date and preparation are independent of the vectors."""

    n: int
    dim: int
    clusters: int
    groups: int
    noise: float
    chunk: int = 100_000
    seed: int = 0

    @cached_property
    def centres(self) -> np.ndarray:
        centres = np.random.default_rng([self.seed, 1 << 30]).standard_normal((self.clusters, self.dim)).astype(np.float32)
        return centres / np.linalg.norm(centres, axis=1, keepdims=True)

    def part(self, i: int) -> Part:
        start = i * self.chunk
        rows = min(self.chunk, self.n - start)
        rng = np.random.default_rng([self.seed, i])
        labels = rng.integers(self.clusters, size=rows)
        x = self.centres[labels] + self.noise * rng.standard_normal((rows, self.dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ids = rng.integers(1, 1 << 62, size=rows, dtype=np.int64)  # ids look like specimen_id() hashes
        localities, days = rng.integers(len(LOCALITIES), size=rows), rng.integers(0, DAYS, size=rows)
        preparations = rng.choice(len(PREPARATIONS), size=rows, p=PREPARATION_SHARES)  # drawn last: the rest as before
        return Part(start, ids, x, labels % self.groups, localities, days, preparations)

    def parts(self) -> Iterator[Part]:
        for i in range(-(-self.n // self.chunk)):
            yield self.part(i)

    def rows(self, rows: np.ndarray) -> Part:
        """The given rows (positions in the collection), making only the chunks that hold them."""
        taken = []
        for i in np.unique(rows // self.chunk):
            part, wanted = self.part(int(i)), rows[rows // self.chunk == i] - i * self.chunk
            taken.append((rows // self.chunk == i, Part(-1, *(getattr(part, f)[wanted] for f in PART_FIELDS))))
        out = {f: np.empty((len(rows), *getattr(taken[0][1], f).shape[1:]), getattr(taken[0][1], f).dtype)
               for f in PART_FIELDS}
        for where, part in taken:
            for f, array in out.items():
                array[where] = getattr(part, f)
        return Part(-1, **out)

    def columns(self, part: Part) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
        """``(group names, localities, ISO event dates, preparations)`` of a part, as Arrow
        arrays built from codes (numpy text arrays of 10 million rows cost gigabytes)."""
        group_names = pa.array([f"g{g:02d}" for g in range(self.groups)]).take(pa.array(part.groups))
        localities = pa.array(LOCALITIES).take(pa.array(part.locality_codes))
        preparations = pa.array(PREPARATIONS).take(pa.array(part.preparation_codes))
        return (group_names, localities, pa.array(START + part.days.astype("timedelta64[D]")).cast(pa.string()),
                preparations)


def timed_parts(data: Synthetic, spent: list[float]) -> Iterator[Part]:
    """``data``'s parts, adding the seconds spent making them to ``spent[0]``: the synthetic
    collection is made while the build runs, and is not the product's work."""
    parts = data.parts()
    while True:
        t = time.perf_counter()
        part = next(parts, None)
        spent[0] += time.perf_counter() - t
        if part is None:
            return
        yield part


@cache
def mask_shapes(seed: int, shapes: int = 64, size: int = 512) -> pa.Table:
    """``shapes`` trait masks as the indexer stores them (COCO RLE of an elliptical band at ``size`` px)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    shapes_rows = []
    for _ in range(shapes):
        (cy, cx), (ry, rx) = rng.uniform(0.3, 0.7, 2) * size, rng.uniform(0.05, 0.25, 2) * size
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        ys, xs = np.nonzero(mask)
        shapes_rows.append({"area": int(mask.sum()), "bbox_x0": int(xs.min()), "bbox_y0": int(ys.min()),
                            "bbox_x1": int(xs.max()) + 1, "bbox_y1": int(ys.max()) + 1, "rle": encode_mask(mask)})
    table = pa.Table.from_pylist(shapes_rows)
    return table.set_column(5, "rle", table.column("rle").cast(pa.large_string()))  # > 2 GiB at 10M


def trait_mask_rows(ids: np.ndarray, seed: int, shapes: int = 64) -> pa.Table:
    """One mask per specimen, the :func:`mask_shapes` cycled, so a search's per-hit mask join
    reads rows of a realistic size from a table of a realistic length."""
    # Arrow repeats the few shapes natively: at 10 million rows Python lists would not fit in memory.
    table = mask_shapes(seed, shapes).take(pa.array(np.arange(len(ids)) % shapes))
    n = len(ids)
    rng = np.random.default_rng([seed, int(ids[0]) if n else 0])
    return table.add_column(0, "specimen_id", pa.array(ids)).add_column(1, "trait_id", pa.array(np.ones(n, np.int32))) \
        .add_column(2, "trait_name", repeated(TRAIT, n)).append_column("quality", pa.array(rng.random(n))) \
        .append_column("source", repeated("sst", n))


def repeated(value: str, n: int) -> pa.Array:
    """``n`` copies of one string, built by Arrow."""
    return pa.array([value]).take(pa.array(np.zeros(n, np.int64)))


def build_store(db: Path, config: IndexConfig, ids, vectors, group_names, localities, dates) -> None:
    """The product's bulk write path for a collection held in memory, in chunks of :data:`CHUNK`."""
    build_chunks(db, config, (
        (ids[s], vectors[s], group_names[s], localities[s], dates[s])
        for s in (slice(a, a + CHUNK) for a in range(0, len(ids), CHUNK))))


def build_chunks(db: Path, config: IndexConfig, chunks) -> None:
    """The product's streamed bulk write path (:meth:`Store.write_chunks`): catalog,
    metadata, masks, vectors at rest and index, from ``(ids, vectors, group names,
    localities, dates[, preparations])`` chunks (the metadata of :data:`METADATA_KEYS` a
    chunk has) made one at a time."""

    def stream():
        start = 0
        for ids, vectors, group_names, *metadata in chunks:
            n = len(ids)
            yield Chunk(
                pa.table({"specimen_id": ids,
                          "path": pc.binary_join_element_wise(
                              "images/", pc.cast(pa.array(np.arange(start, start + n)), pa.string()), ".png", ""),
                          "group_name": group_names, "status": repeated("indexed", n)}),
                metadata=pa.table({"specimen_id": np.concatenate([ids] * len(metadata)),
                                   "key": pa.concat_arrays([repeated(key, n) for key in METADATA_KEYS[:len(metadata)]]),
                                   "value": pa.concat_arrays(metadata)}),
                masks=trait_mask_rows(ids, seed=2),
                vectors={(EMBEDDER, TRAIT): (ids, vectors)},
            )
            start += n

    with Store.open(db, index_config=config) as store:
        n = store.write_chunks(stream())
        run = store.begin_run({"embedder": {"embedder": EMBEDDER, "model": "synthetic", "weights": "none"}})
        store.finish_run(run, {"indexed": n})


class PeakMemory:
    """The largest anonymous and file-backed resident memory of this process while the block
    runs, sampled from /proc/self/status: a mapped file's pages count in RSS, but the OS can
    drop them at will, while anonymous memory (arrays, DuckDB's buffers, the index) it cannot."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.anon, self.file = every, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            with open("/proc/self/status") as fh:
                fields = dict(line.split(":", 1) for line in fh)
            self.anon = max(self.anon, int(fields["RssAnon"].split()[0]) * 1024)
            self.file = max(self.file, int(fields["RssFile"].split()[0]) * 1024)
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def mapped_resident(path: Path) -> int:
    """Bytes of the file at ``path`` this process has resident through its mappings."""
    return sum(m.rss for m in psutil.Process().memory_maps(grouped=True) if m.path == str(path))


def memory_status() -> dict[str, int]:
    """This process's anonymous and file-backed resident bytes (/proc/self/status)."""
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":", 1) for line in fh)
    return {name: int(fields[name].split()[0]) * 1024 for name in ("RssAnon", "RssFile")}


def reader_memory(snapshot: Path, at_rest_file: Path, index_files: list[Path], before: dict[str, int], con) -> dict[str, int]:
    """Where a reader's resident memory grew since ``before``: the mapped files of the
    snapshot by kind (the FAISS index, the float16 vectors, their ids, postings and list
    layouts, the reader columns), DuckDB's own buffers, and the anonymous rest (arrays a
    search keeps per filter, Python objects, allocator slack; an index read into memory
    rather than mapped)."""
    root = vectors_dir(snapshot)
    files = Counter()
    for m in psutil.Process().memory_maps(grouped=True):
        path = Path(m.path)
        if path in index_files:
            files["index (mapped)"] += m.rss
        elif root in path.parents:
            kind = ("float16 vectors" if path == at_rest_file else "reader columns" if path.parent.name == "columns"
                    else "vector ids" if path.name.endswith(".ids.npy") else "postings and list layouts")
            files[kind] += m.rss
    now = memory_status()
    duck = int(con.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchone()[0])
    anon = now["RssAnon"] - before["RssAnon"]
    return {**files, "other mapped files and libraries": now["RssFile"] - before["RssFile"] - sum(files.values()),
            "DuckDB buffers": duck, "other anonymous memory": anon - duck}


def exact_truth(data: Synthetic, asked: Part, passing: dict, k: int) -> dict[str, list[set[int]]]:
    """Per scenario, each query's exact top ``k`` ids among the rows passing its filter (the
    query itself left out): one chunk of the collection at a time, a running top ``k`` per
    query, so memory holds one chunk's scores, never the collection."""
    q = len(asked.ids)
    best = {name: (np.full((q, k), -np.inf, np.float32), np.zeros((q, k), np.int64)) for name in passing}
    for part in data.parts():
        scores = asked.vectors @ part.vectors.T
        scores[asked.ids[:, None] == part.ids[None, :]] = -np.inf
        for name, admitted in passing.items():
            top_scores, top_ids = best[name]
            masked = np.where(admitted(part), scores, -np.inf)
            keep = min(k, masked.shape[1])
            cand = np.argpartition(-masked, keep - 1, axis=1)[:, :keep]
            merged_scores = np.concatenate([top_scores, np.take_along_axis(masked, cand, 1)], axis=1)
            merged_ids = np.concatenate([top_ids, part.ids[cand]], axis=1)
            order = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
            best[name] = np.take_along_axis(merged_scores, order, 1), np.take_along_axis(merged_ids, order, 1)
    return {name: [{int(i) for i, s in zip(ids, sc, strict=True) if np.isfinite(s)} for ids, sc in zip(*best[name][::-1])]
            for name in passing}


def kept_truth(path: Path, key: dict, compute) -> tuple[dict[str, list[set[int]]], bool]:
    """The ground truth ``compute()`` gives, kept in ``path`` for the collection and queries
    ``key`` describes: a ``--reuse`` run over a 10M store then searches after seconds instead
    of the minutes an exact pass over every vector takes. Returns it and whether it was kept."""
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            return {name: [set(ids) for ids in rows] for name, rows in kept["truth"].items()}, True
    truth = compute()
    path.write_text(json.dumps({"key": key, "truth": {name: [sorted(ids) for ids in rows] for name, rows in truth.items()}}))
    return truth, False


def timed(fn, queries):
    latencies, outputs = [], []
    for q in queries:
        t = time.perf_counter()
        outputs.append(fn(q))
        latencies.append(1000 * (time.perf_counter() - t))
    return latencies, outputs


def lance_equal_recall(args, work: Path, config: IndexConfig, ids, vectors, group_names, localities, dates,
                       preparations, query_rows, query_ids, scenarios, truth, ours_p95: dict[str, float]) -> None:
    """LanceDB per index kind at the cheapest setting reaching ``--lance-target`` recall, per scenario."""
    # LanceDB's documented defaults: sqrt(rows) partitions, dim/16 sub-vectors (dim/8 when 16 does not
    # divide it); k-means bounded to our own training budget (iterations, rows sampled per partition).
    partitions = max(1, round(np.sqrt(args.n)))
    sub_vectors = args.dim // 16 if args.dim % 16 == 0 else args.dim // 8
    columns = {"id": ids, "group_name": group_names, "locality": localities, "eventDate": dates,
               "preparations": preparations}
    refines = [int(r) for r in args.lance_refines.split(",") if r.strip()]
    efs = [int(e) for e in args.lance_efs.split(",") if e.strip()]
    for kind in (k.strip().upper() for k in args.lance_kinds.split(",") if k.strip()):
        t = time.perf_counter()
        table = lance_sweep.build_table(work, kind, columns, vectors, partitions, sub_vectors, config.train_niter,
                                        config.train_per_list)
        print(f"\nLanceDB {kind} build (table + index of {partitions} partitions"
              f"{f', {sub_vectors} sub-vectors' if kind == 'IVF_PQ' else ''}, {config.train_niter} k-means iterations "
              f"on {config.train_per_list} rows per partition, scalar indexes): {time.perf_counter() - t:.1f} s; "
              f"{load()}")
        settings = lance_sweep.ladder(kind, partitions, config.nprobe_for(partitions), refines, efs, args.k)

        def make_run(name, table=table):
            return lambda setting: lance_sweep.searcher(table, vectors, query_rows, query_ids, args.k,
                                                        scenarios[name][1], setting)

        outcomes = [lance_sweep.sweep(kind, name, settings, make_run(name), truth[name], args.k, args.lance_target)
                    for name in scenarios]
        print(f"LanceDB {kind}, prefilter, cheapest setting with recall@{args.k} >= {args.lance_target}; {load()}")
        lance_sweep.report(outcomes, ours_p95, args.lance_target)
        reached = {o.scenario: make_run(o.scenario)(o.setting) for o in outcomes if o.setting is not None}
        if reached:
            qps, p95 = lance_sweep.throughput(reached, args.queries, args.threads)
            print(f"LanceDB {kind}, {args.threads} threads, the {len(reached)} scenarios reached, mixed: "
                  f"p95 {p95:.1f} ms, {qps:.0f} queries/s; {load()}")
    print(f"process RSS {psutil.Process().memory_info().rss / 2**30:.2f} GiB; {load()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=2000, help="vector clusters (think: species x morphs)")
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.05, help="per-dimension noise around a cluster centre")
    ap.add_argument("--approx", choices=("ivf", "hnsw"), default="ivf")
    ap.add_argument("--queries", type=int, default=100, help="queries per scenario")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=8, help="concurrent searching threads for the p95 under load")
    ap.add_argument("--lance-kinds", default=",".join(lance_sweep.KINDS),
                    help="LanceDB vector index kinds to sweep (comma-separated)")
    ap.add_argument("--lance-target", type=float, default=0.95,
                    help="recall@k LanceDB must reach; its p95 is reported at the cheapest setting that does")
    ap.add_argument("--lance-refines", default="10,50", help="IVF_PQ refine factors tried at each nprobes")
    ap.add_argument("--lance-efs", default="64,256", help="IVF_HNSW_SQ ef values tried at each nprobes")
    ap.add_argument("--no-lance", action="store_true", help="skip the LanceDB comparison")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated scenarios to run (e.g. group-own --queries 40: a reader's memory after "
                         "opening and 40 own-group searches)")
    ap.add_argument("--nprobe-factors", default="",
                    help="comma-separated nprobe factors (lists probed = factor * sqrt(nlist)), each timed on the same "
                         "index after the configured one (e.g. 1,4): the latency/recall trade-off from one build")
    ap.add_argument("--selector-scans", default="",
                    help="comma-separated index.plan.selector_scan values, each timed on the same index after the "
                         "configured one (e.g. 0.25,1): the selector's latency/recall trade-off")
    ap.add_argument("--scan-parts", default="",
                    help="comma-separated index.plan.scan_parts values, each timed on the same index after the "
                         "configured one (e.g. 1,0: one scan, then the automatic split): what splitting one query's "
                         "probed lists over the cores gains, both sides in one run")
    ap.add_argument("--exact-max", type=int, default=None,
                    help="index.plan.exact_max recorded with the store (readers use it): filters passing more go "
                         "through the index's codes and re-rank a few float16 rows instead of scanning float16 rows")
    ap.add_argument("--exact-maxes", default="",
                    help="comma-separated index.plan.exact_max values, each timed on the same index after the "
                         "configured one (e.g. 2000,5000): which filters are better scanned exactly")
    ap.add_argument("--factory", default=None,
                    help="one index.tiers factory string for every size, e.g. 'IVF{nlist},PQ{half_dim}x4fs' "
                         "(default: IndexConfig's tiers)")
    ap.add_argument("--refine", type=int, default=None, help="with --factory: candidates re-ranked per result, x k")
    ap.add_argument("--refines", default="",
                    help="also search with each of these refine factors (comma-separated), on the same index")
    ap.add_argument("--two-level-lists", type=int, default=None,
                    help="index.two_level_lists recorded with the store: from this many IVF lists, the lists are trained "
                         "in two levels (1: always; a large number: never)")
    ap.add_argument("--categorical-values", type=int, default=None,
                    help="index.posting_categorical_values recorded with the store: metadata fields of at most this "
                         "many values are posted at publish (0: only index.posting_fields, so the prep scenarios "
                         "filter on a field without postings)")
    ap.add_argument("--chunk", type=int, default=CHUNK, help="vectors per chunk of the streamed build and ground truth")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp dir, removed)")
    ap.add_argument("--nprobe-factor", type=float, default=None,
                    help="search with this nprobe factor instead of the one the index was built with (what a store "
                         "indexed with it would probe), in every table")
    ap.add_argument("--selector-scan", type=float, default=None,
                    help="search with this index.plan.selector_scan instead of the one the store recorded, in every table")
    ap.add_argument("--no-warm", action="store_true",
                    help="search right after opening, as a one-off reader (the CLI) does, instead of first warming "
                         "the engine (SearchEngine.warm) as the app does")
    ap.add_argument("--reuse", action="store_true",
                    help="search the store a run with the same --n/--dim/--clusters/--groups/--noise/--approx left in "
                         "--workdir instead of building it again (the build is then not timed)")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_query_"))
    db = work / "bench.duckdb"
    reuse = args.reuse and db.is_file()
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    proc = psutil.Process()
    print(f"n {args.n:,}  dim {args.dim}  clusters {args.clusters}  groups {args.groups}  cpus {os.cpu_count()}  "
          f"faiss threads {faiss.omp_get_max_threads()}  {load()}")
    data = Synthetic(args.n, args.dim, args.clusters, args.groups, args.noise, chunk=args.chunk)
    group_name = [f"g{g:02d}" for g in range(args.groups)]

    config = IndexConfig(exact_threshold=min(50_000, args.n - 1), approximate=args.approx)
    if args.exact_max is not None:
        config = config.model_copy(update={"plan": config.plan.model_copy(update={"exact_max": args.exact_max})})
    if args.two_level_lists is not None:
        config = config.model_copy(update={"two_level_lists": args.two_level_lists})
    if args.categorical_values is not None:
        config = config.model_copy(update={"posting_categorical_values": args.categorical_values})
    if args.factory is not None:
        config = config.model_copy(update={"tiers": [IndexTier(factory=args.factory, refine=args.refine)]})
    rss0 = proc.memory_info().rss
    if reuse:
        print(f"reusing the store in {work} (build not timed); DuckDB file {db.stat().st_size / 2**30:.2f} GiB")
    else:
        t, making = time.perf_counter(), [0.0]
        with PeakMemory() as peaks:
            build_chunks(db, config, ((p.ids, p.vectors, *data.columns(p)) for p in timed_parts(data, making)))
        build_s = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"build through Store.write_chunks, {args.chunk:,} vectors a chunk (catalog + masks + float16 vectors at "
              f"rest + {args.approx} index + flush): {build_s:.1f} s ({args.n / build_s:,.0f} vectors/s); peak RSS "
              f"{peak / 2**30:.2f} GiB (before {rss0 / 2**30:.2f} GiB), of which at most {peaks.anon / 2**30:.2f} GiB "
              f"anonymous memory and {peaks.file / 2**30:.2f} GiB mapped file pages (sampled each 0.2 s); {load()}")
        print(f"  of which making the synthetic chunks {making[0]:.1f} s: the product's path {build_s - making[0]:.1f} s "
              f"({args.n / (build_s - making[0]):,.0f} vectors/s)")

    if not reuse or current_version(db) is None:
        t = time.perf_counter()
        snapshot = publish_snapshot(db)
        print(f"publish (copy, verify, float16 vectors at rest moved in): {time.perf_counter() - t:.1f} s; {load()}")
    else:
        snapshot = resolve_snapshot(db)
    at_rest = vector_paths(vectors_dir(snapshot), (EMBEDDER, TRAIT))
    at_rest_file = at_rest[0]
    index_file = index_paths(Path(f"{snapshot}.faiss"), EMBEDDER, TRAIT)[0]
    # A fast-scan index's codes are in its lists file: the index file holds the rest.
    lists_file = lists_path(Path(f"{snapshot}.faiss"), EMBEDDER, TRAIT,
                            read_manifest(Path(f"{snapshot}.faiss"), EMBEDDER, TRAIT))
    index_files = [index_file] + ([lists_file] if lists_file else [])
    index_bytes = sum(p.stat().st_size for p in index_files)
    float16_bytes, columns_bytes = sum(p.stat().st_size for p in at_rest), _tree_bytes(columns_dir(snapshot))
    on_disk = {"DuckDB file (catalog, masks, float16 vectors)": snapshot.stat().st_size,
               "FAISS index files": index_bytes,
               "float16 vectors at rest + ids": float16_bytes,
               "filter postings and list layouts": _tree_bytes(vectors_dir(snapshot)) - float16_bytes - columns_bytes,
               "reader columns (listing, masks, filter codes)": columns_bytes}
    print("disk bytes per vector: " + "; ".join(f"{what} {size / args.n:,.0f}" for what, size in on_disk.items())
          + f"; total {sum(on_disk.values()) / args.n:,.0f} (one published version)")
    print(f"the whole store on disk (the live catalog, its FAISS folder and every published version, a file "
          f"linked into several counted once): {_store_bytes(db) / args.n:,.0f} bytes/vector")

    rng = np.random.default_rng(1)
    query_rows = np.sort(rng.choice(args.n, size=args.queries, replace=False))
    asked = data.rows(query_rows)
    query_ids = asked.ids
    other = (asked.groups + args.groups // 2) % args.groups
    ridge = np.array(["ridge" in name.lower() for name in LOCALITIES])
    # scenario -> (LanceDB where clause of query j, which rows of a part pass for each query)
    theirs = {
        "none": (lambda j: None, lambda p: np.ones((1, len(p.ids)), bool)),
        "group-own": (lambda j: f"group_name = '{group_name[asked.groups[j]]}'",
                      lambda p: p.groups[None, :] == asked.groups[:, None]),
        "locality": (lambda j: "lower(locality) LIKE '%ridge%'", lambda p: ridge[p.locality_codes][None, :]),
        "group-other": (lambda j: f"group_name = 'g{other[j]:02d}'", lambda p: p.groups[None, :] == other[:, None]),
        "date-1%": (lambda j: f"eventDate >= '{RECENT}'", lambda p: (p.days >= RECENT_DAY)[None, :]),
        "prep-90%": (lambda j: "preparations IN ('pinned', 'papered')", lambda p: (p.preparation_codes < 2)[None, :]),
        "prep-1%": (lambda j: "preparations = 'slide'", lambda p: (p.preparation_codes == 3)[None, :]),
    }
    # scenario -> (our filters of query j, its LanceDB where clause, which rows pass)
    scenarios = {name: (lambda j, name=name: scenario_filters(name, group_name[asked.groups[j]], f"g{other[j]:02d}"),
                        *theirs[name]) for name in args.scenarios.split(",")}
    t = time.perf_counter()
    truth_key = {"n": args.n, "dim": args.dim, "clusters": args.clusters, "groups": args.groups, "noise": args.noise,
                 "chunk": args.chunk, "queries": args.queries, "k": args.k, "scenarios": list(scenarios)}
    truth, kept = kept_truth(work / "truth.json", truth_key, lambda: exact_truth(
        data, asked, {name: passing for name, (_, _, passing) in scenarios.items()}, args.k))
    print(f"exact ground truth, {'kept from an earlier run of this store' if kept else 'chunk by chunk'}: "
          f"{time.perf_counter() - t:.1f} s; process RSS {proc.memory_info().rss / 2**30:.2f} GiB")

    rss_before_open, status_before_open = proc.memory_info().rss, memory_status()
    t = time.perf_counter()
    engine = SearchEngine.open(db)
    index = engine.store.index(EMBEDDER, TRAIT)
    population = engine.store.population(EMBEDDER, TRAIT)
    engine.store.vectors_of(EMBEDDER, TRAIT, population[:1])  # maps the vectors at rest
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    if not args.no_warm:
        engine.warm()
    warm_s = time.perf_counter() - t
    if args.nprobe_factor is not None and ivf_of(index) is not None:  # the cached index the engine searches
        ivf_of(index).nprobe = IndexConfig(nprobe_factor=args.nprobe_factor).nprobe_for(ivf_of(index).nlist)
    if args.selector_scan is not None:
        recorded = engine.store.index_config
        engine.store.index_cache.config = recorded.model_copy(
            update={"plan": recorded.plan.model_copy(update={"selector_scan": args.selector_scan})})
    print(f"engine open + index load {open_s:.1f} s; "
          f"{f'warm (its files read into the page cache, as the app does) {warm_s:.1f} s; ' if not args.no_warm else 'not warmed; '}"
          f"index files {index_bytes / 2**20:.0f} MiB = "
          f"{index_bytes / args.n:.0f} bytes/vector (raw float32: {4 * args.dim}), "
          f"{sum(mapped_resident(p) for p in index_files) / 2**20:.1f} MiB of them resident (mapped); stored vectors for re-ranking and exact "
          f"scans: {engine.store.vector_table(EMBEDDER, TRAIT).matrix.dtype} "
          f"{'mapped from the snapshot' if isinstance(engine.store.vector_table(EMBEDDER, TRAIT).matrix, np.memmap) else 'in RAM'}, "
          f"{mapped_resident(at_rest_file) / 2**20:.1f} MiB of them resident; process RSS "
          f"{proc.memory_info().rss / 2**30:.2f} GiB (before build {rss0 / 2**30:.2f} GiB, the bench's own arrays included)")
    print(f"fields with postings: {', '.join(sorted(fields_with_postings(vectors_dir(snapshot))))}\n")

    def ours(name):
        filters_of = scenarios[name][0]
        return lambda j: engine.search(TRAIT, args.k, specimen_id=int(query_ids[j]), filters=filters_of(j),
                                       embedder=EMBEDDER)

    def plans(name):
        """Plan per query, asked of the store directly (the engine returns only the hits)."""
        filters_of, count = scenarios[name][0], Counter()
        for j in range(min(20, args.queries)):
            vector = engine.store.vectors_of(EMBEDDER, TRAIT, [int(query_ids[j])])[1][0]
            outcome = engine.store.filtered_search(EMBEDDER, TRAIT, vector, args.k, engine.admission(filters_of(j)),
                                                   skip=int(query_ids[j]))
            posted = getattr(outcome, "posted", False)  # the filter answered from its postings (older code: no such field)
            count[outcome.plan + ("+fallback" if outcome.fallbacks else "") + ("/posted" if posted else "")] += 1
        return ",".join(f"{p}:{c}" for p, c in sorted(count.items()))

    header = (f"{'':<7}{'filter':<12} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>10} {'exact k':>8} "
              f"{'firsts':>6} {'first p50':>9} {'first max':>9} {'rest p95':>8}  plans")

    def scenario_table(title: str) -> dict[str, float]:
        """Every scenario through the engine, without warming up: the first query under each
        distinct filter (each group, say) is timed with the rest, and also printed apart
        ("first query under each filter": firsts, their p50 and max; the p95 of the rest).
        Returns the p95 of each scenario, first queries included."""
        print(f"{title}, {load()}, {memory_read_rate()}\n{header}")
        p95s = {}
        for name in scenarios:
            latencies, results = timed(ours(name), range(args.queries))
            seen, first = set(), []
            for j in range(args.queries):
                key = repr(scenarios[name][0](j))
                first.append(key not in seen)
                seen.add(key)
            first = np.array(first)
            firsts, rest = np.asarray(latencies)[first], np.asarray(latencies)[~first]
            recalls = [len({r.specimen_id for r in res} & truth[name][j]) / max(1, len(truth[name][j]))
                       for j, res in enumerate(results)]
            exact_k = np.mean([len(res) == min(args.k, len(truth[name][j])) for j, res in enumerate(results)])
            p50, p95 = np.percentile(latencies, [50, 95])
            p95s[name] = p95
            rest_p95 = f"{np.percentile(rest, 95):>8.1f}" if len(rest) else f"{'-':>8}"
            print(f"{'':<7}{name:<12} {p50:>8.1f} {p95:>8.1f} {np.mean(recalls):>10.3f} {exact_k:>8.2f} "
                  f"{len(firsts):>6} {np.median(firsts):>9.1f} {firsts.max():>9.1f} {rest_p95}  {plans(name)}", flush=True)
        print(f"{'':<7}over the table: {load()}; after it, {memory_read_rate()}")
        return p95s

    ivf = ivf_of(index)
    ours_p95 = scenario_table(f"sst-search ({args.approx}{f', nprobe {ivf.nprobe} of {ivf.nlist} lists' if ivf else ''}, "
                              f"float16 vectors at rest, {'cold: not warmed' if args.no_warm else 'warmed'})")
    grown = proc.memory_info().rss - rss_before_open
    print(f"after open and {len(scenarios) * (args.queries + 20)} searches: the reader grew {grown / 2**20:.0f} MiB = "
          f"{grown / args.n:.0f} bytes/vector, {mapped_resident(at_rest_file) / 2**20:.1f} MiB of the "
          f"{at_rest_file.stat().st_size / 2**20:.1f} MiB float16 file resident (shared with other readers)")
    print("  of which, bytes/vector: " + "; ".join(f"{what} {size / args.n:,.0f}" for what, size in reader_memory(
        snapshot, at_rest_file, index_files, status_before_open, engine.store.con).items()))

    def threaded() -> None:
        work_items = [(name, j) for j in range(args.queries) for name in scenarios]
        t = time.perf_counter()
        with ThreadPoolExecutor(args.threads) as pool:
            concurrent = list(pool.map(lambda item: timed(ours(item[0]), [item[1]])[0][0], work_items))
        wall = time.perf_counter() - t
        print(f"{args.threads} threads, all scenarios mixed: p50 {np.percentile(concurrent, 50):.1f} ms, "
              f"p95 {np.percentile(concurrent, 95):.1f} ms, {len(work_items) / wall:.0f} queries/s; {load()}")

    threaded()
    print(f"process RSS {proc.memory_info().rss / 2**30:.2f} GiB")
    if ivf is not None:
        configured = ivf.nprobe
        for factor in (float(f) for f in args.nprobe_factors.split(",") if f.strip()):
            ivf.nprobe = IndexConfig(nprobe_factor=factor).nprobe_for(ivf.nlist)  # the cached index the engine searches
            scenario_table(f"\nsst-search, nprobe factor {factor:g} (nprobe {ivf.nprobe})")
        ivf.nprobe = configured
    recorded = engine.store.index_config
    for field, values in (("selector_scan", args.selector_scans), ("exact_max", args.exact_maxes),
                          ("scan_parts", args.scan_parts)):
        for value in (type(getattr(recorded.plan, field))(v) for v in values.split(",") if v.strip()):
            engine.store.index_cache.config = recorded.model_copy(
                update={"plan": recorded.plan.model_copy(update={field: value})})
            scenario_table(f"\nsst-search, {field} {value:g}")
            if field == "scan_parts":  # whether splitting scans costs throughput: both sides, in one run
                threaded()
    for refine in (int(r) for r in args.refines.split(",") if r.strip()):
        engine.store.index_cache.config = recorded.model_copy(
            update={"tiers": [tier.model_copy(update={"refine": refine}) for tier in recorded.tiers]})
        scenario_table(f"\nsst-search, refine {refine}")
    engine.store.index_cache.config = recorded
    engine.close()
    engine = None  # its snapshot arrays: LanceDB gets the memory back

    if not args.no_lance:
        whole = data.rows(np.arange(args.n))
        lance_equal_recall(args, work, config, whole.ids, whole.vectors, *data.columns(whole), query_rows, query_ids,
                           scenarios, truth, ours_p95)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
