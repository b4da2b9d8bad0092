"""A published snapshot's catalog, and the read-only store around it.

A snapshot never changes once published, and the app's searches ask it the same things on
every query (the catalog's fields, which specimens pass a filter). :class:`SnapshotCatalog`
therefore remembers what it was asked and answers filters from the snapshot's columns
(:mod:`sst_search.store.columns`), mapped from the files written at publish
(:mod:`sst_search.store.published_columns`) where it has them, instead of a SQL round trip
each time; the live :class:`~sst_search.store.catalog.Catalog` it derives from always asks
SQL. The rows joined to a search's hits (their listing and masks) are read for those hits
alone, from the copies written at publish: holding every specimen's row and mask made the
first search load the whole trait (14 s and gigabytes at ten million) and the reader's
memory grow with the collection.
:class:`SnapshotStore` is the store a reader opens on it: the catalog, the FAISS indexes
at the catalog's generations, and search; nothing that writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from sst_search.store.catalog import Catalog, listing_of, masks_by_specimen
from sst_search.store.columns import (
    CheckedAdmission,
    ConditionCheck,
    MaskAdmission,
    PostedAdmission,
    SnapshotColumns,
)
from sst_search.store.connection import Connection
from sst_search.store.filters import (
    Filter,
    compile_mask,
    prepare_kernels,
    resolve,
    scope_filters,
)
from sst_search.store.indexed import IndexedStore
from sst_search.store.published_columns import PublishedColumns, per_hit_files
from sst_search.store.records import TraitMask
from sst_search.vector_search import at_rest, postings
from sst_search.vector_search.indexes import ivf_of, map_in_files, read_through


class SnapshotCatalog(Catalog):
    """The reads of :class:`Catalog` over a file that never changes: remembered, and answered
    from memory where a search asks them once per query."""

    def remember(self, name: str, compute):
        """``compute()``, once: a snapshot never changes."""
        if name not in self._remembered:
            self._remembered[name] = compute()
        return self._remembered[name]

    @property
    def _remembered(self) -> dict:
        return self.__dict__.setdefault("_catalog_memo", {})

    def published(self) -> PublishedColumns:
        """The columns written with the snapshot (:mod:`~sst_search.store.published_columns`)."""
        return self.remember("published", lambda: PublishedColumns(self.db_path))

    def columns(self) -> SnapshotColumns:
        """The snapshot's filterable fields (loaded on first use): mapped from the columns
        written at publish where the snapshot has them, else read from the catalog."""
        return self.remember("columns", lambda: SnapshotColumns(self, self.published()))

    def admission(self, filters: Iterable[Filter]) -> MaskAdmission | None:
        """The indexed specimens passing ``filters``, evaluated in memory against the
        snapshot's columns: no SQL per search; None without filters. A filter with a
        condition on a posting field (``index.posting_fields``), whatever its operator, is a
        :class:`PostedAdmission`, which builds no mask when the searched index has those
        fields' postings: its other conditions are asked of the vectors they admit. Any other
        is a :class:`CheckedAdmission`, asked specimen by specimen until a search needs every
        vector it admits (a mask over the specimens, built then), or, on a field with several
        values for one specimen, that mask at once."""
        filters = list(filters)
        if not filters:
            return None
        scoped = scope_filters(filters)
        conditions = [resolve(f, self.metadata_keys(), self.filter_traits()) for f in scoped]  # errors first

        def mask() -> tuple[SnapshotColumns, np.ndarray]:
            columns = self.columns()
            return columns, columns.all_of(conditions)

        fields = list(zip((f.field for f in filters), conditions))  # the scope's status condition left out
        posting = [(field, c) for field, c in fields if field in self.posting_fields()]
        if posting:
            checked = [c for field, c in fields if field not in self.posting_fields()]
            return PostedAdmission(posting, mask, checked, self.columns)
        columns = self.columns()
        checks = [ConditionCheck.of(columns, c) for c in conditions]
        if any(check is None for check in checks):  # a field with several values for one specimen
            return MaskAdmission(*mask())
        return CheckedAdmission(columns, conditions, checks)

    def posting_fields(self) -> list[str]:
        """The fields the snapshot's indexes may have postings of: ``index.posting_fields``,
        then those of few values its publish posted too
        (:func:`~sst_search.store.filter_postings.fields_to_post`)."""
        def fields() -> list[str]:
            listed = self.recorded_index_config().posting_fields
            return [*listed, *sorted(postings.fields_with_postings(at_rest.vectors_dir(self.db_path)) - set(listed))]

        return self.remember("posting_fields", fields)

    def loaded_columns(self) -> SnapshotColumns | None:
        """:meth:`columns` when something (a filter) loaded them already, else None: what a
        reader holds of the snapshot besides its indexes."""
        return self._remembered.get("columns")

    def listing(self, specimen_ids: Sequence[int]) -> dict[int, dict]:
        """:meth:`Catalog.listing`, sliced out of the listing written at publish."""
        rows = self._published_rows(list(specimen_ids))
        return listing_of(rows) if rows is not None else super().listing(specimen_ids)

    def trait_mask_of(self, trait_name: str, specimen_ids: Iterable[int]) -> dict[int, TraitMask]:
        """:meth:`Catalog.trait_mask_of`, sliced out of the trait's masks written at publish."""
        specimen_ids = list(specimen_ids)
        rows = self._published_rows(specimen_ids, trait_name)
        if rows is None:
            return super().trait_mask_of(trait_name, specimen_ids)
        return masks_by_specimen(tuple(row.values()) for row in rows)

    def hits_rows(self, trait_name: str, specimen_ids: Sequence[int]) -> tuple[dict[int, dict], dict[int, TraitMask]]:
        """:meth:`Catalog.hits_rows`, the rows of both published files asked of the disk at
        once before either is read: from a cold page cache the hits then wait about one disk
        read, not one per file."""
        with contextlib.suppress(OSError, ValueError):  # a damaged file is named by the read that needs it
            self.published().ask(list(specimen_ids), [None, trait_name])
        return super().hits_rows(trait_name, specimen_ids)

    def _published_rows(self, specimen_ids: list[int], trait_name: str | None = None) -> list[dict] | None:
        """The published rows of ``specimen_ids`` (None: ask the catalog), each checked to be
        the one asked for."""
        try:
            rows = self.published().rows(specimen_ids, trait_name)
        except (OSError, ValueError):  # a damaged file (verify names it): the catalog still answers
            rows = None
        asked = set(specimen_ids)
        if rows is None or not all(r["specimen_id"] in asked and r.get("trait_name", trait_name) == trait_name
                                   for r in rows):
            return None
        return rows


class SnapshotStore(IndexedStore, SnapshotCatalog):
    """A store opened read-only (usually a published snapshot): its catalog, its FAISS indexes
    (a stale or missing file is rebuilt in memory, never saved) and the vectors at rest
    beside it, mapped instead of loaded."""

    saves_rebuilt_indexes = False

    @classmethod
    def open(cls, db_path: str | Path) -> SnapshotStore:
        """Open the store at ``db_path`` for reading; indexes live in ``<db_path>.faiss/``."""
        db_path = Path(db_path)
        store = cls(Connection.open(db_path, read_only=True), at_rest_db=db_path)
        with store.opening():
            store.index_cache.config = store.recorded_index_config()
        return store

    def warm(self) -> None:
        """:meth:`IndexedStore.warm`, and also the files beside the snapshot that a filter or
        a plan reads whole read into the page cache: specimen and vector ids, filter codes,
        postings, list layouts, the offsets of the hits' rows (about 60 bytes a vector). At
        10M x 768, the first locality or date filter of a cold reader took 300-400 ms, most
        of it reading them. Their mappings are then filled in (:func:`map_in_files`), but for
        the postings' counts, read a few rows at a time. Not the float16 vectors or the hits'
        listing and mask rows, which searches read a few rows at a time (their files are
        opened)."""
        super().warm()
        root = at_rest.vectors_dir(self.db_path)
        whole: list[Path] = []
        if root.is_dir():
            by_row = per_hit_files(self.db_path) | {at_rest.vector_paths(root, key)[0] for key in self.index_keys()}
            whole = sorted(p for p in root.rglob("*") if p.is_file() and p not in by_row)
            for path in whole:
                read_through(path)
        self._prepare_filters()
        self.published().open_rows([None, *sorted({trait for _, trait in self.index_keys()})])
        map_in_files(p for p in whole if not postings.read_by_range(p))

    def _prepare_filters(self) -> None:
        """Ask once what the first filtered search would otherwise ask on its query path:
        :meth:`prepare_conditions`, and per index its rows among the specimens, its list
        layout and its postings."""
        columns, generations, posting_fields = self.prepare_conditions(), self.generations(), self.posting_fields()
        for key in self.index_keys():
            index, table = self.index(*key), self.vector_table(*key)
            columns.table_rows(table.ids)
            if ivf_of(index) is not None:
                table.layout(index)
                for field in posting_fields:
                    self.index_cache.postings(key, generations[key], field)

    def prepare_conditions(self) -> SnapshotColumns:
        """Ask once what resolving and scoping any filter asks: the catalog's metadata keys and
        the traits per-trait filters may name (a scan of every specimen's metadata: 8 ms of a first filtered
        search's 33 at 1M x 768), the posting fields and the mask of the indexed specimens
        every filter is scoped to; and each operator's Arrow kernels run once
        (:func:`prepare_kernels`). Returns the columns they were loaded into."""
        keys, traits = self.metadata_keys(), self.filter_traits()
        self.posting_fields()
        columns = self.columns()
        compile_mask(scope_filters([]), keys, traits, columns)
        prepare_kernels()
        return columns

    def require_writer(self) -> None:
        raise RuntimeError(f"{self.db_path}: store is open read-only")

    def __getattr__(self, name: str):
        """A writer's method asked of a snapshot says why it is missing, as the live store's would."""
        from sst_search.store.core import (
            Store,  # the live store is built on this module
        )

        if not name.startswith("__") and hasattr(Store, name):
            self.require_writer()
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
