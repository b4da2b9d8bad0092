"""Errors the library raises to callers (CLI, app, notebooks) from more than one module."""

from __future__ import annotations


class QueryError(ValueError):
    """A search or filter that cannot be answered as asked; the message says why."""


class EmbedderError(RuntimeError):
    """An embedder could not be built (unknown name, missing or altered weights, bad options)."""
