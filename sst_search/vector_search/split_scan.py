"""One query's scan, split into parts scanned on several cores at once: the probed IVF lists
(:func:`scan_lists`), or the admitted rows of an exact scan (the planner's).

FAISS spreads a search's *queries* over its threads, and a search here is one query: its
scan of the probed lists, most of its time at millions of vectors, ran on one core while
the others idled. FAISS's own ``parallel_mode = 1`` splits the lists instead, but it is a
setting of the index object every search shares, so it splits every scan, a post-filter's
thousands of candidates included (through the product at 1M x 512 the locality filter's
p95 went from 3.7 to 27.6 ms with it), and wakes OpenMP's threads on each call.

Here the ranked lists are dealt round-robin into parts (near and far lists in each, so the
parts cost about the same), each scanned through ``search_preassigned``, which releases the
GIL, and the parts' top hits merged, which gives the hits of one scan. An exact scan's rows
are cut into runs, each gathered, widened and scored apart. The caller runs one part and a
small shared pool of threads the others (:func:`run_in_parts`). A scan too small to pay for
the hand-off is not split. A part the pool has not started by the time the caller finished
its own is taken back and run by the caller, and while another scan runs in the process
every part stays with its caller: when the cores are busy with other searches (a loaded
app), a search costs what one scan costs, not a wait in a queue or a hand-off.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import faiss
import numpy as np

from sst_search.config import PlanConfig

#: Parts a scan is split into at most when :attr:`PlanConfig.scan_parts` is 0 (automatic).
MAX_AUTO_PARTS = 4

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
#: Scans running :func:`run_in_parts` now, in every thread of the process.
_running = 0
_running_lock = threading.Lock()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, which a container or ``taskset`` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without affinity
        return os.cpu_count() or 1


def automatic_parts() -> int:
    """Parts when ``scan_parts`` is 0: one per CPU the process may use, but no more than the
    threads FAISS was given (``OMP_NUM_THREADS``, which Ray sets to an actor's CPUs, so the
    shards of a sharded search do not each split over every core) and at most
    :data:`MAX_AUTO_PARTS`."""
    return max(1, min(available_cpus(), faiss.omp_get_max_threads(), MAX_AUTO_PARTS))


def parts_for(config: PlanConfig, pieces: int, components: float) -> int:
    """How many parts a scan of ``pieces`` (lists or rows) scoring ``components`` (codes x
    dimension) is split into: ``scan_parts`` (0: :func:`automatic_parts`), fewer so that
    each part scores at least ``scan_split_min``."""
    wanted = config.scan_parts or automatic_parts()
    return max(1, min(wanted, pieces, int(components // max(1, config.scan_split_min))))


def _pool_threads() -> int:
    return max(1, available_cpus() - 1)


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_pool_threads(), thread_name_prefix="scan-part")
        return _pool


def start_pool() -> None:
    """Start the shared pool's threads now (a reader's warm-up): a pool starts a thread on a
    submission that finds none idle, and the first split scan of a reader paid for it. Each
    thread waits for the others, so none takes two of the tasks; a pool busy with searches
    already has its threads, and a wait that times out behind them is not an error."""
    threads = _pool_threads()
    together = threading.Barrier(threads)
    for started in [_shared_pool().submit(together.wait, 1) for _ in range(threads)]:
        with contextlib.suppress(threading.BrokenBarrierError):
            started.result()


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads, and the scans its other threads ran, do
    not exist there."""
    global _pool, _pool_lock, _running, _running_lock
    _pool, _pool_lock, _running, _running_lock = None, threading.Lock(), 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def run_in_parts(part: Callable[[int], T], parts: int) -> list[T]:
    """``[part(0), ..., part(parts - 1)]``: the first run by the caller, the others on the
    shared pool, each taken back by the caller if the pool has not started it by then.

    While another scan runs in the process, the caller runs every part itself, one after
    another: the cores are busy already, and handing parts over only adds its cost (eight
    threads searching a 1M x 512 store did 233-251 queries/s with every scan handed over in
    two parts, 281 with none, in one run)."""
    global _running
    with _running_lock:
        _running += 1
        alone = _running == 1
    try:
        if parts <= 1 or not alone:
            return [part(p) for p in range(parts)]
        pool = _shared_pool()
        others = [pool.submit(part, p) for p in range(1, parts)]
        done = [part(0)]
        for p, future in enumerate(others, start=1):
            done.append(part(p) if future.cancel() else future.result())
        return done
    finally:
        with _running_lock:
            _running -= 1


def in_runs(count: int, parts: int, run: Callable[[slice], None]) -> None:
    """``run`` over ``parts`` consecutive runs of ``range(count)`` at once (each writes its own
    slice of a shared output)."""
    bounds = np.linspace(0, count, max(1, parts) + 1).astype(int).tolist()
    run_in_parts(lambda p: run(slice(bounds[p], bounds[p + 1])), max(1, parts))


def score_into(scores: np.ndarray, query: np.ndarray, matrix: np.ndarray) -> None:
    """``scores[:] = matrix @ query`` (float32, C-contiguous rows) with FAISS's single-threaded
    SIMD kernel: a BLAS matrix-vector product wakes BLAS's own threads, which costs
    milliseconds when the cores are busy, and this runs in one part of a split scan."""
    faiss.fvec_inner_products_ny(faiss.swig_ptr(scores), faiss.swig_ptr(query), faiss.swig_ptr(matrix),
                                 matrix.shape[1], len(matrix))


def row_inner_products(query: np.ndarray, matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``matrix[rows] @ query`` (float32, C-contiguous rows), gathered and scored on the calling
    thread: FAISS's own product over listed rows opens an OpenMP region even for one query,
    whose threads then spin and slow the scan that follows (at 10M x 768 it took an
    unfiltered search's scan from 4.7 to 7.4-8.5 ms)."""
    gathered = np.take(matrix, rows, axis=0)
    scores = np.empty(len(gathered), np.float32)
    score_into(scores, np.ascontiguousarray(query, np.float32), gathered)
    return scores


def inner_products(query: np.ndarray, matrix: np.ndarray, config: PlanConfig) -> np.ndarray:
    """``matrix @ query`` (float32, C-contiguous rows) in runs scored at once."""
    query = np.ascontiguousarray(query, np.float32)
    scores = np.empty(len(matrix), np.float32)
    in_runs(len(matrix), parts_for(config, len(matrix), matrix.size),
            lambda rows: score_into(scores[rows], query, matrix[rows]))
    return scores


def scan_lists(ivf: faiss.IndexIVF, coarse: np.ndarray, lists: np.ndarray, scores: np.ndarray, n: int,
               selector: faiss.IDSelector | None, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``n`` ``(scores, ids)`` of one query (``coarse``: as the IVF index sees it) in
    ``lists`` (with their coarse ``scores``), among what ``selector`` admits, best first;
    ``parts`` > 1 scans that many parts at once (see the module docstring). Fewer than ``n``
    when the lists hold fewer admitted codes."""
    found = run_in_parts(lambda p: scan_part(ivf, coarse, lists[p::parts], scores[p::parts], n, selector), parts)
    if len(found) == 1:
        return found[0]
    values, ids = np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
    # Best first, ties by id so that the merge is deterministic.
    order = np.lexsort((ids, values if ivf.metric_type == faiss.METRIC_L2 else -values))[:n]
    return values[order], ids[order]


def scan_part(ivf: faiss.IndexIVF, coarse: np.ndarray, lists: np.ndarray, scores: np.ndarray, n: int,
              selector: faiss.IDSelector | None) -> tuple[np.ndarray, np.ndarray]:
    """One part of :func:`scan_lists`, on the calling thread: the top ``n`` ``(scores, ids)``
    of ``lists``, best first."""
    lists, scores = np.ascontiguousarray(lists, np.int64), np.ascontiguousarray(scores, np.float32)
    # FAISS reads how many assigned lists a query has from the parameters' nprobe.
    params = faiss.SearchParametersIVF(nprobe=len(lists))
    if selector is not None:
        params.sel = selector
    values, ids = np.empty(n, np.float32), np.empty(n, np.int64)
    # FAISS's Python wrapper of search_preassigned refuses search parameters (the selector); the C++ method takes them.
    ivf.search_preassigned_c(1, faiss.swig_ptr(coarse), n, faiss.swig_ptr(lists), faiss.swig_ptr(scores),
                             faiss.swig_ptr(values), faiss.swig_ptr(ids), False, params)
    kept = ids >= 0
    return values[kept], ids[kept]
