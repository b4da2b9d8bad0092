"""Delimited text tables (CSV, TSV, ``;`` or ``|`` separated) as a collection database or a
spreadsheet exports them: our own ``path`` manifest and Darwin Core occurrence tables.

The delimiter is sniffed from the header line, so the comma CSV of one museum and the tab
file of the next (and the core file of an archive without ``meta.xml``) read alike. A
Darwin Core table is recognised by its headers: Darwin Core or Audubon Core terms, by short
name (``scientificName``), prefixed (``dwc:scientificName``) or as full term URIs.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from .items import SourceError
from .occurrences import Occurrence, short_name

DELIMITERS = (",", "\t", ";", "|")
#: Audubon Core and GBIF terms that mark a media table, beside the Darwin Core list.
MEDIA_TERMS = {"accessURI", "associatedMedia"}


@lru_cache(maxsize=1)
def darwin_core_terms() -> frozenset[str]:
    """Short names of every Darwin Core term (python-dwca-reader keeps the list)."""
    from dwca.darwincore.terms import TERMS

    return frozenset(short_name(t) for t in TERMS) | MEDIA_TERMS


def is_darwin_core(header: list[str]) -> bool:
    """Whether a header names Darwin Core / Audubon Core terms (an occurrence table)."""
    return any(short_name(column) in darwin_core_terms() for column in header)


def read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank rows (with their line numbers) of a delimited UTF-8 table."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            first = fh.readline()
            delimiter = max(DELIMITERS, key=first.count) if any(d in first for d in DELIMITERS) else ","
            fh.seek(0)
            reader = csv.reader(fh, delimiter=delimiter)
            header = [h.strip() for h in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(v.strip() for v in row)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{path}: not a readable UTF-8 table ({exc})") from exc
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise SourceError(f"{path}:1: column(s) {repeated} appear more than once; their values would overwrite each other")
    for line, values in rows:
        if len(values) != len(header):
            raise SourceError(f"{path}:{line}: {len(values)} values for {len(header)} columns "
                              f"(an unquoted {delimiter!r} or a missing value?)")
    return header, rows


def read_table(path: Path, group_by: str, label: str | None = None) -> list[Occurrence]:
    """The occurrences of a Darwin Core table (one per row; an ``id`` column is the core id).

    ``group_by`` must be one of its terms.
    """
    label = label or str(path)
    header, rows = read_rows(path)
    names = [short_name(h) for h in header]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SourceError(f"{label}:1: term(s) {repeated} appear more than once (as short names or URIs)")
    if group_by not in names:
        raise SourceError(f"{label}: --group-by {group_by!r} is not a column (columns: {names}); "
                          "pass --group-by with one of them, or add a 'group' column")
    occurrences = []
    for n, (line, values) in enumerate(rows, start=1):
        terms = {name: v.strip() for name, v in zip(names, values) if v.strip()}
        occurrences.append(Occurrence(terms, core_id=terms.pop("id", None), row=n, origin=f"{label}:{line}"))
    return occurrences
