"""Where work units run: in this process, or on Ray actors that each load the models once.

Both runners yield ``list[SpecimenRecord]`` per unit as units finish; the driver writes
them. Both run a unit's stages through the same :class:`~indexer.pipeline.Pipeline`
(``indexer.threads: 0`` runs them one after another instead). Ray is used as a cluster,
never re-implemented: an ``ActorPool`` hands units to idle actors and results stream back
in completion order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from sst_search.config import Config
from sst_search.store import SpecimenRecord

from .pipeline import Pipeline
from .worker import Worker, WorkUnit


class LocalRunner:
    def __init__(self, config: Config, references: Path, worker: Worker | None = None):
        self.worker = worker or Worker(config, references)
        self.threads = config.indexer.threads

    def run(self, units: Iterable[WorkUnit]) -> Iterator[list[SpecimenRecord]]:
        if self.threads == 0:
            yield from map(self.worker.process, units)
        else:
            yield from Pipeline(self.worker, self.threads).run(units)

    def timings(self) -> dict[str, float]:
        return self.worker.get_timings()

    def close(self) -> None:
        pass


class RayRunner:
    """``num_workers`` Ray actors, each holding its own SAM 2 + embedder.

    Without ``address`` a local cluster is started (and shut down afterwards).
    """

    def __init__(self, config: Config, references: Path, address: str | None = None, num_workers: int = 2):
        import ray
        from ray.util import ActorPool

        self._ray = ray
        self._owns_cluster = not ray.is_initialized()
        if self._owns_cluster:
            ray.init(
                address=address,
                num_cpus=None if address else num_workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        threads = max(1, int(ray.cluster_resources().get("CPU", num_workers)) // num_workers)
        actor_cls = ray.remote(num_cpus=1)(_RayWorker)
        if config.indexer.threads is not None:
            threads = config.indexer.threads
        self.actors = [actor_cls.remote(config, str(references), threads) for _ in range(num_workers)]
        self.pool = ActorPool(self.actors)

    def run(self, units: Iterable[WorkUnit]) -> Iterator[list[SpecimenRecord]]:
        yield from self.pool.map_unordered(lambda actor, unit: actor.process.remote(unit), list(units))

    def timings(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for t in self._ray.get([a.get_timings.remote() for a in self.actors]):
            for k, v in t.items():
                totals[k] = totals.get(k, 0.0) + v
        return totals

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        if self._owns_cluster:
            self._ray.shutdown()


class _RayWorker(Worker):
    """A worker whose units run through the pipeline with the actor's share of the cores."""

    def __init__(self, config: Config, references: str, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        super().__init__(config, Path(references))
        self._pipeline = Pipeline(self, threads) if threads else None

    def process(self, unit: WorkUnit) -> list[SpecimenRecord]:
        return self._pipeline.process(unit) if self._pipeline else super().process(unit)


def make_runner(config: Config, references: Path, worker: Worker | None = None):
    engine = config.indexer
    if engine.engine == "ray":
        return RayRunner(config, references, engine.ray_address, engine.num_workers)
    return LocalRunner(config, references, worker)
