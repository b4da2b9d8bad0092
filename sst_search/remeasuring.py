"""Measuring an indexed collection again from its stored masks, without segmenting it again.

It reads masks from the store and writes rows back, so it lives apart from
:mod:`sst_search.measure`, which turns one mask into numbers and knows nothing of the catalog
(the store imports that vocabulary; the measuring module must not import the store back).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from .images import ImageLoadError, load_image
from .measure import SCALE_COLUMN, measure_label_map, resolve_scale
from .store import Store


def remeasure(
    store: Store, scale_column: str = SCALE_COLUMN, pixels_per_mm: float | None = None, commit_every: int = 64,
    progress: Callable[[], None] | None = None, specimen_ids: Collection[int] | None = None,
) -> tuple[int, list[tuple[str, str]]]:
    """Measure every indexed specimen again from its stored masks (no re-segmenting): how an
    existing store gets measurements, or new ones after a change of scale.

    Returns ``(specimens measured, [(path, problem), ...])``. An image that cannot be read
    still gets its shape measured (colour left empty) and is listed; work is committed
    every ``commit_every`` specimens, so an interrupted re-run keeps what it finished.
    ``specimen_ids`` limits the work to those specimens.
    """
    resolve_scale({}, scale_column, pixels_per_mm)  # a bad collection-wide scale fails before any work
    pending: dict[int, list[dict]] = {}
    measured, problems = 0, []
    wanted = None if specimen_ids is None else set(specimen_ids)
    if wanted is not None and not wanted:
        return 0, []
    original_widths = store.original_widths()
    for sid, path, metadata in store.indexed_specimens():
        if wanted is not None and sid not in wanted:
            continue
        label_map = store.label_map(sid)
        if label_map is not None:
            try:
                image = load_image(path)
                if image.shape[:2] != label_map.shape:
                    raise ImageLoadError(path, f"image is {image.shape[1]}x{image.shape[0]}, its masks "
                                               f"{label_map.shape[1]}x{label_map.shape[0]}; it changed since indexing")
            except ImageLoadError as exc:
                image = None
                problems.append((path, f"colour not measured: {exc}"))
            names = {m.trait_id: m.trait_name for m in store.trait_masks(sid)}
            scale = resolve_scale(metadata, scale_column, pixels_per_mm)
            if sid in original_widths:
                scale = scale.resampled(label_map.shape[1], original_widths[sid])
            pending[sid] = measure_label_map(label_map, image, names, scale)
            measured += 1
        if len(pending) >= commit_every:
            store.replace_measurements(pending)
            pending = {}
        if progress is not None:
            progress()
    store.replace_measurements(pending)
    return measured, problems
