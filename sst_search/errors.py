"""Errors the library raises to callers (CLI, app, notebooks) from more than one module, and
the one line of a foreign exception that a problem report quotes."""

from __future__ import annotations


class QueryError(ValueError):
    """A search or filter that cannot be answered as asked; the message says why."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when it has none): DuckDB and FAISS
    errors run to many lines, and a problem report holds one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class EmbedderError(RuntimeError):
    """An embedder could not be built (unknown name, missing or altered weights, bad options)."""
