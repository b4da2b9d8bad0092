"""Instances of a drawer photo: proposals, cycle/forward scoring and selection on the real
SAM 2 modules (random weights, so the scores carry no meaning: these tests check the
plumbing and the selection rules, not counting accuracy, which needs real weights)."""

from __future__ import annotations

import numpy as np
import pytest

from sst_search.config import InstancesConfig
from sst_search.instance_finding import (
    GIVEN,
    InstanceFinder,
    ScoredCandidates,
    crop_instance,
    select_instances,
)
from sst_search.masks import bbox, cutout, iou_matrix
from sst_search.references import InstanceReference
from sst_search.synthetic import render_drawer

SIZE = (128, 160)
#: Every candidate survives the proposal filters and the score threshold: with random
#: weights SAM 2's own confidences are noise.
OPEN = InstancesConfig(
    points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=0.0, max_area=1.0, min_score=0.0,
    max_candidates=3,
)


@pytest.fixture(scope="module")
def finder(tracker):
    return InstanceFinder(tracker.predictor, OPEN)


@pytest.fixture(scope="module")
def reference():
    tray = render_drawer("alba", 2, SIZE, seed=5)
    return InstanceReference("tray", tray.image, tray.instances, "specimen")


def _check_items(image: np.ndarray, result) -> None:
    """Each instance is one crop that shows exactly its photo pixels, mask and box."""
    assert [i.number for i in result.instances] == list(range(1, result.count + 1))
    for inst in result.instances:
        assert inst.box == bbox(inst.mask)
        crop = crop_instance(image, inst.mask, margin=0.1, number=inst.number)
        cx0, cy0, cx1, cy1 = crop.crop_box
        x0, y0, x1, y1 = inst.box
        assert cx0 <= x0 and cy0 <= y0 and x1 <= cx1 and y1 <= cy1
        assert np.array_equal(crop.image, image[cy0:cy1, cx0:cx1])
        assert crop.mask.sum() == inst.area  # the whole instance is inside its crop
        rgba, black = cutout(crop.image, crop.mask), cutout(crop.image, crop.mask, "black")
        assert rgba.shape[2] == 4 and np.array_equal(rgba[..., 3] > 0, crop.mask)
        assert not black[~crop.mask].any() and np.array_equal(black[crop.mask], crop.image[crop.mask])


def test_proposals_and_scoring_on_sam2_give_one_instance_per_kept_candidate(finder, reference):
    photo = render_drawer("alba", 3, SIZE, seed=1)
    result = finder.find(photo.image, [reference])
    assert result.candidates >= 1 and 1 <= result.count <= result.candidates
    masks = np.stack([i.mask for i in result.instances])
    overlap = iou_matrix(masks, masks)
    assert (overlap[~np.eye(len(masks), dtype=bool)] < OPEN.nms_iou).all()
    assert all(0.0 <= i.score <= 1.0 and i.score == max(i.cycle_iou, i.forward_iou) for i in result.instances)
    assert set(result.timings) == {"encode", "propose", "score"}
    _check_items(photo.image, result)


def test_injected_ground_truth_candidates_are_kept_once_each_and_split_into_items(finder, reference):
    photo = render_drawer("alba", 4, SIZE, seed=2)
    truth = photo.instance_masks()
    shifted = np.roll(truth[0], 1, axis=1)  # a near-duplicate of instance 1
    foam = np.zeros(SIZE, bool)
    foam[50:60, 70:80] = True
    foam &= photo.instances == 0
    scored = finder.score(photo.image, [reference], candidates=[*truth, shifted, foam])
    assert scored.origins[:6] == [GIVEN] * 6
    assert ((scored.score >= 0) & (scored.score <= 1)).all()

    result = select_instances(scored, min_score=0.0, nms_iou=0.5)
    match = iou_matrix(np.stack(truth), np.stack([i.mask for i in result.instances]))
    assert ((match >= 0.5).sum(axis=1) == 1).all()  # every specimen kept exactly once
    _check_items(photo.image, result)

    # The threshold keeps exactly the candidates that reach it (NMS aside), down to none.
    for threshold in sorted(set(scored.score.tolist())):
        kept = select_instances(scored, min_score=threshold, nms_iou=1.0)
        assert kept.count == int((scored.score >= threshold).sum())
    assert select_instances(scored, min_score=float(scored.score.max()) + 1e-6, nms_iou=0.5).count == 0


def test_no_candidate_means_no_instance(finder, reference):
    scored = ScoredCandidates(SIZE, np.zeros((0, *SIZE), bool), [], np.zeros(0), np.zeros(0))
    result = select_instances(scored, min_score=0.0, nms_iou=0.5)
    assert result.count == 0 and result.candidates == 0 and not result.instance_map().any()
    with pytest.raises(ValueError, match="instance reference"):
        finder.find(render_drawer("alba", 0, SIZE).image, [])
