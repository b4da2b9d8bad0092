"""Evaluation: segmentation IoU against ground-truth masks, retrieval precision, and
loaders for the published trait-mask datasets (see each module for the definitions)."""

from .datasets import (
    DatasetFormatError,
    ImageFinder,
    ItemProblem,
    MaskDataset,
    MaskRecord,
    ProblemKind,
    fit_mask_to_image,
    load_cambridge_butterfly,
    load_mask_folder,
    load_neon_beetles,
    load_record_mask,
)
from .eval_seg import (
    EvaluationInputError,
    MaskPair,
    SegEvalReport,
    evaluate_folders,
    evaluate_masks,
)
from .metrics import (
    PairStatus,
    RetrievalScores,
    SegmentationScores,
    TraitOverlap,
    TraitRow,
    average_precision_at_k,
    precision_at_k,
    retrieval_scores,
    trait_overlaps,
)

__all__ = [
    "DatasetFormatError",
    "EvaluationInputError",
    "ImageFinder",
    "ItemProblem",
    "MaskDataset",
    "MaskPair",
    "MaskRecord",
    "PairStatus",
    "ProblemKind",
    "RetrievalScores",
    "SegEvalReport",
    "SegmentationScores",
    "TraitOverlap",
    "TraitRow",
    "average_precision_at_k",
    "evaluate_folders",
    "evaluate_masks",
    "fit_mask_to_image",
    "load_cambridge_butterfly",
    "load_mask_folder",
    "load_neon_beetles",
    "load_record_mask",
    "precision_at_k",
    "retrieval_scores",
    "trait_overlaps",
]
