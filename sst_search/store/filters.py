"""The one filter compiler: structured conditions -> parameterised DuckDB SQL over ``specimens s``,
or -> a boolean mask over a snapshot's columns held in memory.

A :class:`Filter` names a specimen column (``group``, ``path``, ``status``), a metadata
key of the manifest, or a trait measurement (``<trait>.<measurement>``). Values only ever
travel as parameters and field names are checked against the catalog (measurement columns
against an allow-list), so no user text becomes SQL. Every store method that selects
specimens (search candidates, exports, pick lists) goes through :func:`compile_filters`.

Both backends start from :func:`resolve`, which does every check and value conversion once;
:func:`condition_sql` renders a :class:`Condition` as SQL, :func:`compile_mask` evaluates it
against in-memory columns (a read-only snapshot's search, where a SQL round trip per query
would cost more than the vector search itself). A test holds the two to the same answers.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, model_validator

from sst_search.errors import QueryError
from sst_search.measure import FIELDS as MEASUREMENT_FIELDS

#: Filterable specimen columns besides the manifest's metadata keys.
SPECIMEN_FIELDS = {"group": "s.group_name", "path": "s.path", "status": "s.status", "orientation": "s.orientation",
                   "mirrored": "s.mirrored"}


#: The comparison operators a filter may use; the compiler emits SQL only for these.
OPS = ("==", "!=", "in", "not in", "contains", ">=", "<=", ">", "<")


@dataclass(frozen=True)
class TraitNames:
    """The traits a ``<trait>.<column>`` filter may name. They differ by column: a trait has
    mask confidences as soon as it has masks, but measurements only once it was measured."""

    measured: frozenset[str] = frozenset()
    masked: frozenset[str] = frozenset()


class Filter(BaseModel):
    """One metadata or measurement condition, e.g. ``Filter(field="locality", op="contains", value="Ridge")``
    or ``Filter(field="forewing_band.area_mm2", op=">", value=40)`` (``<trait>.<measurement>``,
    see :data:`sst_search.measure.FIELDS`).

    Comparisons (``<``, ``>=`` ...) are numeric when the value is a number and textual
    otherwise, so ISO dates compare chronologically.
    """

    #: Checked on assignment too: a filter changed after construction is validated again.
    model_config = ConfigDict(validate_assignment=True)

    field: str
    op: Literal["==", "!=", "in", "not in", "contains", ">=", "<=", ">", "<"]
    value: str | float | list[str]

    @model_validator(mode="after")
    def _value_fits_op(self) -> Filter:
        if (self.op in ("in", "not in")) != isinstance(self.value, list):
            need = "a list of values" if self.op in ("in", "not in") else "a single value"
            raise ValueError(f"filter on {self.field!r}: {self.op!r} needs {need}, got {self.value!r}")
        return self


_MEASUREMENT_TYPES = {m.name: m.sql_type for m in MEASUREMENT_FIELDS}
_COMPARE_SQL = {"==": "=", "!=": "!=", ">=": ">=", "<=": "<=", ">": ">", "<": "<"}
_FILTER_TEXT = re.compile(
    r"^\s*(?P<field>[^<>=!]+?)(?:\s*(?P<sym>==|!=|>=|<=|>|<)\s*|\s+(?P<word>not in|in|contains)\s+)(?P<value>.*?)\s*$"
)


def parse_filter(text: str) -> Filter:
    """A filter written as text, the form the CLI takes: ``forewing_band.area_mm2 > 40``,
    ``locality contains Ridge``, ``group in cyrbia,dora``. Comparisons with a number are numeric."""
    match = _FILTER_TEXT.match(text)
    if match is None or not match["value"]:
        raise QueryError(f"cannot read filter {text!r}; write FIELD OP VALUE with OP one of "
                         "==, !=, <, <=, >, >=, in, not in, contains (e.g. 'forewing_band.area_mm2 > 40')")
    op, raw = match["sym"] or match["word"], match["value"]
    value: str | float | list[str]
    if op in ("in", "not in"):
        value = [v.strip() for v in raw.split(",") if v.strip()]
    elif op in (">=", "<=", ">", "<") or "." in match["field"]:
        try:
            value = float(raw)
        except ValueError:
            value = raw
    else:
        value = raw
    return Filter(field=match["field"], op=op, value=value)


#: Per-trait confidences of a mask (``trait_masks`` columns), filterable like measurements:
#: ``forewing_band.object_score > 0``.
CONFIDENCE_FIELDS = ("object_score", "predicted_iou", "quality")


@dataclass(frozen=True)
class Condition:
    """One filter resolved against the catalog: what both backends (SQL, in-memory columns) evaluate.

    ``source`` is where the field lives: ``specimen`` (a ``specimens`` column), ``metadata``
    (a manifest key), ``measurement`` / ``confidence`` (``<trait>.<column>`` of
    ``trait_measurements`` / ``trait_masks``). ``numeric``: compare as numbers (text that is
    not a number never passes). ``value`` is already converted (text, float or list of text).
    """

    source: Literal["specimen", "metadata", "measurement", "confidence"]
    column: str
    op: str
    value: str | float | list[str]
    numeric: bool
    trait: str | None = None


def resolve(f: Filter, metadata_keys: Collection[str], traits: TraitNames = TraitNames()) -> Condition:
    """The checks every backend shares: known field, allowed operator, value of the right kind.
    A field that is neither a specimen column nor a metadata key but has a dot is a trait
    measurement (or a mask confidence)."""
    if f.op not in OPS:  # the op becomes SQL text: only allow-listed operators ever reach it
        raise QueryError(f"filter on {f.field!r}: unknown operator {f.op!r}; use one of {list(OPS)}")
    if f.op in ("in", "not in") and not isinstance(f.value, list):
        raise QueryError(f"filter on {f.field!r}: {f.op!r} needs a list of values")
    if f.field not in SPECIMEN_FIELDS and f.field not in metadata_keys and "." in f.field:
        return _measurement(f, traits)
    if f.field in SPECIMEN_FIELDS:
        source, column = "specimen", SPECIMEN_FIELDS[f.field]
    elif f.field in metadata_keys:
        source, column = "metadata", f.field
    else:
        raise QueryError(f"unknown filter field {f.field!r}; known: {sorted(set(SPECIMEN_FIELDS) | set(metadata_keys))}")
    numeric = isinstance(f.value, (int, float)) and f.op not in ("==", "!=", "in", "not in", "contains")
    if f.op in ("in", "not in"):
        value: str | float | list[str] = [str(v) for v in f.value]
    else:
        value = float(f.value) if numeric else str(f.value)
    return Condition(source, column, f.op, value, numeric)


def _measurement(f: Filter, traits: TraitNames) -> Condition:
    trait, _, column = f.field.rpartition(".")
    if column not in _MEASUREMENT_TYPES and column not in CONFIDENCE_FIELDS:
        raise QueryError(f"unknown filter field {f.field!r}: {column!r} is not a measurement or confidence; "
                         f"measurements: {sorted(_MEASUREMENT_TYPES)}, confidences: {list(CONFIDENCE_FIELDS)}")
    source = "confidence" if column in CONFIDENCE_FIELDS else "measurement"
    if source == "confidence" and trait not in traits.masked:
        known = sorted(traits.masked)
        hint = f"traits with masks: {known}" if known else "this index has no trait masks yet"
        raise QueryError(f"unknown filter field {f.field!r}: no trait {trait!r} has masks; {hint}")
    if source == "measurement" and trait not in traits.measured:
        known = sorted(traits.measured)
        hint = f"measured traits: {known}" if known else "this index has no measurements yet (run `sst-search measure`)"
        raise QueryError(f"unknown filter field {f.field!r}: no trait {trait!r} measured; {hint}")
    if _MEASUREMENT_TYPES.get(column) == "VARCHAR":  # the dominant colour, '#rrggbb'
        value = list(f.value) if f.op in ("in", "not in") else str(f.value)
        return Condition(source, column, f.op, value, False, trait)
    if f.op in ("in", "not in", "contains"):
        raise QueryError(f"filter on {f.field!r}: a measurement compares with ==, !=, <, <=, > or >=, not {f.op!r}")
    try:
        number = float(f.value)
    except (TypeError, ValueError):
        raise QueryError(f"filter on {f.field!r}: {f.value!r} is not a number") from None
    return Condition(source, column, f.op, number, True, trait)


# -- backend 1: SQL over ``specimens s`` ----------------------------------------------------

def condition_sql(c: Condition) -> tuple[str, list]:
    """``(sql, params)`` of one resolved condition; values only ever travel as parameters."""
    target = {"specimen": c.column, "metadata": "m.value"}.get(c.source, f"x.{c.column}")
    if c.op in ("in", "not in"):
        cond, value = f"{target} {'NOT ' if c.op == 'not in' else ''}IN (SELECT unnest(?::VARCHAR[]))", c.value
    elif c.op == "contains":
        cond, value = f"strpos(lower({target}), lower(?)) > 0", c.value
    elif c.numeric and c.source in ("specimen", "metadata"):
        cond, value = f"TRY_CAST({target} AS DOUBLE) {_COMPARE_SQL[c.op]} ?", c.value
    else:
        cond, value = f"{target} {_COMPARE_SQL[c.op]} ?", c.value
    if c.source == "specimen":
        return cond, [value]
    if c.source == "metadata":
        return f"EXISTS (SELECT 1 FROM specimen_metadata m WHERE m.specimen_id = s.specimen_id AND m.key = ? AND {cond})", [
            c.column, value]
    table = "trait_masks" if c.source == "confidence" else "trait_measurements"
    return (f"EXISTS (SELECT 1 FROM {table} x WHERE x.specimen_id = s.specimen_id AND x.trait_name = ? AND {cond})",
            [c.trait, value])


def compile_filters(
    filters: Iterable[Filter], metadata_keys: set[str], traits: TraitNames = TraitNames()
) -> tuple[str, list]:
    """``(where_clause, params)`` over ``specimens s``; unknown fields are errors."""
    clauses, params = [], []
    for f in filters:
        cond, values = condition_sql(resolve(f, metadata_keys, traits))
        clauses.append(cond)
        params += values
    return " AND ".join(clauses) or "TRUE", params


# -- backend 2: boolean masks over columns held in memory -----------------------------------

@dataclass(frozen=True)
class ColumnValues:
    """One field's values for the specimens of a :class:`ColumnSource`.

    ``values``: Arrow array of distinct values (text) or of per-entry values (numbers);
    ``codes``: for text, index into ``values`` per row (-1: no value); ``rows``: the
    specimen row of each entry, or None when entries are the specimens themselves in order.
    """

    values: pa.Array
    codes: np.ndarray | None = None
    rows: np.ndarray | None = None
    #: ``values`` cast to DOUBLE (NULL where not a number) by the catalog itself, as SQL's TRY_CAST does.
    numbers: pa.Array | None = None


class ColumnSource(Protocol):
    """Specimens (``ids``, ascending) and their fields, loaded once per snapshot."""

    ids: np.ndarray

    def all_of(self, conditions: Sequence[Condition]) -> np.ndarray:
        """Which of :attr:`ids` pass every one of ``conditions`` (:func:`condition_mask` over each field's values)."""


def compile_mask(
    filters: Iterable[Filter], metadata_keys: set[str], traits: TraitNames, columns: ColumnSource
) -> np.ndarray:
    """Which of ``columns.ids`` pass every filter: the same conditions as :func:`compile_filters`,
    evaluated on each field's distinct values and spread to the specimens with one gather, so
    a filter over a million specimens costs milliseconds and no query."""
    conditions = [resolve(f, metadata_keys, traits) for f in filters]
    return columns.all_of(conditions) if conditions else np.ones(len(columns.ids), bool)


def condition_mask(c: Condition, col: ColumnValues, n: int) -> np.ndarray:
    """SQL's three-valued logic: a missing value (NULL) never passes, negations included."""
    values = col.values
    if c.op in ("in", "not in"):
        hit = pc.is_in(values, value_set=pa.array(c.value, values.type))
        hit = pc.invert(hit) if c.op == "not in" else hit
    elif c.op == "contains":
        hit = pc.greater(pc.find_substring(pc.utf8_lower(values), pc.utf8_lower(pa.scalar(c.value)).as_py()), -1)
    else:
        if c.numeric and (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            values = col.numbers
        hit = _COMPARE_ARROW[c.op](values, pa.scalar(c.value, values.type))
    hit = pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
    if col.codes is not None:
        hit = _per_code(hit, col.codes)
    if col.rows is None:
        return hit
    out = np.zeros(n, bool)
    out[col.rows[hit]] = True
    return out


def _per_code(hit: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each entry's code looked up in ``hit`` (code -1, no value, never passes). A condition
    that picks out a few values compares the codes with each (0.2 ms per value at a million
    entries) instead of gathering (2 ms). The gather indexes with the int32 codes as they are:
    ``np.take`` first widens them to a new 80 MB array at 10M specimens, and a reader's first
    allocation of that size stalled 200-250 ms (the first date filter after the page cache was
    dropped took 253 ms, 70 ms without it)."""
    picked = np.flatnonzero(hit)
    if len(picked) <= 4:
        out = codes == picked[0] if len(picked) else np.zeros(len(codes), bool)
        for code in picked[1:]:
            out |= codes == code
        return out
    return np.append(hit, False)[codes]  # code -1 picks the appended False


def prepare_kernels() -> None:
    """Evaluate every operator once on a one-value text and number column: a process's first
    ``utf8_lower`` builds Arrow's Unicode tables (3.5 ms) and its first comparison resolves
    the kernel (0.8 ms), which the first search under a ``contains`` filter paid on its query
    path (at 10M x 768 it took 10.4 ms where the next took 7.7)."""
    for numeric, value, values in ((False, "a", pa.array(["a"])), (True, 1.0, pa.array([1.0]))):
        column = ColumnValues(values, None, None, values)
        for op in OPS:
            if numeric and op in ("in", "not in", "contains"):  # text operators only
                continue
            given = [value] if op in ("in", "not in") else value
            condition_mask(Condition("specimen", "warm-up", op, given, numeric), column, 1)


_COMPARE_ARROW = {"==": pc.equal, "!=": pc.not_equal, ">=": pc.greater_equal, "<=": pc.less_equal,
                  ">": pc.greater, "<": pc.less}


def scope_filters(filters: Iterable[Filter], status: str | None = "indexed", groups: Iterable[str] | None = None) -> list[Filter]:
    """``filters`` plus the selections readers share (a status, some groups), for either backend."""
    filters = list(filters)
    if status is not None:
        filters.append(Filter(field="status", op="==", value=status))
    if groups is not None:
        filters.append(Filter(field="group", op="in", value=[str(g) for g in groups]))
    return filters


def scope_where(
    filters: Iterable[Filter] = (),
    metadata_keys: set[str] = frozenset(),
    traits: TraitNames = TraitNames(),
    *,
    status: str | None = "indexed",
    groups: Iterable[str] | None = None,
    specimen_ids: Iterable[int] | None = None,
) -> tuple[str, list]:
    """:func:`compile_filters` plus the selections readers share: a status, some groups, some ids."""
    where, params = compile_filters(scope_filters(filters, status, groups), set(metadata_keys), traits)
    if specimen_ids is not None:
        where += " AND s.specimen_id IN (SELECT unnest(?::BIGINT[]))"
        params.append([int(i) for i in specimen_ids])
    return where, params
