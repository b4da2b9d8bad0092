"""The k-shot protocol of the SST paper: label k specimens per group, segment the rest.

For every seed and group, ``k`` supports are drawn from the group's annotated specimens;
every other specimen of the group is segmented from them with SST and scored against its
own ground truth with :mod:`.metrics`. Repeating this over seeds shows how much a score
owes to which specimens happened to be labeled, which a single draw cannot tell.

Draws are made per (seed, group) with ``numpy.random.default_rng((seed, crc32(group)))``:
the same seed always picks the same supports, and adding or removing a group leaves the
other groups' draws unchanged.

Only specimens with a usable image take part (as support or query); the dataset's own
problem list says which were left out. A query SST fails on scores IoU 0 for each of its
ground-truth traits and is listed, so failures can never raise a score.
"""

from __future__ import annotations

import csv
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from statistics import fmean, stdev

import numpy as np
from rich.console import Group
from rich.table import Table

from ..images import ImageLoadError, load_image
from ..references import TRAITS_FILE, ReferencesError, Support, Trait, load_traits
from ..tracking import MODES, SSTTracker
from .datasets import (
    MaskDataset,
    MaskRecord,
    fit_mask_to_image,
    load_cambridge_butterfly,
    load_mask_folder,
    load_neon_beetles,
    load_record_mask,
)
from .metrics import SegmentationScores, trait_overlaps

#: ``{group: {trait_id: name}}``
TraitNames = Mapping[str, Mapping[int, str]]


class DatasetKind(str, Enum):
    FOLDER = "folder"
    SYNTHETIC = "synthetic"
    CAMBRIDGE = "cambridge"
    NEON = "neon"


def open_dataset(
    kind: DatasetKind | str,
    root: Path | None = None,
    split: Path | None = None,
    image_root: Path | None = None,
    mask_root: Path | None = None,
) -> tuple[MaskDataset, dict[str, dict[int, str]]]:
    """The dataset and its trait names (``{}`` where the format has none: ids are used).

    * ``folder``: ``root`` as read by :func:`load_mask_folder`; trait names from
      ``root/references/<group>/traits.yaml`` when present.
    * ``synthetic``: a collection written by ``sst-search synth`` (``images/<group>/``,
      ``ground_truth/<group>/``, ``references/<group>/traits.yaml``).
    * ``cambridge``: ``split`` is a Cambridge butterfly split JSON.
    * ``neon``: ``split`` is the NEON beetle masks' ``metadata.json``.
    """
    kind = DatasetKind(kind)
    if kind in (DatasetKind.FOLDER, DatasetKind.SYNTHETIC):
        if root is None:
            raise ValueError(f"the {kind.value} format needs a root folder")
        dataset = load_mask_folder(root)
        refs = Path(root) / "references"
        if kind is DatasetKind.SYNTHETIC and not refs.is_dir():
            raise FileNotFoundError(f"{refs}: a synthetic collection has a references folder with traits.yaml per group")
        return dataset, trait_names_from_references(refs, dataset.groups) if refs.is_dir() else {}
    if split is None:
        raise ValueError(f"the {kind.value} format needs a split/metadata JSON file")
    loader = load_cambridge_butterfly if kind is DatasetKind.CAMBRIDGE else load_neon_beetles
    return loader(split, image_root=image_root, mask_root=mask_root), {}


def trait_names_from_references(refs_dir: Path, groups: Iterable[str]) -> dict[str, dict[int, str]]:
    """``{group: {id: name}}`` from ``refs_dir/<group>/traits.yaml`` for the groups that have one."""
    names = {}
    for group in groups:
        path = Path(refs_dir) / group / TRAITS_FILE
        if path.is_file():
            names[group] = {tid: t.name for tid, t in load_traits(path).items()}
    return names


@dataclass
class SeedResult:
    """One draw: which specimens were supports, and the scores of everything else."""

    seed: int
    supports: dict[str, list[str]]  # group -> item ids used as supports
    scores: SegmentationScores
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (group, item_id, error)
    skipped_groups: dict[str, str] = field(default_factory=dict)  # group -> why it was not evaluated

    @property
    def overall_miou(self) -> float | None:
        return self.scores.overall_miou

    @property
    def group_miou(self) -> dict[str, float]:
        return self.scores.group_miou()


def _spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    if not values:
        return None, None
    return fmean(values), (stdev(values) if len(values) > 1 else None)


@dataclass
class KShotReport:
    dataset: str
    k: int
    mode: str
    seeds: list[SeedResult]
    trait_names: dict[str, dict[int, str]]
    fingerprint: dict
    weights_random: bool

    @property
    def overall(self) -> tuple[float | None, float | None]:
        """(mean, std) over seeds of the overall mIoU."""
        return _spread([s.overall_miou for s in self.seeds if s.overall_miou is not None])

    @property
    def groups(self) -> dict[str, tuple[float | None, float | None]]:
        """``{group: (mean, std)}`` over the seeds in which the group was evaluated."""
        values: dict[str, list[float]] = defaultdict(list)
        for s in self.seeds:
            for g, v in s.group_miou.items():
                values[g].append(v)
        return {g: _spread(v) for g, v in sorted(values.items())}

    def trait_name(self, group: str, trait_id: int) -> str:
        return self.trait_names.get(group, {}).get(trait_id, f"trait_{trait_id}")

    def __rich__(self) -> Group:
        title = f"{self.dataset}: {self.k}-shot, {self.mode}, seeds {', '.join(str(s.seed) for s in self.seeds)}"
        table = Table(title=title)
        table.add_column("group")
        for s in self.seeds:
            table.add_column(f"seed {s.seed}", justify="right")
        table.add_column("mean", justify="right")
        table.add_column("std", justify="right")
        for g, (mean, std) in self.groups.items():
            table.add_row(g, *[_fmt(s.group_miou.get(g)) for s in self.seeds], _fmt(mean), _fmt(std))
        mean, std = self.overall
        table.add_row("[bold]overall[/bold]", *[_fmt(s.overall_miou) for s in self.seeds], _fmt(mean), _fmt(std))
        lines = []
        if self.weights_random:
            lines.append("[bold yellow]SAM 2 weights are RANDOM: these scores say nothing about SST.[/bold yellow]")
        for s in self.seeds:
            picked = "; ".join(f"{g}: {', '.join(ids)}" for g, ids in s.supports.items())
            lines.append(f"seed {s.seed} supports: {picked}")
            lines += [f"[yellow]seed {s.seed}: {g} skipped:[/yellow] {why}" for g, why in s.skipped_groups.items()]
            lines += [f"[red]seed {s.seed}: {g}/{item} failed (IoU 0):[/red] {err}" for g, item, err in s.failed]
        return Group(table, *lines)

    def to_csv(self, path: str | Path) -> Path:
        """Rows per (seed, group, trait), (seed, group) and seed, then mean/std rows over seeds."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["seed", "level", "group", "trait_id", "trait_name", "miou", "images", "missing_predictions", "false_positives"])
            for s in self.seeds:
                for r in s.scores.trait_rows():
                    w.writerow([s.seed, "trait", r.group, r.trait_id, self.trait_name(r.group, r.trait_id),
                                _num(r.miou), r.images, r.missing_predictions, r.false_positives])
                for g, v in s.group_miou.items():
                    w.writerow([s.seed, "group", g, "", "", _num(v), "", "", ""])
                w.writerow([s.seed, "overall", "", "", "", _num(s.overall_miou), "", "", ""])
            for g, (mean, std) in self.groups.items():
                w.writerow(["mean", "group", g, "", "", _num(mean), "", "", ""])
                w.writerow(["std", "group", g, "", "", _num(std), "", "", ""])
            mean, std = self.overall
            w.writerow(["mean", "overall", "", "", "", _num(mean), "", "", ""])
            w.writerow(["std", "overall", "", "", "", _num(std), "", "", ""])
        return path


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def _num(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.6f}"


def draw_supports(items: Sequence[MaskRecord], group: str, k: int, seed: int) -> list[int]:
    """Indices (into ``items``, sorted) of the k supports of ``group`` for ``seed``."""
    rng = np.random.default_rng((seed, zlib.crc32(group.encode("utf-8"))))
    return sorted(rng.choice(len(items), size=k, replace=False).tolist())


def _support(record: MaskRecord, names: Mapping[int, str]) -> Support:
    image = load_image(record.image_path)
    mask = load_record_mask(record)
    ids = sorted(set(np.unique(mask).tolist()) - {0})
    traits = {t: Trait(id=t, name=names.get(t, f"trait_{t}")) for t in ids}
    return Support(id=record.item_id, image=image, mask=mask, traits=traits,
                   image_path=str(record.image_path), mask_path=str(record.mask_path))


def run_kshot(
    dataset: MaskDataset,
    tracker: SSTTracker,
    k: int = 1,
    seeds: Iterable[int] = (0,),
    mode: str = "pairwise",
    trait_names: TraitNames | None = None,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> KShotReport:
    """Run the k-shot protocol on ``dataset`` for each seed (see the module docstring).

    A group with at most ``k`` usable specimens has nothing left to score and is skipped
    (and said so). ``progress`` is called with the number of queries just scored.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("at least one seed is needed")
    names = {g: dict(v) for g, v in (trait_names or {}).items()}
    by_group: dict[str, list[MaskRecord]] = defaultdict(list)
    for r in sorted(dataset.records, key=lambda r: (r.group, r.item_id, str(r.mask_path))):
        if r.image_path is not None:
            by_group[r.group].append(r)
    if not by_group:
        raise ValueError(f"{dataset.name}: no specimen has a usable image\n{dataset.summary()}")
    results = []
    for seed in seeds:
        result = SeedResult(seed, {}, SegmentationScores())
        for group, items in sorted(by_group.items()):
            if len(items) <= k:
                result.skipped_groups[group] = f"{len(items)} specimen(s) with images, need more than k={k}"
                continue
            chosen = draw_supports(items, group, k, seed)
            result.supports[group] = [items[i].item_id for i in chosen]
            try:
                supports = [_support(items[i], names.get(group, {})) for i in chosen]
            except (ImageLoadError, ReferencesError) as exc:
                result.skipped_groups[group] = f"support unusable: {exc}"
                continue
            queries = [(str(i), r) for i, r in enumerate(items) if i not in chosen]
            _score_group(tracker, supports, queries, group, mode, batch_size, result, progress)
        results.append(result)
    return KShotReport(
        dataset=dataset.name, k=k, mode=mode, seeds=results, trait_names=names,
        fingerprint=tracker.fingerprint, weights_random=bool(tracker.weights.is_random),
    )


def _score_group(tracker, supports, queries, group, mode, batch_size, result: SeedResult, progress) -> None:
    records = dict(queries)
    for tr in tracker.segment(supports, ((qid, r.image_path) for qid, r in queries), mode=mode, batch_size=batch_size):
        record = records[tr.query_id]
        try:
            gt = load_record_mask(record)
        except ImageLoadError as exc:
            result.failed.append((group, record.item_id, f"ground truth unreadable, not scored: {exc}"))
            continue
        pred = tr.label_map
        if pred is None:
            result.failed.append((group, record.item_id, tr.error or "no prediction"))
        elif pred.shape != gt.shape:
            pred = fit_mask_to_image(pred, gt.shape)
        result.scores.add(trait_overlaps(pred, gt, record.item_id, group))
        if progress is not None:
            progress(1)
