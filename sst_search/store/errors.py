"""Storage faults: the store cannot be trusted or written, as opposed to one bad item.

The indexer records a bad *item* as failed and goes on; a storage fault (disk full, a
damaged database or FAISS file, a store another process holds) stops the run before
anything damaged is published. :func:`storage_fault` recognises the raw forms these faults
take in DuckDB, FAISS and the OS, so callers can report them in one sentence instead of a
traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import duckdb

#: OS errors that mean "the storage is full, read-only or failing", never "this item is bad".
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS}

#: How DuckDB and FAISS word the same faults (they raise generic exception types).
_FAULT_WORDS = ("no space left", "disk full", "corrupt", "checksum", "not a valid duckdb", "could not read enough bytes",
                "input/output error", "read-only file system", "could not set lock", "conflicting lock")


def is_lock_conflict(exc: BaseException) -> bool:
    """DuckDB refused the file because another process holds it (not because it is damaged)."""
    text = str(exc).lower()
    return "could not set lock" in text or "conflicting lock" in text


class StoreError(RuntimeError):
    """The store cannot be used as it is; the message names the file and what to do."""


class StoreDamagedError(StoreError):
    """Verification found damage; ``problems`` lists each damaged file and what is wrong."""

    def __init__(self, problems: Sequence[object], hint: str = ""):
        self.problems = [str(p) for p in problems]
        lines = "\n  ".join(self.problems)
        super().__init__(f"the store is damaged:\n  {lines}" + (f"\n{hint}" if hint else ""))


def storage_fault(exc: BaseException) -> StoreError | None:
    """``exc`` as a :class:`StoreError` when it is a storage fault, else None."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        where = f"{exc.filename}: " if exc.filename else ""
        return StoreError(f"{where}{exc.strerror or exc} (storage fault: free space or fix the disk, then run again)")
    if isinstance(exc, (duckdb.Error, RuntimeError)):
        text = str(exc)
        if any(word in text.lower() for word in _FAULT_WORDS):
            return StoreError(f"{text.strip().splitlines()[0]} (storage fault; `sst-search verify --db DB` says more)")
    return None
