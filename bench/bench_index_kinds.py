"""Bytes per vector and recall@10 of each IVF code kind at a few sizes: where the size tiers
of ``index.tiers`` (sst_search/config.py) put their bounds.

Each kind is built through the product's own :func:`build_index` (the training the store
does: ``train_per_list`` vectors per list, ``train_niter`` iterations), its bytes per vector
measured as the store's manifest measures them (the written file / vectors), and searched
through :func:`search_table`, the planner every search goes through, with the stored vectors
as float16 (as a published snapshot maps them), unfiltered and under a filter that avoids
the query's neighbourhood (another group: the selector plan). Recall@10 is against the exact
top 10 of the float32 vectors. Vectors are clustered like bench_query.py's.

    python bench/bench_index_kinds.py --sizes 100000,400000 --dim 128
    python bench/bench_index_kinds.py --sizes 200000 --dim 512 --kinds "IVF{nlist},SQ8:4,IVF{nlist},RaBitQ:10"
    python bench/bench_index_kinds.py --sizes 1000000 --dim 768 --kinds "IVF{nlist},SQ8:4" --two-level-lists 1,1000000000
    python bench/bench_index_kinds.py --sizes 1000000 --dim 768 --kinds "IVF{nlist},SQ8:4,IVF{nlist},PQ{half_dim}x4fs:20"

``--two-level-lists`` builds each kind once per value of ``index.two_level_lists`` (1: lists
trained in two levels; a large number: in one).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from bench_query import clustered_vectors
from machine_load import load

from sst_search.config import IndexConfig, IndexTier
from sst_search.vector_search.indexes import build_index
from sst_search.vector_search.planner import search_table
from sst_search.vector_search.vector_table import VectorTable

DEFAULT_KINDS = ("IVF{nlist},SQ8:4,IVF{nlist},RaBitQ:4,IVF{nlist},RaBitQ:10,IVF{nlist},PQ{m}x8:10,"
                 "IVF{nlist},PQ{half_dim}x4fs:20")


class _Group:
    """An admission of the rows of one group (what a snapshot's filter mask is)."""

    def __init__(self, ids: np.ndarray, passing: np.ndarray) -> None:
        self.ids, self.mask = ids, passing

    def passes(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, self.ids[self.mask])

    def admitted(self) -> np.ndarray:
        return self.ids[self.mask]

    def table_mask(self, table_ids: np.ndarray) -> np.ndarray:
        return self.mask


def measure(n: int, dim: int, factory: str, refine: int, queries: int, groups: int, two_level_lists: int,
            k: int = 10) -> str:
    vectors, clusters = clustered_vectors(n, dim, clusters=max(20, n // 500), noise=0.05, seed=0)
    ids = np.sort(np.random.default_rng(1).choice(1 << 62, size=n, replace=False).astype(np.int64))
    group = clusters % groups
    config = IndexConfig(exact_threshold=0, tiers=[IndexTier(factory=factory.replace("{m}", str(dim // 8)),
                                                             refine=refine)],
                         two_level_lists=two_level_lists)
    t = time.perf_counter()
    index = build_index(vectors, ids, dim, config)
    build_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.index"
        faiss.write_index(index, str(path))
        index_bpv = path.stat().st_size / n
    table = VectorTable(ids, vectors.astype(np.float16), presorted=True)
    rows = np.random.default_rng(2).choice(n, size=queries, replace=False)
    recalls = {"none": [], "group-other": []}
    latencies = []
    for row in rows:
        scores = vectors @ vectors[row]
        scores[row] = -np.inf
        other = group == (group[row] + groups // 2) % groups
        for name, passing in (("none", None), ("group-other", other)):
            admission = None if passing is None else _Group(ids, passing)
            t = time.perf_counter()
            hits = search_table(index, table, config, vectors[row], k, admission, skip=int(ids[row])).hits
            latencies.append(1000 * (time.perf_counter() - t))
            truth = np.argpartition(-(scores if passing is None else np.where(passing, scores, -np.inf)), k)[:k]
            recalls[name].append(len({h for h, _ in hits} & set(ids[truth].tolist())) / k)
    ivf = faiss.extract_index_ivf(index)
    levels = 2 if ivf.nlist >= two_level_lists and isinstance(index, faiss.IndexIVF) else 1
    shown = factory.replace("{m}", str(dim // 8)).replace("{half_dim}", str(dim // 2))
    return (f"{n:>9,} {dim:>4} {shown:<22} {refine:>6} {ivf.nlist:>6} {levels:>6} "
            f"{index_bpv:>8.0f} {2 * dim + 8:>9} {np.mean(recalls['none']):>7.3f} {np.mean(recalls['group-other']):>7.3f} "
            f"{np.percentile(latencies, 95):>7.1f} {build_s:>7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,400000")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--kinds", default=DEFAULT_KINDS,
                    help="comma-separated FACTORY:REFINE ({nlist} from the size, {m} = dim/8 sub-quantizers, "
                         "{half_dim} = dim/2)")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--two-level-lists", default=str(IndexConfig().two_level_lists),
                    help="comma-separated index.two_level_lists values, each kind built once per value")
    args = ap.parse_args()
    parts = args.kinds.split(",")
    kinds = []
    for part in parts:  # factory strings hold commas: a kind ends at its ":refine"
        if kinds and ":" not in kinds[-1]:
            kinds[-1] += "," + part
        else:
            kinds.append(part)
    print(f"cpus {os.cpu_count()}  faiss {faiss.__version__}  {load()}")
    print(f"{'n':>9} {'dim':>4} {'factory':<22} {'refine':>6} {'nlist':>6} {'levels':>6} {'index B/v':>8} {'f16 B/v':>9} "
          f"{'R@10':>7} {'R@10 oth':>7} {'p95 ms':>7} {'build s':>7}")
    for n in (int(s) for s in args.sizes.split(",")):
        for kind in kinds:
            factory, refine = kind.rsplit(":", 1)
            for two_level_lists in (int(v) for v in args.two_level_lists.split(",")):
                print(measure(n, args.dim, factory, int(refine), args.queries, args.groups, two_level_lists), flush=True)
    print(load())


if __name__ == "__main__":
    main()
