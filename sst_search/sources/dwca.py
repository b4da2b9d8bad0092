"""Darwin Core Archives (zip, tar or folder) as collections: one item per image.

Archives exported by GBIF, iDigBio, Specify, Arctos or EMu carry an Occurrence core and a
Multimedia extension (GBIF Simple Multimedia or Audubon Core) pointing at the images,
usually by URL. A zip or tar is unpacked by :mod:`.archives` (checked before anything is
written) and python-dwca-reader only ever parses the resulting folder, ``meta.xml`` and the
data files. An archive without ``meta.xml`` (one core file with Darwin Core headers and
perhaps ``eml.xml``, valid per the Darwin Core text guide) is read as the Darwin Core table
it is. Every core term is kept verbatim as metadata (by its short name, ``scientificName``,
``catalogNumber``, ...), plus the image's own terms (licence, rights holder, identifier);
:mod:`.occurrences` decides what an item is.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

from ..config import SourcesConfig
from .archives import unpacked
from .items import Item, SourceError
from .occurrences import Occurrence, occurrence_items, short_name
from .table import read_table

log = logging.getLogger("sst_search.sources")

OCCURRENCE = "http://rs.tdwg.org/dwc/terms/Occurrence"
MULTIMEDIA = ("http://rs.gbif.org/terms/1.0/Multimedia", "http://rs.tdwg.org/ac/terms/Multimedia")
#: Files beside the core of an archive without meta.xml that are not data (the dataset's metadata).
METADATA_FILES = {"eml.xml", "metadata.xml"}


def read_dwca(path: str | Path, group_by: str = "scientificName", limits: SourcesConfig = SourcesConfig()) -> list[Item]:
    """Items of the archive at ``path`` (a zip or tar of any name, or a folder); ``group_by``
    is the core term naming each item's group.

    Raises :class:`SourceError` (naming the archive) when it cannot be read or unpacked
    safely, has no core, its core is not Occurrence, its keys repeat, or it references no
    image at all; image-less occurrences and media outside the archive's folder become
    items with an ``error``.
    """
    path = Path(path)
    base = path if path.is_dir() else path.parent  # relative media paths are beside the archive
    return occurrence_items(archive_occurrences(path, group_by, limits), path, base, group_by, confined=True,
                            key_by_position=False)


def archive_occurrences(path: str | Path, group_by: str = "scientificName",
                        limits: SourcesConfig = SourcesConfig()) -> list[Occurrence]:
    """The occurrences of the archive at ``path``, unpacked (when a file) within ``limits``."""
    path = Path(path)
    opened = nullcontext(path) if path.is_dir() else unpacked(path, limits.max_archive_bytes, limits.max_archive_members)
    with opened as folder:
        return read_occurrences(path, folder, group_by)


def simple_core(folder: Path) -> Path | None:
    """The core file of an archive without ``meta.xml``: its only data file (``eml.xml`` aside)."""
    files = [f for f in folder.iterdir() if not f.name.startswith(".")]
    data = [f for f in files if f.name.lower() not in METADATA_FILES]
    return data[0] if len(data) == 1 and data[0].is_file() else None


def read_occurrences(path: Path, folder: Path, group_by: str) -> list[Occurrence]:
    """The occurrences of the archive unpacked in ``folder`` (``path`` names it in messages)."""
    from dwca.read import DwCAReader

    if not (folder / "meta.xml").is_file():
        core = simple_core(folder)
        if core is None:
            names = sorted(f.name for f in folder.iterdir())
            raise SourceError(f"{path}: not a Darwin Core Archive: no meta.xml, and not one core file "
                              f"(with an optional eml.xml) but {names[:10]}")
        return read_table(core, group_by, label=f"{path}:{core.name}")
    try:
        archive = DwCAReader(str(folder), skip_metadata=True)
    except Exception as exc:  # the reader raises XML, KeyError, ... for broken archives
        raise SourceError(f"{path}: not a readable Darwin Core Archive ({type(exc).__name__}: {exc})") from exc
    with archive:
        core_type = archive.descriptor.core.type
        if core_type != OCCURRENCE:
            raise SourceError(f"{path}: core row type is {core_type!r}; only {OCCURRENCE} cores are supported")
        for descriptor in [archive.descriptor.core, *archive.descriptor.extensions]:
            _check_encoding(path, folder / descriptor.file_location, descriptor)
        for unknown in sorted({d.type for d in archive.descriptor.extensions} - set(MULTIMEDIA)):
            log.info("%s: extension %s holds no images; ignored", path, unknown)
        terms = sorted(short_name(t) for t in archive.descriptor.core.terms)
        if group_by not in terms:
            raise SourceError(f"{path}: --group-by {group_by!r} is not a term of the core (terms: {terms})")
        core_file = f"{path}:{archive.descriptor.core.file_location}"
        occurrences: list[Occurrence] = []
        try:
            for row in archive:
                media = [{short_name(k): v for k, v in m.data.items() if v not in (None, "")}
                         for m in row.extensions if m.rowtype in MULTIMEDIA]
                occurrences.append(Occurrence(
                    {short_name(k): v for k, v in row.data.items() if v not in (None, "")}, media,
                    core_id=(row.id or "").strip() or None, row=row.position + 1,
                    origin=f"{core_file} row {row.position + 1}"))
        except Exception as exc:
            raise SourceError(f"{path}: malformed data after about {len(occurrences)} occurrences "
                              f"({type(exc).__name__}: {exc})") from exc
    return occurrences


def _check_encoding(archive: Path, data_file: Path, descriptor) -> None:
    """:class:`SourceError` when a data file is not in the encoding ``meta.xml`` declares:
    the reader would silently turn every such byte into U+FFFD (a Latin-1 file declared
    UTF-8 stores ``Mus\ufffdum`` for ``Muséum``)."""
    import codecs

    encoding = descriptor.file_encoding
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    try:
        with open(data_file, "rb") as fh:
            while chunk := fh.read(1 << 20):
                decoder.decode(chunk)
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{archive}: {descriptor.file_location} is not {encoding} as meta.xml declares "
                          f"(byte {exc.object[exc.start:exc.start + 1]!r} at offset {offset + exc.start:,}); "
                          "declare its real encoding, e.g. encoding=\"ISO-8859-1\"") from exc
    except OSError as exc:
        raise SourceError(f"{archive}: {descriptor.file_location} cannot be read ({exc})") from exc
