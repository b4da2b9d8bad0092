"""The one filter compiler: structured conditions -> parameterised DuckDB SQL over ``specimens s``.

A :class:`Filter` names a specimen column (``group``, ``path``, ``status``), a metadata
key of the manifest, or a trait measurement (``<trait>.<measurement>``). Values only ever
travel as parameters and field names are checked against the catalog (measurement columns
against an allow-list), so no user text becomes SQL. Every store method that selects
specimens (search candidates, exports, pick lists) goes through :func:`compile_filters`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from sst_search.errors import QueryError
from sst_search.measure import FIELDS as MEASUREMENT_FIELDS

#: Filterable specimen columns besides the manifest's metadata keys.
SPECIMEN_FIELDS = {"group": "s.group_name", "path": "s.path", "status": "s.status", "orientation": "s.orientation",
                   "mirrored": "s.mirrored"}


#: The comparison operators a filter may use; the compiler emits SQL only for these.
OPS = ("==", "!=", "in", "not in", "contains", ">=", "<=", ">", "<")


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


def _measurement_condition(f: Filter, measured_traits: Collection[str]) -> tuple[str, list]:
    """``<trait>.<measurement>`` (or ``<trait>.<confidence>``) as an EXISTS over
    ``trait_measurements`` (or ``trait_masks``). The column name is taken from the allow-lists,
    the trait and the value travel as parameters."""
    trait, _, column = f.field.rpartition(".")
    if column not in _MEASUREMENT_TYPES and column not in CONFIDENCE_FIELDS:
        raise QueryError(f"unknown filter field {f.field!r}: {column!r} is not a measurement or confidence; "
                         f"measurements: {sorted(_MEASUREMENT_TYPES)}, confidences: {list(CONFIDENCE_FIELDS)}")
    if trait not in measured_traits:
        known = sorted(measured_traits)
        hint = f"measured traits: {known}" if known else "this index has no measurements yet (run `sst-search measure`)"
        raise QueryError(f"unknown filter field {f.field!r}: no trait {trait!r} measured; {hint}")
    target = f"x.{column}"
    if _MEASUREMENT_TYPES.get(column) == "VARCHAR":  # the dominant colour, '#rrggbb'
        if f.op in ("in", "not in"):
            cond, value = f"{target} {'NOT ' if f.op == 'not in' else ''}IN (SELECT unnest(?::VARCHAR[]))", list(f.value)
        elif f.op == "contains":
            cond, value = f"strpos(lower({target}), lower(?)) > 0", str(f.value)
        else:
            cond, value = f"{target} {_COMPARE_SQL[f.op]} ?", str(f.value)
    else:
        if f.op in ("in", "not in", "contains"):
            raise QueryError(f"filter on {f.field!r}: a measurement compares with ==, !=, <, <=, > or >=, not {f.op!r}")
        try:
            value = float(f.value)
        except (TypeError, ValueError):
            raise QueryError(f"filter on {f.field!r}: {f.value!r} is not a number") from None
        cond = f"{target} {_COMPARE_SQL[f.op]} ?"
    table = "trait_masks" if column in CONFIDENCE_FIELDS else "trait_measurements"
    sql = f"EXISTS (SELECT 1 FROM {table} x WHERE x.specimen_id = s.specimen_id AND x.trait_name = ? AND {cond})"
    return sql, [trait, value]


def compile_filters(
    filters: Iterable[Filter], metadata_keys: set[str], measured_traits: Collection[str] = ()
) -> tuple[str, list]:
    """``(where_clause, params)`` over ``specimens s``; unknown fields are errors. A field that
    is neither a specimen column nor a metadata key but has a dot is a trait measurement."""
    clauses, params = [], []
    for f in filters:
        if f.op not in OPS:  # the op becomes SQL text: only allow-listed operators ever reach it
            raise QueryError(f"filter on {f.field!r}: unknown operator {f.op!r}; use one of {list(OPS)}")
        if f.field not in SPECIMEN_FIELDS and f.field not in metadata_keys and "." in f.field:
            cond, values = _measurement_condition(f, measured_traits)
            clauses.append(cond)
            params += values
            continue
        values = f.value if isinstance(f.value, list) else [f.value]
        if f.op in ("in", "not in") and not isinstance(f.value, list):
            raise QueryError(f"filter on {f.field!r}: {f.op!r} needs a list of values")
        if f.field in SPECIMEN_FIELDS:
            target, prefix = SPECIMEN_FIELDS[f.field], ""
        elif f.field in metadata_keys:
            target = "m.value"
            prefix = "EXISTS (SELECT 1 FROM specimen_metadata m WHERE m.specimen_id = s.specimen_id AND m.key = ? AND "
            params.append(f.field)
        else:
            raise QueryError(f"unknown filter field {f.field!r}; known: {sorted(set(SPECIMEN_FIELDS) | metadata_keys)}")
        if f.op in ("in", "not in"):
            cond = f"{target} {'NOT ' if f.op == 'not in' else ''}IN (SELECT unnest(?::VARCHAR[]))"
            params.append([str(v) for v in values])
        elif f.op == "contains":
            cond = f"strpos(lower({target}), lower(?)) > 0"
            params.append(str(f.value))
        elif isinstance(f.value, (int, float)) and f.op not in ("==", "!="):
            cond = f"TRY_CAST({target} AS DOUBLE) {f.op} ?"
            params.append(float(f.value))
        else:
            cond = f"{target} {'=' if f.op == '==' else f.op} ?"
            params.append(str(f.value))
        clauses.append(prefix + cond + (")" if prefix else ""))
    return " AND ".join(clauses) or "TRUE", params


def scope(
    filters: Iterable[Filter] = (),
    metadata_keys: set[str] = frozenset(),
    measured_traits: Collection[str] = (),
    *,
    status: str | None = "indexed",
    groups: Iterable[str] | None = None,
    specimen_ids: Iterable[int] | None = None,
) -> tuple[str, list]:
    """:func:`compile_filters` plus the selections readers share: a status, some groups, some ids."""
    filters = list(filters)
    if status is not None:
        filters.append(Filter(field="status", op="==", value=status))
    if groups is not None:
        filters.append(Filter(field="group", op="in", value=[str(g) for g in groups]))
    where, params = compile_filters(filters, set(metadata_keys), measured_traits)
    if specimen_ids is not None:
        where += " AND s.specimen_id IN (SELECT unnest(?::BIGINT[]))"
        params.append([int(i) for i in specimen_ids])
    return where, params
