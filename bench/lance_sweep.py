"""LanceDB searched at equal recall: the lowest setting of each index kind that reaches a recall target.

A latency ratio between two engines means something only when both return the same
answers. LanceDB's defaults return recall@10 of 0.19-0.98 on our scenarios while ours
return 0.99-1.00, so comparing their p95s at defaults compares unequal work. This module
walks a ladder of LanceDB settings (partitions probed, refine factor, HNSW ``ef``),
cheapest first, per scenario, and stops at the first that reaches the target; a scenario
whose every setting falls short is reported "not reached" with the best recall seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

#: index kind -> the knobs its ladder walks besides the partitions probed
KINDS = ("IVF_PQ", "IVF_HNSW_SQ")


@dataclass(frozen=True)
class Setting:
    """One point of the ladder: what LanceDB is asked to spend on a query."""

    nprobes: int
    refine: int | None = None
    ef: int | None = None

    def label(self) -> str:
        parts = [f"nprobes {self.nprobes}"]
        if self.refine is not None:
            parts.append(f"refine {self.refine}")
        if self.ef is not None:
            parts.append(f"ef {self.ef}")
        return ", ".join(parts)


@dataclass
class Outcome:
    """A scenario's sweep: the first setting reaching the target (None: not reached)."""

    kind: str
    scenario: str
    setting: Setting | None = None
    p50: float = float("nan")
    p95: float = float("nan")
    recall: float = 0.0
    exact_k: float = 0.0
    tried: list[tuple[Setting, float]] = field(default_factory=list)


def ladder(kind: str, partitions: int, first_nprobes: int, refines: Sequence[int], efs: Sequence[int],
           k: int) -> list[Setting]:
    """Settings cheapest first: partitions probed double up to all of them; ef and refine grow within each.
    An HNSW search fetching ``refine * k`` candidates needs ``ef`` at least that (LanceDB refuses less)."""
    probes, n = [], max(1, first_nprobes)
    while n < partitions:
        probes.append(n)
        n *= 2
    probes.append(partitions)
    if kind == "IVF_PQ":
        return [Setting(p, refine=r) for p in probes for r in refines]
    # SQ codes cap recall below full precision; a refine pass re-scores candidates on the raw vectors
    settings = [Setting(p, ef=max(e, k * (r or 1)), refine=r) for p in probes for e in efs for r in (None, *refines)]
    return list(dict.fromkeys(settings))


def build_table(work: Path, kind: str, columns: dict[str, pa.Array], vectors: np.ndarray, partitions: int,
                sub_vectors: int, iterations: int, sample_rate: int):
    """A LanceDB table holding the bench's rows with one vector index of ``kind`` and scalar indexes."""
    import lancedb

    db = lancedb.connect(str(work / f"lance_{kind.lower()}"))
    data = dict(columns)
    data["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    table = db.create_table("traits", data=pa.table(data), mode="overwrite")
    options = {"num_sub_vectors": sub_vectors} if kind == "IVF_PQ" else {}
    table.create_index(metric="dot", num_partitions=partitions, index_type=kind, max_iterations=iterations,
                       sample_rate=sample_rate, **options)
    for column in ("group_name", "eventDate"):
        table.create_scalar_index(column)
    return table


def searcher(table, vectors: np.ndarray, query_rows: np.ndarray, query_ids: np.ndarray, k: int,
             where_of: Callable[[int], str | None], setting: Setting) -> Callable[[int], list[int]]:
    """Query j under a scenario's prefilter at one setting; the query specimen itself is excluded, as ours does."""

    def run(j: int) -> list[int]:
        query = table.search(vectors[query_rows[j]]).distance_type("dot").nprobes(setting.nprobes)
        if setting.refine is not None:
            query = query.refine_factor(setting.refine)
        if setting.ef is not None:
            query = query.ef(setting.ef)
        where = " AND ".join(w for w in (where_of(j), f"id != {int(query_ids[j])}") if w)
        return query.limit(k).select(["id", "_distance"]).where(where, prefilter=True).to_arrow().column("id").to_pylist()

    return run


def measure(run: Callable[[int], list[int]], truth: Sequence[set[int]], k: int,
            warmup: int = 3) -> tuple[float, float, float, float]:
    """p50, p95 (ms), mean recall@k and the share of queries with exactly min(k, passing) results."""
    for j in range(min(warmup, len(truth))):
        run(j)
    latencies, recalls, exact = [], [], []
    for j, expected in enumerate(truth):
        t = time.perf_counter()
        got = run(j)
        latencies.append(1000 * (time.perf_counter() - t))
        recalls.append(len(set(got) & expected) / max(1, len(expected)))
        exact.append(len(got) == min(k, len(expected)))
    p50, p95 = np.percentile(latencies, [50, 95])
    return float(p50), float(p95), float(np.mean(recalls)), float(np.mean(exact))


def sweep(kind: str, scenario: str, settings: Sequence[Setting], make_run: Callable[[Setting], Callable],
          truth: Sequence[set[int]], k: int, target: float) -> Outcome:
    """Walk the ladder until recall@k reaches ``target``; a probe pass on a few queries skips hopeless settings."""
    outcome = Outcome(kind, scenario)
    probe = max(5, len(truth) // 10)
    for setting in settings:
        run = make_run(setting)
        _, _, quick, _ = measure(run, truth[:probe], k, warmup=0)
        if quick < target - 0.1:
            outcome.tried.append((setting, quick))
            continue
        p50, p95, recall, exact_k = measure(run, truth, k)
        outcome.tried.append((setting, recall))
        if recall >= target:
            outcome.setting, outcome.p50, outcome.p95, outcome.recall, outcome.exact_k = setting, p50, p95, recall, exact_k
            return outcome
    outcome.recall = max((r for _, r in outcome.tried), default=0.0)
    return outcome


def throughput(runs: dict[str, Callable[[int], list[int]]], queries: int, threads: int) -> tuple[float, float]:
    """Queries per second and p95 (ms) with ``threads`` threads over every scenario's queries, mixed."""
    items = [(name, j) for j in range(queries) for name in runs]

    def one(item) -> float:
        t = time.perf_counter()
        runs[item[0]](item[1])
        return 1000 * (time.perf_counter() - t)

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        latencies = list(pool.map(one, items))
    return len(items) / (time.perf_counter() - t), float(np.percentile(latencies, 95))


def report(outcomes: Sequence[Outcome], ours_p95: dict[str, float], target: float) -> None:
    """One line per scenario: the setting reached (or not), its figures and LanceDB's p95 over ours."""
    print(f"{'':<7}{'filter':<12} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>10} {'exact k':>8}  setting")
    for o in outcomes:
        if o.setting is None:
            print(f"{'':<7}{o.scenario:<12} {'-':>8} {'-':>8} {o.recall:>10.3f} {'-':>8}  "
                  f"recall {target} not reached (best {o.recall:.3f} over {len(o.tried)} settings)", flush=True)
        else:
            print(f"{'':<7}{o.scenario:<12} {o.p50:>8.1f} {o.p95:>8.1f} {o.recall:>10.3f} {o.exact_k:>8.2f}  "
                  f"{o.setting.label()}; LanceDB p95 / ours {o.p95 / ours_p95[o.scenario]:.1f}x", flush=True)
