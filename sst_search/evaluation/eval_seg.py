"""Score predicted label masks against ground-truth masks on disk.

Predictions and ground truth (GT) are matched by file stem (``<id>.png`` or
``<id>.mask.png``; ``*.overlay.png`` previews are ignored), by relative path first and
by a stem that is unique among the predictions otherwise, so a flat prediction folder
can be scored against a ``<group>/<id>.png`` GT tree.

Scores are computed at the GT's size: a prediction of another size is resized to it
with nearest neighbour. The GT is the reference measurement and resizing it would
change what is being measured (published Cambridge masks are 1024x1024 whatever the
photo size, while predictions come at the photo's size); resizing the prediction keeps
every method scored on the same pixels. Resized items are listed in the report.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Group
from rich.table import Table

from ..images import ImageLoadError, load_mask
from ..references import MASK_SUFFIX
from .datasets import fit_mask_to_image
from .metrics import SegmentationScores, trait_overlaps

OVERLAY_SUFFIX = ".overlay.png"


class EvaluationInputError(ValueError):
    """The inputs cannot be evaluated at all (missing folder, no GT, bad manifest)."""


@dataclass(frozen=True)
class MaskPair:
    item_id: str
    group: str
    pred_path: Path | None
    gt_path: Path


@dataclass
class SegEvalReport:
    """Scores plus everything a reader needs to trust them (what was missing or odd)."""

    scores: SegmentationScores
    missing: list[tuple[str, str]] = field(default_factory=list)  # (group, item_id) without prediction
    unmatched_predictions: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    #: ``{group: {trait id: name}}``: tables and CSV name traits (ids alone mean nothing to a reader)
    trait_names: dict[str, dict[int, str]] = field(default_factory=dict)
    #: ground-truth items left out because they had no prediction (``predicted_only``)
    not_predicted: int = 0

    def trait_name(self, group: str, trait_id: int) -> str:
        return self.trait_names.get(group, {}).get(trait_id, str(trait_id))

    @property
    def overall_miou(self) -> float | None:
        return self.scores.overall_miou

    @property
    def pooled_miou(self) -> float | None:
        return self.scores.pooled_miou

    @property
    def group_miou(self) -> dict[str, float]:
        return self.scores.group_miou()

    def to_csv(self, path: str | Path, pairs: bool = False) -> Path:
        """Per-(group, trait) rows, or with ``pairs=True`` one row per (image, trait)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            if pairs:
                writer.writerow(["group", "item_id", "trait_id", "trait", "status", "iou", "intersection", "gt_pixels",
                                 "pred_pixels"])
                for o in self.scores.overlaps:
                    iou = "" if o.iou is None else f"{o.iou:.6f}"
                    writer.writerow([o.group, o.item_id, o.trait_id, self.trait_name(o.group, o.trait_id), o.status.value, iou,
                                     o.intersection, o.gt_pixels, o.pred_pixels])
            else:
                writer.writerow(["group", "trait_id", "trait", "images", "miou", "missing_predictions", "false_positives"])
                for r in self.scores.trait_rows():
                    writer.writerow([r.group, r.trait_id, self.trait_name(r.group, r.trait_id), r.images, f"{r.miou:.6f}",
                                     r.missing_predictions, r.false_positives])
        return path

    def __rich__(self) -> Group:
        traits = Table(title="Per-trait IoU", title_justify="left")
        for col in ("group", "trait", "images", "mIoU", "missing", "false pos."):
            traits.add_column(col, justify="left" if col == "group" else "right")
        for r in self.scores.trait_rows():
            traits.add_row(r.group or "-", self.trait_name(r.group, r.trait_id), str(r.images), _fmt(r.miou), str(r.missing_predictions), str(r.false_positives))
        groups = Table(title="Per-group mIoU", title_justify="left")
        for col in ("group", "images", "pairs", "mIoU"):
            groups.add_column(col, justify="left" if col == "group" else "right")
        pairs = self.scores.pairs
        for g, miou in self.scores.group_miou().items():
            in_group = [o for o in pairs if o.group == g]
            groups.add_row(g or "-", str(len({o.item_id for o in in_group})), str(len(in_group)), _fmt(miou))
        lines = [
            f"overall mIoU (mean of the group mIoUs; a group's mIoU is the mean over its (image, trait) pairs): [bold]{_fmt(self.overall_miou)}[/bold]",
            f"pooled mIoU (mean over all (image, trait) pairs): {_fmt(self.pooled_miou)}",
        ]
        if self.missing:
            shown = ", ".join(f"{g}/{i}" if g else i for g, i in self.missing[:20])
            more = f" ... (+{len(self.missing) - 20})" if len(self.missing) > 20 else ""
            lines.append(f"[yellow]{len(self.missing)} missing predictions (scored as IoU 0):[/yellow] {shown}{more}")
        if self.not_predicted:
            lines.append(f"{self.not_predicted} ground-truth items without a prediction were not scored (predicted only)")
        if self.unmatched_predictions:
            lines.append(f"{len(self.unmatched_predictions)} predictions without ground truth (ignored)")
        if self.resized:
            lines.append(f"{len(self.resized)} predictions resized to the ground-truth size (nearest neighbour)")
        lines += [f"[red]error:[/red] {e}" for e in self.errors]
        return Group(traits, groups, *lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def evaluate_masks(pairs: Iterable[MaskPair]) -> SegEvalReport:
    """Score matched pairs; an unreadable file is reported and never stops the run.

    An unreadable prediction counts like a missing one (IoU 0), an unreadable GT is
    skipped (there is nothing to score against).
    """
    report = SegEvalReport(SegmentationScores())
    for pair in pairs:
        try:
            gt = load_mask(pair.gt_path)
        except ImageLoadError as exc:
            report.errors.append(f"ground truth skipped: {exc}")
            continue
        pred = None
        if pair.pred_path is not None:
            try:
                pred = load_mask(pair.pred_path)
            except ImageLoadError as exc:
                report.errors.append(f"prediction unreadable, scored as missing: {exc}")
        if pred is None:
            report.missing.append((pair.group, pair.item_id))
        elif pred.shape != gt.shape:
            report.resized.append(f"{pair.pred_path}: {pred.shape[1]}x{pred.shape[0]} -> {gt.shape[1]}x{gt.shape[0]}")
            pred = fit_mask_to_image(pred, gt.shape)
        report.scores.add(trait_overlaps(pred, gt, pair.item_id, pair.group))
    return report


def _mask_key(path: Path) -> str | None:
    """Stem of a mask file, or None for files that are not label masks."""
    name = path.name.lower()
    if name.endswith(OVERLAY_SUFFIX) or not name.endswith(".png"):
        return None
    return path.name[: -len(MASK_SUFFIX)] if name.endswith(MASK_SUFFIX) else path.stem


def _mask_files(root: Path) -> dict[tuple[str, str], Path]:
    """``{(relative folder, stem): path}`` for every label mask under ``root``."""
    found = {}
    for path in sorted(root.rglob("*.png")):
        stem = _mask_key(path)
        if stem is not None and path.is_file():
            found[(path.parent.relative_to(root).as_posix().strip("."), stem)] = path
    return found


def read_group_manifest(path: Path) -> dict[str, str]:
    """``{stem of path: group}`` from a collection manifest CSV (``path``, ``group``)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"{path}: manifest does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "group"} - set(reader.fieldnames or [])
        if missing:
            raise EvaluationInputError(f"{path}: manifest lacks column(s) {sorted(missing)} (has {reader.fieldnames})")
        groups: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            stem = Path(row["path"] or "").stem
            if not stem:
                raise EvaluationInputError(f"{path}: line {line}: empty path")
            if groups.get(stem, row["group"]) != row["group"]:
                raise EvaluationInputError(f"{path}: line {line}: {stem} listed in groups {groups[stem]!r} and {row['group']!r}")
            groups[stem] = row["group"]
    return groups


def load_trait_names(references: str | Path) -> dict[str, dict[int, str]]:
    """``{group: {trait id: name}}`` from ``REFS/<group>/traits.yaml``."""
    from ..references import TRAITS_FILE, load_traits

    return {f.parent.name: {tid: t.name for tid, t in load_traits(f).items()}
            for f in sorted(Path(references).glob(f"*/{TRAITS_FILE}"))}


def evaluate_folders(
    pred_dir: str | Path, gt_dir: str | Path, groups: Path | Mapping[str, str] | None = None,
    predicted_only: bool = False, trait_names: Mapping[str, Mapping[int, str]] | None = None,
) -> SegEvalReport:
    """Score every GT mask under ``gt_dir`` against the prediction with the same stem.

    ``groups``: a manifest CSV (``path``, ``group``) or ``{stem: group}``; without it,
    or for stems it does not list, the group is the GT's sub-folder ("" at the top).
    ``predicted_only``: score only the GT items that have a prediction (a partial run), instead
    of counting the others as IoU 0. ``trait_names``: ``{group: {id: name}}`` for the tables.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for label, d in (("prediction", pred_dir), ("ground-truth", gt_dir)):
        if not d.is_dir():
            raise EvaluationInputError(f"{d}: {label} folder does not exist")
    stem_groups = read_group_manifest(groups) if isinstance(groups, (str, Path)) else dict(groups or {})
    gts = _mask_files(gt_dir)
    if not gts:
        raise EvaluationInputError(f"{gt_dir}: no ground-truth masks (*.png) found")
    preds = _mask_files(pred_dir)
    stem_count: dict[str, int] = {}
    for _, stem in preds:
        stem_count[stem] = stem_count.get(stem, 0) + 1
    by_stem = {stem: p for (_, stem), p in preds.items() if stem_count[stem] == 1}

    used: set[Path] = set()
    pairs = []
    skipped = 0
    for (folder, stem), gt_path in gts.items():
        pred = preds.get((folder, stem)) or by_stem.get(stem)
        if pred is not None:
            used.add(pred)
        elif predicted_only:
            skipped += 1
            continue
        pairs.append(MaskPair(stem, stem_groups.get(stem, folder), pred, gt_path))
    if not pairs:
        raise EvaluationInputError(f"{pred_dir}: no prediction matches a ground-truth mask in {gt_dir} (by stem)")
    report = evaluate_masks(pairs)
    report.unmatched_predictions = sorted(set(preds.values()) - used)
    report.not_predicted = skipped
    report.trait_names = {g: dict(n) for g, n in (trait_names or {}).items()}
    return report
