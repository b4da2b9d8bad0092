"""Overlap every per-item stage of indexing with the model, behind bounded queues.

A :class:`~indexer.worker.Worker` unit goes through prepare (decode, resize for SAM 2, read a
provided mask), segment (SAM 2) and finish (embed, measure, encode masks), and the driver
then writes it. Run one after another, the GPU waits for every decode, every measurement
and every write. Here preparing threads read units ahead of the model, one model thread
segments unit after unit, finishing threads embed and measure the units the model is done
with, and the caller writes each finished unit while all of that goes on, much as a PyTorch
DataLoader's workers prefetch batches while the model runs.

Units come out in the order they went in and each is exactly what :meth:`Worker.process`
returns for it (the stages are the same functions), so the store does not depend on which
path ran. Memory is bounded: at most ``depth`` units are prepared ahead of the model and
at most ``depth`` segmented units wait to be finished or written. Units that are finished
while the caller writes are handed over together, so their writes share one transaction. A failure inside a stage
is the item's failure (the worker records it); anything else stops the job with its cause,
after the units already yielded were written.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing

import torch

from sst_search.store import SpecimenRecord

from .worker import PreparedItem, Worker, WorkUnit

_DONE = object()


def default_threads() -> int:
    """CPU threads for preparing and finishing: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Pipeline:
    """Runs a worker's stages on threads; ``run`` yields each unit's records in order."""

    def __init__(self, worker: Worker, threads: int | None = None, depth: int = 4):
        if depth < 1:
            raise ValueError(f"pipeline depth must be at least 1, got {depth}")
        self.worker = worker
        self.threads = threads or default_threads()
        self.depth = depth

    def process(self, unit: WorkUnit) -> list[SpecimenRecord]:
        """One unit, its items prepared in parallel (how a Ray actor takes its units)."""
        with closing(self.run([unit])) as batches:
            return next(batches)

    def run(self, units: Iterable[WorkUnit]) -> Iterator[list[SpecimenRecord]]:
        finished: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        # torch's intra-op thread count is per thread; the caller's, everywhere, keeps every
        # reduction (and so every mask and vector) what the one-thread path computes.
        torch_threads = torch.get_num_threads()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="sst-prepare", initializer=torch.set_num_threads,
                                initargs=(torch_threads,)) as pool:
            model = threading.Thread(target=self._model_loop, args=(units, pool, finished, stop, torch_threads),
                                     name="sst-model", daemon=True)
            model.start()
            try:
                entry = None
                while (entry := entry or finished.get()) is not _DONE:
                    if isinstance(entry, BaseException):
                        raise entry
                    records, entry = self._with_ready_units(entry.result(), finished)
                    yield records
            finally:
                stop.set()
                _drain(finished)
                model.join()

    def _with_ready_units(self, records: list[SpecimenRecord], finished: queue.Queue) -> tuple[list[SpecimenRecord], object]:
        """``records`` plus the units already finished behind it, as one batch, and the entry
        taken from the queue but not used (None: nothing taken). When writing is what holds
        the pipeline back, finished units queue up and are committed together, so a
        transaction's fixed cost is paid once for several units; when the model is slower,
        each unit is committed as soon as it is done."""
        for _ in range(self.depth - 1):
            try:
                entry = finished.get_nowait()
            except queue.Empty:
                return records, None
            if not (isinstance(entry, Future) and entry.done() and entry.exception() is None):
                return records, entry
            records = records + entry.result()
        return records, None

    def _model_loop(self, units: Iterable[WorkUnit], pool: ThreadPoolExecutor, finished: queue.Queue,
                    stop: threading.Event, torch_threads: int) -> None:
        """The model's thread: segment unit after unit while the pool prepares the next ones
        and finishes the last ones; hand each unit's finishing future to the consumer."""
        torch.set_num_threads(torch_threads)
        ahead: deque[tuple[WorkUnit, list[Future[PreparedItem]]]] = deque()
        todo = iter(units)
        try:
            while not stop.is_set():
                while len(ahead) < self.depth and (unit := next(todo, None)) is not None:
                    ahead.append((unit, [pool.submit(self.worker.prepare, unit, item) for item in unit.items]))
                if not ahead:
                    break
                unit, futures = ahead.popleft()
                prepared = [f.result() for f in futures]
                segmented = self.worker.segment(unit, prepared)
                _put(finished, pool.submit(self.worker.finish, unit, prepared, segmented), stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            _put(finished, exc, stop)
        finally:
            for _, futures in ahead:
                for f in futures:
                    f.cancel()
            _put(finished, _DONE, stop)


def _put(q: queue.Queue, item: object, stop: threading.Event) -> None:
    """Put ``item`` unless the consumer has gone (then nothing reads the queue any more)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
