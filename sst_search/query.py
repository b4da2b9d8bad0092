"""Trait search: by an indexed specimen, an uploaded photo or text, filtered by metadata.

A search ranks one trait's FAISS index (``__specimen__`` for whole specimens) by cosine
similarity. Metadata filters are structured :class:`Filter` objects compiled to
parameterised DuckDB SQL: values only ever travel as parameters and field names are
checked against the catalog, so no user text becomes SQL. Optional re-ranking scores the
top candidates by SST cycle consistency: the query's trait is tracked into the candidate
and back, and the round-trip IoU says how well the trait "exists" there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, model_validator

from .builder import embedder_from_config, tracker_from_config
from .config import Config
from .embed import NoTextTowerError
from .images import load_image
from .measure import FIELDS as MEASUREMENT_FIELDS
from .references import ReferenceError, Support, load_group_references
from .store import SPECIMEN_TRAIT, Store, decode_mask
from .store.planner import Admission
from .store.snapshots import resolve_snapshot

Direction = Literal["similar", "different"]

#: Filterable specimen columns besides the manifest's metadata keys.
SPECIMEN_FIELDS = {"group": "s.group_name", "path": "s.path", "status": "s.status"}


class QueryError(ValueError):
    """A search that cannot be answered as asked; the message says why."""


class Filter(BaseModel):
    """One metadata or measurement condition, e.g. ``Filter(field="locality", op="contains", value="Ridge")``
    or ``Filter(field="forewing_band.area_mm2", op=">", value=40)`` (``<trait>.<measurement>``,
    see :data:`sst_search.measure.FIELDS`).

    Comparisons (``<``, ``>=`` ...) are numeric when the value is a number and textual
    otherwise, so ISO dates compare chronologically.
    """

    field: str
    op: Literal["==", "!=", "in", "not in", "contains", ">=", "<=", ">", "<"]
    value: str | float | list[str]

    @model_validator(mode="after")
    def _value_fits_op(self) -> Filter:
        if (self.op in ("in", "not in")) != isinstance(self.value, list):
            need = "a list of values" if self.op in ("in", "not in") else "a single value"
            raise ValueError(f"filter on {self.field!r}: {self.op!r} needs {need}, got {self.value!r}")
        return self


@dataclass
class QueryResult:
    specimen_id: int
    rank: int
    score: float
    path: str
    group: str | None
    trait_name: str
    trait_id: int | None
    bbox: tuple[int, int, int, int] | None
    area: int | None
    quality: float | None
    metadata: dict[str, str] = field(default_factory=dict)
    rerank_iou: float | None = None
    _rle: str | None = None

    def mask(self) -> np.ndarray | None:
        """The trait's mask on this specimen (decoded on demand)."""
        return decode_mask(self._rle) if self._rle else None


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


def _measurement_condition(f: Filter, measured_traits: Collection[str]) -> tuple[str, list]:
    """``<trait>.<measurement>`` as an EXISTS over ``trait_measurements``. The column name is
    taken from the allow-list of measurements, the trait and the value travel as parameters."""
    trait, _, column = f.field.rpartition(".")
    if column not in _MEASUREMENT_TYPES:
        raise QueryError(f"unknown filter field {f.field!r}: {column!r} is not a measurement; "
                         f"measurements: {sorted(_MEASUREMENT_TYPES)}")
    if trait not in measured_traits:
        known = sorted(measured_traits)
        hint = f"measured traits: {known}" if known else "this index has no measurements yet (run `sst-search measure`)"
        raise QueryError(f"unknown filter field {f.field!r}: no trait {trait!r} measured; {hint}")
    target = f"x.{column}"
    if _MEASUREMENT_TYPES[column] == "VARCHAR":  # the dominant colour, '#rrggbb'
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
    sql = f"EXISTS (SELECT 1 FROM trait_measurements x WHERE x.specimen_id = s.specimen_id AND x.trait_name = ? AND {cond})"
    return sql, [trait, value]


def compile_filters(
    filters: list[Filter], metadata_keys: set[str], measured_traits: Collection[str] = ()
) -> tuple[str, list]:
    """``(where_clause, params)`` over ``specimens s``; unknown fields are errors. A field that
    is neither a specimen column nor a metadata key but has a dot is a trait measurement."""
    clauses, params = [], []
    for f in filters:
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


class SearchEngine:
    """Read-only search over the latest published snapshot of an index."""

    def __init__(self, store: Store, tracker=None, embedder=None, references: Path | None = None,
                 db_path: Path | None = None):
        self.store = store
        #: The live store this engine follows; ``store.db_path`` is the snapshot it reads.
        self.db_path = Path(db_path) if db_path is not None else store.db_path
        self._tracker = tracker
        self._embedder = embedder
        self._explicit_references = Path(references) if references else None
        self._run = self._last_run()
        recorded = self._run.get("references_dir")
        self.references = self._explicit_references or (Path(recorded) if recorded else None)
        self._metadata_keys: set[str] | None = None
        self._measured_traits: list[str] | None = None

    @classmethod
    def open(cls, db_path: str | Path, tracker=None, embedder=None, references: str | Path | None = None) -> SearchEngine:
        """Open the latest published snapshot of the index at ``db_path`` read-only.

        ``tracker`` and ``embedder`` are built on demand from the recorded run configuration
        unless given; ``references`` overrides the references folder the run recorded.
        """
        return cls(Store.open(resolve_snapshot(db_path), read_only=True), tracker, embedder, references, Path(db_path))

    def refresh(self) -> bool:
        """Switch to a newer published snapshot if there is one; True when it switched.

        A long-lived reader (the app) calls this between searches; searches already running
        finish on the old snapshot, which a publish never modifies.
        """
        latest = resolve_snapshot(self.db_path)
        if latest == self.store.db_path:
            return False
        old = self.store
        self.store = Store.open(latest, read_only=True)
        self._run = self._last_run()
        recorded = self._run.get("references_dir")
        self.references = self._explicit_references or (Path(recorded) if recorded else None)
        self._metadata_keys = None
        self._measured_traits = None
        old.close()
        return True

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what is there --------------------------------------------------------------------
    def _last_run(self) -> dict:
        row = self.store.con.execute(
            "SELECT fingerprint FROM runs WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1"
        ).fetchone()
        return json.loads(row[0]) if row and row[0] else {}

    def fingerprints(self) -> dict:
        """Models and weights behind the index (from the last finished run)."""
        seg = self._run.get("segmentation") or {}
        emb = self._run.get("embedder") or {}
        return {
            "sam2_model": seg.get("model"), "sam2_weights": seg.get("weights_sha256"), "image_size": seg.get("image_size"),
            "adapter": seg.get("adapter_sha256"), "mode": seg.get("mode"),
            "embedder": emb.get("embedder"), "embedder_model": emb.get("model"), "embedder_weights": emb.get("weights"),
            "random_weights": seg.get("weights_sha256") == "random" or emb.get("weights") == "random",
        }

    def groups(self) -> list[str]:
        return [r[0] for r in self.store.con.execute(
            "SELECT DISTINCT group_name FROM specimens WHERE group_name IS NOT NULL ORDER BY 1").fetchall()]

    def embedders(self) -> list[str]:
        # index_state has one row per index: no scan of the (large) vectors table per search.
        return [r[0] for r in self.store.con.execute("SELECT DISTINCT embedder FROM index_state ORDER BY 1").fetchall()]

    def traits(self, group: str | None = None) -> list[str]:
        sql = "SELECT DISTINCT t.trait_name FROM trait_masks t JOIN specimens s USING (specimen_id)"
        params = []
        if group is not None:
            sql += " WHERE s.group_name = ?"
            params.append(group)
        return [SPECIMEN_TRAIT] + [r[0] for r in self.store.con.execute(sql + " ORDER BY 1", params).fetchall()]

    def metadata_keys(self) -> set[str]:
        # A snapshot never changes, so one scan of the metadata table serves every search.
        if self._metadata_keys is None:
            self._metadata_keys = {r[0] for r in self.store.con.execute("SELECT DISTINCT key FROM specimen_metadata").fetchall()}
        return self._metadata_keys

    def measured_traits(self) -> list[str]:
        """Traits with measurements, what ``<trait>.<measurement>`` filters accept (cached per snapshot)."""
        if self._measured_traits is None:
            self._measured_traits = self.store.measured_traits()
        return self._measured_traits

    def measurement_fields(self) -> list[str]:
        """Every ``<trait>.<measurement>`` filter field this index can answer."""
        return [f"{t}.{m.name}" for t in self.measured_traits() for m in MEASUREMENT_FIELDS]

    def filter_ids(self, filters: list[Filter] | None, group: str | None = None) -> np.ndarray | None:
        """Ids of indexed specimens passing the filters (None when there are none to apply)."""
        filters = list(filters or [])
        if group is not None:
            filters.append(Filter(field="group", op="==", value=group))
        if not filters:
            return None
        where, params = compile_filters(filters, self.metadata_keys(), self.measured_traits())
        return self.store.con.execute(
            f"SELECT s.specimen_id FROM specimens s WHERE s.status = 'indexed' AND {where}", params
        ).fetchnumpy()["specimen_id"].astype(np.int64)

    def _passing(self, ids: list[int], filters: list[Filter]) -> set[int]:
        """Which of ``ids`` pass the filters: the cheap check of a post-filtered search."""
        where, params = compile_filters(filters, self.metadata_keys(), self.measured_traits())
        rows = self.store.con.execute(
            "SELECT s.specimen_id FROM specimens s WHERE s.specimen_id IN (SELECT unnest(?::BIGINT[])) "
            f"AND s.status = 'indexed' AND {where}",
            [[int(i) for i in ids], *params],
        ).fetchall()
        return {r[0] for r in rows}

    # -- models (built on demand, like the index was) -------------------------------------------
    @property
    def config(self) -> Config:
        if "config" not in self._run:
            raise QueryError("this index records no configuration; pass tracker= and embedder= explicitly")
        return Config.model_validate(self._run["config"])

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = embedder_from_config(self.config.embedding)
        return self._embedder

    @property
    def tracker(self):
        if self._tracker is None:
            self._tracker = tracker_from_config(self.config.segmentation)
            recorded = (self._run.get("segmentation") or {}).get("weights_sha256")
            if recorded and self._tracker.weights.sha256 != recorded:
                raise QueryError(
                    f"the index was built with SAM 2 weights {recorded}, but {self._tracker.weights.sha256} "
                    "resolved now; point --weights at the original checkpoint"
                )
        return self._tracker

    def supports(self, group: str) -> list[Support]:
        if self.references is None:
            raise QueryError("no references folder known for this index; pass references=")
        try:
            return load_group_references(self.references / group)
        except ReferenceError as exc:
            raise QueryError(f"cannot segment an upload for group {group!r}: {exc}") from exc

    # -- search -----------------------------------------------------------------------------------
    def search(
        self,
        trait: str,
        k: int = 10,
        *,
        specimen_id: int | None = None,
        image: np.ndarray | None = None,
        group: str | None = None,
        text: str | None = None,
        filters: list[Filter] | None = None,
        direction: Direction = "similar",
        rerank: bool = False,
        embedder: str | None = None,
        exclude_query: bool = True,
    ) -> list[QueryResult]:
        """Rank specimens by ``trait`` similarity to exactly one of: an indexed specimen, an
        uploaded ``image`` (segmented against ``group``'s references), or ``text``.

        ``direction="different"`` returns the least similar first: the index is searched with
        the negated query vector (the top of ``-q`` is the bottom of ``q``), and ``score`` is
        still the cosine similarity to the query, so results come in ascending order.
        ``rerank`` re-orders the top ``k`` of ``3k`` candidates by cycle-consistency IoU
        (needs SAM 2). ``group`` names the species an uploaded photo is segmented as; to
        restrict the results to a group, filter on ``Filter(field="group", ...)``.
        """
        if sum(x is not None for x in (specimen_id, image, text)) != 1:
            raise QueryError("give exactly one of specimen_id, image or text")
        if direction not in ("similar", "different"):
            raise QueryError(f"direction must be 'similar' or 'different', not {direction!r}")
        embedder = embedder or self._default_embedder()
        query_support = None
        if specimen_id is not None:
            vector = self._stored_vector(embedder, trait, specimen_id)
            if rerank:
                query_support = self._specimen_support(specimen_id)
        elif image is not None:
            vector, query_support = self._upload_vector(image, trait, group)
        else:
            if rerank:
                raise QueryError("re-ranking by cycle consistency needs a specimen or an image, not text")
            try:
                vector = self.embedder.embed_text(text)
            except NoTextTowerError as exc:
                raise QueryError(str(exc)) from exc
        fetch = k * 3 if rerank else k
        skip = specimen_id if exclude_query else None
        signed = vector if direction == "similar" else -vector
        hits = self._ranked(embedder, trait, signed, fetch, list(filters or []), skip)
        if direction == "different":
            hits = [(sid, -s) for sid, s in hits]
        results = self._results(hits, trait)
        if rerank:
            results = self._rerank(results, query_support, trait)
        results = results[:k]
        for i, r in enumerate(results, start=1):
            r.rank = i
        return results

    def _ranked(
        self, embedder: str, trait: str, vector: np.ndarray, n: int, filters: list[Filter], skip: int | None
    ) -> list[tuple[int, float]]:
        """Top ``n`` ``(specimen_id, inner product)`` passing ``filters``, without ``skip``.

        Exactly ``n`` whenever ``n`` specimens pass: the store plans the search from the
        filter's selectivity (see :mod:`sst_search.store.planner`), asking the catalog which
        of a few ids pass (:meth:`_passing`) or which pass at all (:meth:`filter_ids`).
        """
        return self.store.filtered_search(embedder, trait, vector, n, self.admission(filters), skip).hits

    def admission(self, filters: list[Filter] | None) -> Admission | None:
        """The filters as the planner asks about them (None without filters)."""
        return _FilterAdmission(self, list(filters)) if filters else None

    def _default_embedder(self) -> str:
        names = self.embedders()
        if not names:
            raise QueryError("the index holds no vectors yet")
        recorded = (self._run.get("embedder") or {}).get("embedder")
        return recorded if recorded in names else names[0]

    def _stored_vector(self, embedder: str, trait: str, specimen_id: int) -> np.ndarray:
        ids, matrix = self.store.get_vectors(embedder, trait, [specimen_id])
        if not len(ids):
            raise QueryError(f"specimen {specimen_id} has no {trait!r} vector for {embedder!r} (trait not found on it?)")
        return matrix[0]

    def _specimen_support(self, specimen_id: int) -> Support:
        row = self.store.get_specimen(specimen_id)
        label_map = self.store.label_map(specimen_id)
        if row is None or label_map is None:
            raise QueryError(f"specimen {specimen_id} has no masks to re-rank with")
        names = {m.trait_id: m.trait_name for m in self.store.trait_masks(specimen_id)}
        return _support(str(specimen_id), load_image(row["path"]), label_map, names)

    def _upload_vector(self, image: np.ndarray, trait: str, group: str | None) -> tuple[np.ndarray, Support | None]:
        if trait == SPECIMEN_TRAIT:
            return self.embedder.embed_image(image), None
        if group is None:
            raise QueryError("searching a trait by an uploaded photo needs its group (species) to segment it")
        supports = self.supports(group)
        names = {tid: t.name for s in supports for tid, t in s.traits.items()}
        ids = [tid for tid, name in names.items() if name == trait]
        if not ids:
            raise QueryError(f"group {group!r} has no trait {trait!r}; its traits: {sorted(names.values())}")
        (result,) = list(self.tracker.segment(supports, [("upload", image)]))
        if result.error:
            raise QueryError(result.error)
        vectors = self.embedder.embed_traits(image, result.label_map, ids)
        if ids[0] not in vectors:
            raise QueryError(f"the {trait!r} trait was not found on the uploaded photo")
        return vectors[ids[0]], _support("upload", image, result.label_map, names)

    def _results(self, hits: list[tuple[int, float]], trait: str) -> list[QueryResult]:
        if not hits:
            return []
        ids = [sid for sid, _ in hits]
        rows = {
            r[0]: r for r in self.store.con.execute(
                "SELECT specimen_id, path, group_name, metadata FROM specimens WHERE specimen_id IN (SELECT unnest(?::BIGINT[]))",
                [ids],
            ).fetchall()
        }
        masks = {
            r[0]: r for r in self.store.con.execute(
                "SELECT specimen_id, trait_id, area, bbox_x0, bbox_y0, bbox_x1, bbox_y1, quality, rle FROM trait_masks "
                "WHERE trait_name = ? AND specimen_id IN (SELECT unnest(?::BIGINT[]))",
                [trait, ids],
            ).fetchall()
        }
        out = []
        for rank, (sid, score) in enumerate(hits, start=1):
            _, path, group, metadata = rows[sid]
            m = masks.get(sid)
            out.append(QueryResult(
                specimen_id=sid, rank=rank, score=float(score), path=path, group=group, trait_name=trait,
                trait_id=m[1] if m else None, bbox=tuple(m[3:7]) if m else None, area=m[2] if m else None,
                quality=m[7] if m else None, metadata=json.loads(metadata) if metadata else {}, _rle=m[8] if m else None,
            ))
        return out

    def _rerank(self, results: list[QueryResult], support: Support | None, trait: str) -> list[QueryResult]:
        """Cycle-consistency IoU of the query's trait on each candidate (SST retrieval score)."""
        if trait == SPECIMEN_TRAIT or support is None:
            raise QueryError("re-ranking needs a trait (not the whole specimen) on a query with masks")
        tid = next((t for t, tr in support.traits.items() if tr.name == trait), None)
        if tid is None or tid not in support.trait_ids:
            raise QueryError(f"the query has no {trait!r} mask to re-rank with")
        single = _support(support.id, support.image, np.where(support.mask == tid, tid, 0).astype(np.uint8),
                          {t: tr.name for t, tr in support.traits.items()})
        queries = [(str(r.specimen_id), r.path) for r in results]
        scores = {res.query_id: res.quality.get(tid, 0.0) if res.error is None else 0.0
                  for res in self.tracker.segment([single], queries, quality=True)}
        for r in results:
            r.rerank_iou = float(scores.get(str(r.specimen_id), 0.0))
        return sorted(results, key=lambda r: (-r.rerank_iou, -r.score))


@dataclass
class _FilterAdmission:
    """The catalog's answers about one search's filters, in the form the planner asks for."""

    engine: SearchEngine
    filters: list[Filter]

    def passes(self, ids: np.ndarray) -> np.ndarray:
        passing = self.engine._passing(ids.tolist(), self.filters)
        return np.fromiter((int(i) in passing for i in ids), bool, len(ids))

    def admitted(self) -> np.ndarray:
        return self.engine.filter_ids(self.filters)


def _support(sid: str, image: np.ndarray, label_map: np.ndarray, names: dict[int, str]) -> Support:
    from .references import Trait

    return Support(sid, image, label_map, {t: Trait(id=t, name=n) for t, n in names.items()})
