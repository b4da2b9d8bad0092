"""The Python entry point to indexing: :func:`index`, exported as ``sst_search.index``.

The job (:func:`~indexer.job.run_index`) takes a resolved :class:`Config` and
what the CLI has already read; a notebook has neither, so this resolves the configuration
and names every option.
"""

from __future__ import annotations

from pathlib import Path

from sst_search.config import Config, load_config

from .job import RunSummary, run_index


def index(
    collection: Path | str,
    references: Path | str,
    db: Path | str,
    config: Config | Path | str | None = None,
    *,
    masks: Path | str | None = None,
    force: bool = False,
    default_group: str | None = None,
    group_by: str = "scientificName",
    instance_references: Path | str | None = None,
    allow_mass_removal: bool = False,
    tracker=None,
    embedder=None,
    quiet: bool = True,
) -> RunSummary:
    """Index a collection (folder, manifest CSV, Darwin Core table or archive, IIIF
    manifest) into the store at ``db``, as ``sst-search index`` does, and return the run's
    summary.

    The Python entry point: ``config`` may be a :class:`Config`, a YAML file or ``None``
    (the defaults), so a notebook needs no CLI and no positional ``Config``. Built
    ``tracker`` / ``embedder`` models are used instead of building them again, which keeps
    repeated indexing in one session cheap. A second call indexes only what changed.
    """
    if not isinstance(config, Config):
        config = load_config(config)
    return run_index(
        collection, Path(references), Path(db), config, masks=Path(masks) if masks is not None else None,
        force=force, default_group=default_group, quiet=quiet, allow_mass_removal=allow_mass_removal,
        tracker=tracker, embedder=embedder, group_by=group_by,
        instance_references=Path(instance_references) if instance_references is not None else None,
    )
