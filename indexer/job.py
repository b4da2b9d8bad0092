"""``sst-search index``: plan, segment + embed, write - resumable and loss-free.

Every unit of work is committed in its own DuckDB transaction as soon as it is done, so a
job killed at any moment keeps all finished units; the next run's plan skips them and
redoes the rest. The driver is the only writer of DuckDB and FAISS, whatever the engine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sst_search.builder import embedder_fingerprint
from sst_search.config import Config, stable_hash
from sst_search.pattern_map import refresh_maps
from sst_search.references import group_hint, reference_folders
from sst_search.remeasuring import remeasure
from sst_search.sources import Item
from sst_search.sources.fetch import fetch_items
from sst_search.sources.naming import record_name, url_failure
from sst_search.store import Store
from sst_search.store.connection import repair_hint
from sst_search.store.errors import StoreDamagedError
from sst_search.store.review_tables import corrections
from sst_search.store.snapshots import publish_snapshot

from .collection import collection_items, image_cache
from .instance_split import SplitSummary, crops_dir, split_instances
from .plan import make_plan
from .runners import make_runner
from .worker import Worker

log = logging.getLogger("sst_search.indexer")


class MassRemovalError(RuntimeError):
    """The run would remove or fail a large share of the index; nothing was written."""


@dataclass
class RunSummary:
    run_id: str
    total: int
    counts: dict[str, int]
    failures: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    weights_random: bool = False
    #: path -> status (``failed`` or ``no_reference``) of each entry of ``failures``
    failure_status: dict[str, str] = field(default_factory=dict)
    #: specimens indexed before measurements existed, measured by this run from their stored masks
    remeasured: int = 0
    split: SplitSummary | None = None  # --instances: photos split into instance items
    #: the scale settings changed since the last run, so every indexed specimen was re-measured
    rescaled: bool = False

    @property
    def exit_code(self) -> int:
        """0: everything indexed or unchanged; 1: some items (or photos to split) failed or have no references."""
        failed_photos = self.split.failed if self.split else 0
        return 1 if self.counts.get("failed", 0) or self.counts.get("no_reference", 0) or failed_photos else 0


def run_index(
    collection: Path | str,
    references: Path,
    db: Path,
    config: Config,
    masks: Path | None = None,
    force: bool = False,
    default_group: str | None = None,
    quiet: bool = True,
    allow_mass_removal: bool = False,
    tracker=None,
    embedder=None,
    group_by: str = "scientificName",
    instance_references: Path | None = None,
    items: list[Item] | None = None,
) -> RunSummary:
    """Index ``collection`` into the store at ``db`` and publish a verified snapshot.

    ``tracker`` and ``embedder``, when given, are used instead of building the models
    ``config`` describes (they must be what it describes: the plan fingerprints the
    config). They live in this process, so they need the local engine. With
    ``instance_references`` every photo is first split into one item per instance (see
    :mod:`indexer.instance_split`) and those items are indexed.

    Stops before writing anything when the store is damaged (:class:`StoreDamagedError`) or
    when the run would remove or fail more than ``config.indexer.max_removal_share`` of the
    indexed items because files vanished or references broke (:class:`MassRemovalError`,
    unless ``allow_mass_removal``). ``items``, when given, are ``collection``'s items already
    loaded by :func:`~indexer.collection.collection_items` (the CLI loads them before any
    model library is imported, so a refused collection costs no start-up).
    """
    started = time.perf_counter()
    if (tracker is not None or embedder is not None) and config.indexer.engine != "local":
        raise ValueError("already-built models run in this process; they need indexer.engine 'local'")
    cache = image_cache(config, db)
    if items is None:
        items = collection_items(collection, config, db, default_group=default_group, group_by=group_by)
    items = fetch_items(items, cache, config.fetch, config.fetch.iiif_size or config.segmentation.image_size,
                        quiet=quiet)
    worker = Worker(config, references, tracker, embedder) if config.indexer.engine == "local" else None
    # The driver of a Ray job plans without building the embedder its actors build.
    embedder_fp = worker.embedder.fingerprint if worker else embedder_fingerprint(config.embedding)
    split = None
    with Store.open(db, index_config=config.index) as store:
        damage = store.verify(indexes=False)
        if damage:
            raise StoreDamagedError(damage, "nothing was indexed; " + repair_hint(db))
        if instance_references is not None:
            items, split = split_instances(items, store, config, instance_references, crops_dir(db), worker, force)
        with tqdm(total=len(items), desc="plan (hash)", unit="img", disable=quiet) as bar:
            plan = make_plan(
                items, store.specimen_states(), config, Path(references), embedder_fp,
                masks_dir=masks, force=force, hash_progress=bar.update, locations=store.specimen_locations(),
                corrections=corrections(store),
            )
        moved = store.move_specimens(plan.moves)
        plan_seconds = time.perf_counter() - started
        if not allow_mass_removal:
            _guard_removals(plan, config.indexer.max_removal_share, store)
        run_fingerprint = {
            **plan.fingerprint,
            # What the query engine needs to segment and embed an uploaded photo the same way.
            "config": config.model_dump(mode="json"),
            "references_dir": str(Path(references).resolve()),
            # Where crops and exports fetch full-resolution images into (sst_search.originals).
            "image_cache": str(cache.root),
        }
        previous_measure = (store.last_run_fingerprint().get("config") or {}).get("measure")
        # A new --pixels-per-mm or --scale-column applies to the whole index, not only to new items.
        rescaled = previous_measure is not None and previous_measure != config.measure.model_dump(mode="json")
        run_id = store.begin_run(run_fingerprint, stable_hash(config.model_dump(mode="json")), config.indexer.engine)
        counts = {"indexed": 0, "failed": 0, "no_reference": 0, "unchanged": plan.unchanged, "removed": 0,
                  "moved": moved}
        failures: list[tuple[str, str]] = list(plan.rejected)
        counts["failed"] += len(plan.rejected)
        failure_status: dict[str, str] = {}
        write_seconds = 0.0
        runner = make_runner(config, Path(references), worker) if plan.units else None
        folders = reference_folders(references)
        try:
            with tqdm(total=plan.todo, desc="segment + embed", unit="img", disable=quiet) as bar:
                for records in runner.run(plan.units) if runner else []:
                    for r in records:
                        if r.status != "indexed" and r.source and r.error:
                            r.error = url_failure(r.error, r.path, r.source, record_name(r.metadata, r.item_key))
                        if r.status == "no_reference" and r.group_name:
                            r.error = (r.error or "") + group_hint(r.group_name, r.metadata, folders)
                    t = time.perf_counter()
                    store.write_batch(records)
                    write_seconds += time.perf_counter() - t
                    for r in records:
                        counts[r.status] += 1
                        if r.status != "indexed":
                            failures.append((r.source or r.path, r.error or r.status))
                            failure_status[r.source or r.path] = r.status
                    bar.update(len(records))
                    if quiet:
                        log.info("committed %d/%d", sum(counts[s] for s in ("indexed", "failed", "no_reference")), plan.todo)
            t = time.perf_counter()
            counts["removed"] = store.remove_specimens(plan.to_remove)
            store.flush_indexes()
            repaired = store.repair_indexes(deep=True)  # a damaged FAISS file is rebuilt from the catalog
            if repaired:
                log.warning("rebuilt damaged FAISS indexes from the catalog: %s", ", ".join(f"{e}/{t}" for e, t in repaired))
            write_seconds += time.perf_counter() - t
            t = time.perf_counter()
            # Masks written before measurements existed, or all after a change of scale, are measured
            # now from the catalog (no re-segmenting).
            remeasured, _ = remeasure(store, config.measure.scale_column, config.measure.pixels_per_mm,
                                      specimen_ids=None if rescaled else store.unmeasured_specimens())
            stages = runner.timings() if runner else {}
            # Measuring happens in the workers beside embedding, plus any re-measuring here.
            measure_seconds = stages.pop("measure", 0.0) + time.perf_counter() - t
            timings = {"plan": plan_seconds, **stages, "write": write_seconds, "measure": measure_seconds,
                       "total": time.perf_counter() - started}
        finally:
            if runner is not None:
                runner.close()
        for (embedder, trait), outcome in refresh_maps(store).items():  # stored maps follow the new vectors
            log.info("map %s/%s: %s", embedder, trait, outcome)
        store.finish_run(run_id, counts, timings)
    publish_snapshot(db)
    seg = plan.fingerprint.get("segmentation") or {}
    return RunSummary(run_id, plan.total, counts, failures, timings, seg.get("weights_sha256") == "random", failure_status,
                      remeasured, split, rescaled)


def _guard_removals(plan, max_share: float, store: Store) -> None:
    """Refuse a run that would wipe a large share of the index: a moved folder, an unmounted
    disk or one typo in a traits.yaml looks exactly like "all these items are gone"."""
    at_risk = sum(len(paths) for paths in plan.at_risk.values())
    if not plan.indexed_before or at_risk <= max_share * plan.indexed_before:
        return
    lines = []
    for cause, paths in plan.at_risk.items():
        if cause == "items are no longer in the collection":
            paths = [(store.get_specimen(int(sid)) or {}).get("path", sid) for sid in paths[:3]] + paths[3:]
        lines.append(f"{len(paths)} {cause}, e.g. {', '.join(map(str, paths[:3]))}")
    raise MassRemovalError(
        f"this run would remove or fail {at_risk} of {plan.indexed_before} indexed items "
        f"({at_risk / plan.indexed_before:.0%}, more than the {max_share:.0%} allowed), so nothing was changed:\n  "
        + "\n  ".join(lines)
        + "\nFix the cause (a moved or unmounted folder, a broken traits.yaml), or pass --allow-mass-removal "
        "if these items really are gone."
    )
