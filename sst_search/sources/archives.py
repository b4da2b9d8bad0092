"""Zip and tar archives unpacked into a temporary folder, checked before anything is written.

Whatever parses an archive afterwards (python-dwca-reader, our own readers) only ever sees a
folder this module unpacked, because archive libraries trust the names and sizes a file
declares: a tar member named ``../../x`` or a symlink lands outside the folder, and a few
megabytes of zip expand to gigabytes. So every member is checked first (a relative name
that stays inside, a regular file or folder, a bounded count) and the total declared size
is compared with a limit and with the free space; then each file is copied in chunks that
stop at its declared size (a member that lies about its size cannot write more). The
temporary folder is removed on every way out, errors included.

The kind of archive is recognised from its bytes, not its name: a tar called ``.zip`` is
still a tar.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from .items import SourceError

#: What the refusal of an unknown file names as the archive forms understood.
ARCHIVE_FORMS = "zip, tar, tar.gz/.tgz, tar.bz2 or tar.xz"
_CHUNK = 1 << 20


class ArchiveError(SourceError):
    """An archive is unreadable or unsafe to unpack; names the archive and the member."""


def archive_kind(path: str | Path) -> str | None:
    """``"zip"`` or ``"tar"`` when the file's bytes are one, else ``None``."""
    path = Path(path)
    if not path.is_file():
        return None
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        return "tar" if tarfile.is_tarfile(path) else None
    except (OSError, EOFError, tarfile.TarError):
        return None


@contextmanager
def unpacked(path: str | Path, max_bytes: int, max_members: int = 100_000) -> Iterator[Path]:
    """The folder holding the archive's content (its single top folder when it has one), in
    a temporary folder that is removed when the block ends, however it ends.

    Raises :class:`ArchiveError` before writing anything when a member would land outside
    the folder, is a link, device or FIFO, or when the members are too many or their total
    size exceeds ``max_bytes`` or the free space.
    """
    path = Path(path)
    kind = archive_kind(path)
    if kind is None:
        raise ArchiveError(f"{path}: not a {ARCHIVE_FORMS} archive")
    root = Path(tempfile.mkdtemp(prefix="sst-archive-"))
    try:
        try:
            (_unzip if kind == "zip" else _untar)(path, root, max_bytes, max_members)
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, RuntimeError, ValueError) as exc:
            if isinstance(exc, ArchiveError):
                raise
            raise ArchiveError(f"{path}: unreadable {kind} archive ({type(exc).__name__}: {exc})") from exc
        yield _content_root(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _content_root(root: Path) -> Path:
    """Archives made by zipping a folder hold everything under one top folder."""
    entries = list(root.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else root


def _member_path(archive: Path, name: str, root: Path) -> Path:
    """Where member ``name`` goes under ``root``; refuses absolute names, drive letters,
    ``..`` and anything else that would resolve outside ``root``."""
    posix = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in posix.parts if p not in ("", ".")]
    if posix.is_absolute() or not parts or ".." in parts or ":" in parts[0]:
        raise ArchiveError(f"{archive}: member {name!r} would be written outside the archive's folder; refused")
    target = root.joinpath(*parts)
    if not os.path.abspath(target).startswith(os.path.abspath(root) + os.sep):
        raise ArchiveError(f"{archive}: member {name!r} would be written outside the archive's folder; refused")
    return target


def _check_totals(archive: Path, members: int, total: int, max_bytes: int, max_members: int) -> None:
    if members > max_members:
        raise ArchiveError(f"{archive}: holds more than {max_members} members; refused (sources.max_archive_members)")
    if total > max_bytes:
        raise ArchiveError(f"{archive}: would unpack to {total} bytes, more than the limit of {max_bytes} "
                           "(sources.max_archive_bytes); refused")


def _check_space(archive: Path, total: int, root: Path) -> None:
    free = shutil.disk_usage(root).free
    if total > free:
        raise ArchiveError(f"{archive}: would unpack to {total} bytes but only {free} are free in {root.parent}")


def _copy_bounded(archive: Path, name: str, src: IO[bytes], target: Path, size: int) -> None:
    """Copy at most ``size`` bytes (what the member declared); a member with more is refused."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(target, "xb") as out:
        while chunk := src.read(min(_CHUNK, size - written + 1)):
            written += len(chunk)
            if written > size:
                raise ArchiveError(f"{archive}: member {name!r} holds more than the {size} bytes it declares; refused")
            out.write(chunk)


def _unzip(archive: Path, root: Path, max_bytes: int, max_members: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        total = sum(i.file_size for i in infos)
        _check_totals(archive, len(infos), total, max_bytes, max_members)
        _check_space(archive, total, root)
        targets = []
        for info in infos:
            target = _member_path(archive, info.filename, root)
            kind = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0  # Unix file type, if any
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise ArchiveError(f"{archive}: member {info.filename!r} is a link or special file; refused")
            targets.append((info, target))
        for info, target in targets:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                _copy_bounded(archive, info.filename, src, target, info.file_size)


def _untar(archive: Path, root: Path, max_bytes: int, max_members: int) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members, total = [], 0
        for member in tf:  # streams the headers; stops at the first bad one, before writing
            members.append(member)
            total += member.size
            _check_totals(archive, len(members), total, max_bytes, max_members)
            _member_path(archive, member.name, root)
            if not (member.isfile() or member.isdir()):
                raise ArchiveError(f"{archive}: member {member.name!r} is a link or special file; refused")
        _check_space(archive, total, root)
        # the "data" filter checks the same again (names, links, modes) as the members are written
        tf.extractall(root, members=members, filter="data")
