"""Whole-file writes that a crash or a kill can never leave half-written.

A reader (another process, or the next run after a kill) sees either the old file or the
new one: the bytes go to a temporary file in the same folder, are fsynced, and replace the
target in one rename. References, the image cache and the store all rely on that.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes, suffix: str = ".tmp") -> None:
    """Write ``data`` to ``path`` atomically; ``suffix`` names the temporary file so a
    cleaner can recognise leftovers of its own kind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
