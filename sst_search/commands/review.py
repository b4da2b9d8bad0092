"""``sst-search review list|accept|reject|correct|promote``: the review queue from a script."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .. import ReferencesError
from ..images import ImageLoadError, load_mask
from .options import db_option

console = Console(stderr=True)
review_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Review weak masks and record decisions.")

DB = db_option("its live store is written; a new snapshot is published")
BY = typer.Option(None, "--by", help="Reviewer name (default: the login name).")
NOTE = typer.Option(None, "--note", help="Free-text note stored with the decision.")


def _fail(exc: Exception, code: int = 2) -> typer.Exit:
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError's str() adds quotes
    typer.echo(f"error: {message}", err=True)  # unwrapped, so scripts can match it
    return typer.Exit(code)


@review_app.command("list")
def review_list(
    db: Path = DB,
    group: str | None = typer.Option(None, "--group", help="Only this group."),
    all_: bool = typer.Option(False, "--all", help="Include masks that already have a decision."),
    area_z: float = typer.Option(3.0, "--area-z", help="Robust z-score of log area beyond which an area is an outlier."),
) -> None:
    """Masks to check, worst first (tab-separated): low confidence, unusual area, missing trait."""
    from .. import Store, review_queue
    from ..store.snapshots import SnapshotError, resolve_snapshot

    try:
        with Store.open(resolve_snapshot(db), read_only=True) as store:
            items = review_queue(store, group=group, area_z=area_z, include_decided=all_)
            paths = {i.specimen_id: store.get_specimen(i.specimen_id)["path"] for i in items}
    except (SnapshotError, FileNotFoundError, RuntimeError) as exc:
        raise _fail(exc) from exc
    typer.echo("specimen_id\tgroup\ttrait\treasons\tdecision\tpath")
    for i in items:
        typer.echo(f"{i.specimen_id}\t{i.group_name or ''}\t{i.trait_name}\t{'; '.join(i.reasons)}\t"
                   f"{i.decision or ''}\t{paths[i.specimen_id]}")
    console.print(f"{len(items)} masks to review")


def _decide(db: Path, specimen_id: int, trait: str, decision: str, by: str | None, note: str | None, mask=None) -> None:
    from .. import decide

    try:
        problems = decide(db, specimen_id, trait, decision, by, mask=mask, note=note,
                          embedder=_index_embedder(db) if decision == "correct" else None)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise _fail(exc) from exc
    console.print(f"{escape(str(decision))}: specimen {escape(str(specimen_id))}, {escape(str(trait))}")
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)


def _index_embedder(db: Path):
    """The embedder the index was built with (from its recorded configuration), or None."""
    from .. import EmbedderError, QueryError, SearchEngine

    try:
        with SearchEngine.open(db) as engine:
            return engine.embedder
    except (QueryError, EmbedderError, OSError, RuntimeError) as exc:
        typer.echo(f"warning: cannot build the index's embedder ({exc})", err=True)
        return None


@review_app.command("accept")
def review_accept(specimen_id: int = typer.Argument(...), trait: str = typer.Argument(...), db: Path = DB,
                  by: str | None = BY, note: str | None = NOTE) -> None:
    """Mark a mask as checked and right; it leaves the queue."""
    _decide(db, specimen_id, trait, "accept", by, note)


@review_app.command("reject")
def review_reject(specimen_id: int = typer.Argument(...), trait: str = typer.Argument(...), db: Path = DB,
                  by: str | None = BY, note: str | None = NOTE) -> None:
    """Mark a mask as wrong (kept, flagged); it leaves the queue."""
    _decide(db, specimen_id, trait, "reject", by, note)


@review_app.command("correct")
def review_correct(
    specimen_id: int = typer.Argument(...),
    trait: str = typer.Argument(...),
    mask: Path = typer.Option(..., "--mask", help="PNG the size of the image; non-zero pixels are the trait."),
    db: Path = DB, by: str | None = BY, note: str | None = NOTE,
) -> None:
    """Replace a trait's mask (``source = corrected``); kept across re-indexing of the same image."""
    try:
        pixels = load_mask(mask) > 0
    except ImageLoadError as exc:
        raise _fail(exc) from exc
    _decide(db, specimen_id, trait, "correct", by, note, mask=pixels)


@review_app.command("promote")
def review_promote(
    specimen_id: int = typer.Argument(...),
    db: Path = DB,
    refs: Path | None = typer.Option(None, "--refs", help="References folder (default: the one the last run used)."),
    by: str | None = BY,
) -> None:
    """Add the specimen (with its corrected masks) as an extra support of its group; the next
    ``index`` run re-does that group only."""
    from .. import promote

    try:
        support = promote(db, specimen_id, refs, by)
    except (KeyError, ReferencesError, RuntimeError) as exc:
        raise _fail(exc) from exc
    console.print(f"added support {escape(str(support.image_path))}; re-index to apply it to the group")
