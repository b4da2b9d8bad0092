"""Exit codes shared by the commands, and the one place that turns expected faults into one message.

0: all done; 1: some items failed (the rest is done); 2: bad arguments, config, collection or
references (nothing was changed); 3: storage fault (disk full, damaged or busy store).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from ..store.errors import storage_fault

OK, ITEMS_FAILED, BAD_INPUT, STORAGE_FAULT = 0, 1, 2, 3

#: Errors, warnings and progress: stderr, so they reach the terminal when the report is redirected.
console = Console(stderr=True)
#: What a command reports (a run's summary, a store's status): stdout, so ``> file`` captures it.
report = Console()


@contextmanager
def exit_codes(*bad_input: type[BaseException]) -> Iterator[None]:
    """Storage faults exit 3 and ``bad_input`` (plus ``ValueError``) exits 2, each with a
    message instead of a traceback; anything else is a bug and keeps its traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        fault = storage_fault(exc)
        if fault is not None:
            console.print(f"[red]storage fault:[/red] {escape(str(fault))}")
            raise typer.Exit(STORAGE_FAULT) from exc
        if isinstance(exc, (ValueError, FileNotFoundError, *bad_input)):
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(BAD_INPUT) from exc
        raise
