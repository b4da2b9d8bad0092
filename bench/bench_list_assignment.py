"""How long a streamed build's filing of vectors in their IVF lists takes, FAISS's float32
comparison with every list against bfloat16 products checked exactly
(``index.fast_assignment_lists``), in one run, and whether both filed every vector in the
same list.

The lists are trained once (two levels, as a large build trains them); each side then fills
a copy of the trained, empty index from the same chunks through the product's own
:func:`build_index_from` path, timed apart from the training. At 10M x 768 the build uses
12,649 lists: ``--lists 12649`` gives a smaller collection the same comparisons per vector.

    python bench/bench_list_assignment.py --n 1000000 --dim 768 --lists 12649
    python bench/bench_list_assignment.py --n 1000000 --dim 768 --lists 4000 --factory "IVF{nlist},SQ8"
"""

from __future__ import annotations

import argparse
import os
import time

import faiss
import numpy as np
from bench_query import Synthetic

from sst_search.config import IndexConfig, IndexTier
from sst_search.vector_search import indexes, list_assignment


def fill(index: faiss.Index, data: Synthetic, config: IndexConfig) -> float:
    """Seconds to fill ``index`` (trained, empty) from every chunk, as build_index_from fills."""
    filling = indexes.Filling(index, config)
    took = 0.0
    for part in data.parts():
        start = time.perf_counter()
        filling.add(part.vectors, part.ids)
        took += time.perf_counter() - start
    start = time.perf_counter()
    filling.finish()
    return took + time.perf_counter() - start


def list_members(index: faiss.Index) -> list[np.ndarray]:
    ivf = indexes.ivf_of(index)
    return [np.sort(faiss.rev_swig_ptr(ivf.invlists.get_ids(i), ivf.invlists.list_size(i)).copy())
            for i in range(ivf.nlist)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--lists", type=int, default=12_649)
    ap.add_argument("--factory", default="IVF{nlist},PQ{dim}x4fs")
    args = ap.parse_args()
    data = Synthetic(args.n, args.dim, 2000, 100, 0.05)
    print(f"load average {os.getloadavg()[0]:.2f}; bfloat16 matrix units: {list_assignment.matrix_units()}", flush=True)
    base = IndexConfig(exact_threshold=1, tiers=[IndexTier(up_to=None, factory=args.factory)],
                       nlist_factor=args.lists / np.sqrt(args.n))
    sample_rows = indexes.training_rows(args.n, args.lists * base.train_per_list, base.train_seed)
    start = time.perf_counter()
    trained = indexes.new_index(args.n, args.dim, base, lambda size: data.rows(sample_rows[:size]).vectors)
    print(f"trained {indexes.ivf_of(trained).nlist} lists in {time.perf_counter() - start:.1f} s", flush=True)
    members = {}
    for name, lists in (("faiss", 10**9), ("bfloat16", 1)):
        index = faiss.clone_index(trained)
        took = fill(index, data, base.model_copy(update={"fast_assignment_lists": lists}))
        print(f"{name}: filled {index.ntotal:,} vectors in {took:.1f} s ({took / args.n * 1e5:.2f} s per 100,000); "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)
        members[name] = list_members(index)
        del index
    moved = sum(len(np.setxor1d(a, b)) for a, b in zip(members["faiss"], members["bfloat16"], strict=True)) // 2
    print(f"vectors filed in another list than FAISS's: {moved} of {args.n:,}")


if __name__ == "__main__":
    main()
