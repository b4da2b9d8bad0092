"""Errors the library's search layer raises to callers (CLI, app, notebooks)."""

from __future__ import annotations


class QueryError(ValueError):
    """A search or filter that cannot be answered as asked; the message says why."""
