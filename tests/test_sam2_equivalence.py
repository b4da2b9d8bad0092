"""Our tracker computes what the official SAM 2 video predictor computes.

The official ``SAM2VideoPredictor`` (same seeded random weights, hiera-t at the test image size) runs
the published SST recipe: frames written as JPEGs into a folder, ``init_state(video_path)``,
``add_new_mask`` per trait, ``propagate_in_video``. Our in-memory session gets the very
pixels the official loader decodes from those JPEGs. The low-resolution logits must be equal
within float tolerance, and the label maps identical except where that tolerance makes a tie.

These comparisons run our tracker one trait at a time, as the official predictor does.
Batching the traits (the default) is compared with that path at the end: batched matrix
products round differently in the last bit, so label maps agree except where two logits
tie within float precision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sst_search.images import load_image, load_mask
from sst_search.masks import decision_margin, logits_to_label_map
from sst_search.references import Support
from sst_search.sam2_predictor import encode_images
from sst_search.tracking import SSTTracker, TrackingSession

ATOL = 1e-4
#: Logit margin below which a pixel's decision is a float tie.
TIE = 1e-5


@pytest.fixture(scope="module")
def per_object(tracker):
    """Our tracker running one trait at a time, sharing the session's model."""
    return SSTTracker(tracker.predictor, tracker.model, tracker.weights, batch_traits=False)


@pytest.fixture(scope="module")
def official(tracker):
    """The unmodified official predictor class, built by our builder from our tracker's weights."""
    from sst_search.sam2_predictor import build_sam2

    predictor = build_sam2(tracker.model, tracker.weights, image_size=tracker.predictor.image_size, device="cpu",
                           official=True)
    assert type(predictor).__name__ == "SAM2VideoPredictor"
    ours = tracker.predictor.state_dict()
    theirs = predictor.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert predictor.fill_hole_area == tracker.predictor.fill_hole_area
    return predictor


def _specimens(synthetic, group: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    files = sorted((synthetic.root / "images" / group).glob("*.png"))[:n]
    return [(load_image(f), load_mask(synthetic.ground_truth / group / f.name)) for f in files]


def _write_video(folder: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    """Write frames as 00000.jpg... and return them decoded the way SAM 2's loader decodes."""
    folder.mkdir()
    for i, rgb in enumerate(images):
        Image.fromarray(rgb).save(folder / f"{i:05d}.jpg")
    decoded = [np.array(Image.open(folder / f"{i:05d}.jpg").convert("RGB")) for i in range(len(images))]
    # Our own reader returns the same pixels for a plain JPEG.
    assert all(np.array_equal(load_image(folder / f"{i:05d}.jpg"), d) for i, d in enumerate(decoded))
    return decoded


@torch.inference_mode()
def _run_official(predictor, folder: Path, prompts: dict[int, np.ndarray], trait_ids, start=None):
    """Official recipe; returns {frame: (low-res logits (K,1,h,w), label map)} for tracked frames."""
    state = predictor.init_state(video_path=str(folder))
    for frame_idx, mask in prompts.items():
        for tid in trait_ids:
            if (mask == tid).any():
                predictor.add_new_mask(state, frame_idx, tid, torch.from_numpy(mask == tid))
    out = {}
    for frame_idx, obj_ids, video_res in predictor.propagate_in_video(state, start_frame_idx=start):
        if frame_idx in prompts:
            continue
        low = torch.cat(
            [state["output_dict_per_obj"][i]["non_cond_frame_outputs"][frame_idx]["pred_masks"] for i in range(len(obj_ids))]
        )
        best, idx = video_res[:, 0].max(dim=0)
        ids = torch.tensor(obj_ids, dtype=torch.uint8)
        out[frame_idx] = (low.float(), torch.where(best > 0, ids[idx], 0).to(torch.uint8).numpy())
    return out


def _assert_same(ours_logits, ours_map, theirs):
    low, label_map = theirs
    torch.testing.assert_close(ours_logits, low, atol=ATOL, rtol=0)
    assert len(np.unique(label_map)) > 1, "degenerate case: the official label map is one label"
    # Logits that may differ by ATOL may flip a decision whose margin is below 2 * ATOL (a few
    # pixels at most, and only with some thread counts): anywhere else the maps must be equal.
    _assert_same_decisions(ours_map, label_map, low, tie=2 * ATOL)


def test_pairwise_equals_official_predictor(per_object, official, synthetic, references, tmp_path):
    tracker = per_object
    group = synthetic.groups[0]
    support = references[group][0]
    (query, _), = _specimens(synthetic, group, 1)
    decoded = _write_video(tmp_path / "video", [support.image, query])
    theirs = _run_official(official, tmp_path / "video", {0: support.mask}, support.trait_ids)

    jpeg_support = Support("s", decoded[0], support.mask, support.traits)
    (result,) = tracker.segment([jpeg_support], [("q", decoded[1])], batch_size=1)
    session = tracker._session([jpeg_support])
    assert [len(idx) for idx, _ in session._groups] == [1] * len(support.trait_ids)
    logits = session.track(encode_images(tracker.predictor, [decoded[1]])[0])
    assert session.obj_trait_ids == support.trait_ids
    _assert_same(logits, result.label_map, theirs[1])


def test_chain_past_memory_horizon_equals_official(per_object, official, synthetic, references, tmp_path):
    tracker = per_object
    """Support + 8 queries: the last query attends to only 6 previous frames
    (num_maskmem=7), so the first query has left the memory window by then."""
    group = synthetic.groups[1]
    support = references[group][0]
    queries = [img for img, _ in _specimens(synthetic, group, 4)]
    # Rotations and flips make more distinct frames out of few rendered specimens.
    queries += [np.ascontiguousarray(np.rot90(q, 2)) for q in queries]
    assert tracker.predictor.num_maskmem == 7 and len(queries) == 8
    decoded = _write_video(tmp_path / "video", [support.image, *queries])
    theirs = _run_official(official, tmp_path / "video", {0: support.mask}, support.trait_ids)

    session = TrackingSession(
        tracker.predictor, encode_images(tracker.predictor, decoded[:1]), [support.mask], support.trait_ids,
        total_frames=len(decoded), batch_traits=False,
    )
    for frame_idx in range(1, len(decoded)):
        frame = encode_images(tracker.predictor, [decoded[frame_idx]])[0]
        logits = session.track(frame, frame_idx=frame_idx, keep_memory=True)
        label_map = logits_to_label_map(logits, session.obj_trait_ids, frame.size)
        _assert_same(logits, label_map, theirs[frame_idx])


def test_several_supports_and_a_trait_left_undrawn(per_object, official, synthetic, references, tmp_path):
    """Two supports, the second without one trait, then a query.

    SST conditions a trait only on the supports where it is drawn (see TrackingSession).
    That is exactly the official predictor started at the first query
    (``propagate_in_video(start_frame_idx=<number of supports>)``). The official default
    start instead tracks the undrawn trait through the second support and keeps that
    guess as memory; the test shows that this changes the query's logits.
    """
    group = synthetic.groups[0]
    support = references[group][0]
    (second_img, second_mask), (query, _) = _specimens(synthetic, group, 2)
    dropped = support.trait_ids[-1]
    partial = np.where(second_mask == dropped, 0, second_mask).astype(np.uint8)
    assert (second_mask == dropped).any() and dropped not in set(np.unique(partial))

    decoded = _write_video(tmp_path / "video", [support.image, second_img, query])
    prompts = {0: support.mask, 1: partial}
    supports = [Support("a", decoded[0], support.mask, support.traits), Support("b", decoded[1], partial, support.traits)]
    session = per_object._session(supports)
    frame = encode_images(per_object.predictor, [decoded[2]])[0]
    logits = session.track(frame)

    started_at_query = _run_official(official, tmp_path / "video", prompts, support.trait_ids, start=2)
    _assert_same(logits, logits_to_label_map(logits, session.obj_trait_ids, frame.size), started_at_query[2])

    default_start = _run_official(official, tmp_path / "video", prompts, support.trait_ids)
    k = session.obj_trait_ids.index(dropped)
    kept = [i for i in range(len(session.obj_trait_ids)) if i != k]
    # Traits drawn on every support agree with the default start too; the undrawn one does not.
    torch.testing.assert_close(logits[kept], default_start[2][0][kept], atol=ATOL, rtol=0)
    assert (logits[k] - default_start[2][0][k]).abs().max() > 10 * ATOL


def _assert_same_decisions(batched: np.ndarray, single: np.ndarray, single_logits: torch.Tensor, tie: float = TIE) -> None:
    """Label maps equal except on pixels whose decision is a float tie in ``single_logits``
    (top two logits, or the top logit and SAM 2's threshold 0, closer than ``tie``)."""
    differ = batched != single
    margin = decision_margin(single_logits, single.shape)
    assert not (differ & (margin >= tie)).any(), "label maps differ where the decision is not a tie"
    assert differ.mean() < 1e-3


@pytest.mark.parametrize("chain", [False, True], ids=["pairwise", "chain"])
def test_batched_traits_equal_one_trait_at_a_time(tracker, synthetic, references, chain):
    group = synthetic.groups[1]  # three traits
    supports = references[group]
    frames = encode_images(tracker.predictor, [img for img, _ in _specimens(synthetic, group, 3)])
    batched, single = (
        TrackingSession(
            tracker.predictor, tracker._encode_supports(supports), [s.mask for s in supports], supports[0].trait_ids,
            total_frames=len(supports) + len(frames), batch_traits=b,
        )
        for b in (True, False)
    )
    assert [len(idx) for idx, _ in batched._groups] == [3] and len(single._groups) == 3
    for i, frame in enumerate(frames):
        frame_idx = len(supports) + i if chain else None
        a, b = (session.track_frame(frame, frame_idx, keep_memory=chain) for session in (batched, single))
        for name in ("logits", "object_score", "predicted_iou"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=TIE, rtol=0)
        ids = single.obj_trait_ids
        _assert_same_decisions(
            logits_to_label_map(a.logits, ids, frame.size), logits_to_label_map(b.logits, ids, frame.size), b.logits
        )


def test_several_queries_per_call_equal_one_at_a_time(tracker, synthetic, references):
    """Pairwise queries x traits in one call: each query's output is what it gets alone,
    and what SAM 2's own frame step (its memory gathered afresh) gives."""
    group = synthetic.groups[1]
    supports = references[group]
    frames = encode_images(tracker.predictor, [img for img, _ in _specimens(synthetic, group, 2)])
    session = tracker._session(supports)
    for frame, together in zip(frames, session.track_frames(frames)):
        alone = session.track_frames([frame])[0]
        own_step = session.track_frame(frame, session.num_cond)
        for name in ("logits", "object_score", "predicted_iou"):
            torch.testing.assert_close(getattr(together, name), getattr(alone, name), atol=TIE, rtol=0)
            torch.testing.assert_close(getattr(alone, name), getattr(own_step, name), atol=TIE, rtol=0)


def test_batched_traits_with_an_undrawn_trait(tracker, per_object, synthetic, references):
    """A trait missing from one support has other memories: it runs in its own batch."""
    group = synthetic.groups[1]
    support = references[group][0]
    (second_img, second_mask), (query, _) = _specimens(synthetic, group, 2)
    partial = np.where(second_mask == support.trait_ids[0], 0, second_mask).astype(np.uint8)
    supports = [support, Support("b", second_img, partial, support.traits)]
    session = tracker._session(supports)
    assert sorted(len(idx) for idx, _ in session._groups) == [1, 2]
    frame = encode_images(tracker.predictor, [query])[0]
    torch.testing.assert_close(session.track(frame), per_object._session(supports).track(frame), atol=TIE, rtol=0)


def _is_channels_last(predictor) -> bool:
    conv = predictor.image_encoder.trunk.patch_embed.proj.weight
    return conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def _is_compiled(predictor) -> bool:
    return hasattr(predictor.image_encoder.forward, "_torchdynamo_orig_callable")


#: Each encoder option and how to see that a built predictor has it.
ENCODER_OPTIONS = {"channels_last": _is_channels_last, "compile_encoder": _is_compiled}


@pytest.mark.parametrize("option", [
    "channels_last",
    # Compiling the encoder costs 15-40 s per process on a 2-core CPU.
    pytest.param("compile_encoder", marks=pytest.mark.slow),
])
def test_encoder_options_give_the_same_masks(tracker, synthetic, references, option):
    """``segmentation.channels_last`` (the memory layout of the encoder's convolutions) and
    ``segmentation.compile_encoder`` (SAM 2's compiled image encoder) change how the encoder
    runs, not what it computes: features equal within float tolerance, label maps equal
    but for ties."""
    from sst_search.builder import tracker_from_config
    from sst_search.config import SegmentationConfig

    seg = SegmentationConfig(weights="random", image_size=tracker.predictor.image_size, device="cpu", **{option: True})
    fast = tracker_from_config(seg)
    applied = ENCODER_OPTIONS[option]
    assert applied(fast.predictor) and not applied(tracker.predictor)
    group = synthetic.groups[1]
    supports = references[group][:1]
    images = [img for img, _ in _specimens(synthetic, group, 1)]
    frames = [encode_images(t.predictor, images) for t in (tracker, fast)]
    for a, b in zip(*frames):
        for x, y in zip(a.backbone["backbone_fpn"], b.backbone["backbone_fpn"]):
            torch.testing.assert_close(y, x, atol=ATOL, rtol=0)
    sessions = [t._session(supports) for t in (tracker, fast)]
    default_out, fast_out = (s.track_frames(f) for s, f in zip(sessions, frames))
    ids = sessions[0].obj_trait_ids
    for frame, a, b in zip(frames[0], fast_out, default_out):
        torch.testing.assert_close(a.logits, b.logits, atol=ATOL, rtol=0)
        _assert_same_decisions(
            logits_to_label_map(a.logits, ids, frame.size), logits_to_label_map(b.logits, ids, frame.size), b.logits
        )
