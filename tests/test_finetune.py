"""OC-CCL fine-tuning with the real SAM 2.1 hiera-t architecture (random weights, the tests' input size)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sst_search.builder import build_tracker
from sst_search.finetune import (
    AdapterError,
    AdapterMismatchError,
    FinetuneConfig,
    adapter_sha256,
    apply_adapter,
    base_fingerprint,
    cycle_loss,
    finetune,
    load_adapter,
    round_trip,
    save_adapter,
)
from sst_search.finetune.adapter import FROZEN_PREFIXES, prepare_trainable
from sst_search.finetune.roundtrip import (
    condition,
    encode_backbone,
    frame_features,
    resize_masks,
    track,
)
from sst_search.images import load_image
from sst_search.sam2_predictor import encode_images
from sst_search.tracking import TrackingSession
from tests.fixtures import TEST_IMAGE_SIZE

SIZE = TEST_IMAGE_SIZE
MODEL = "sam2.1-hiera-tiny"
#: Training steps of the shared run: the fewest (at a higher learning rate) whose loss falls
#: clearly, since each step costs a SAM 2 round trip on CPU.
STEPS = 6


def _tracker(**kw):
    return build_tracker(kw.pop("model", MODEL), kw.pop("weights", "random"), image_size=kw.pop("image_size", SIZE), device="cpu", **kw)


@pytest.fixture(scope="module")
def group_data(synthetic, references):
    group = synthetic.groups[0]
    files = sorted((synthetic.root / "images" / group).glob("*.png"))[:3]
    return references[group][0], [(f.stem, load_image(f)) for f in files]


@pytest.fixture(scope="module")
def trained(group_data, tmp_path_factory):
    support, queries = group_data
    tracker = _tracker()
    config = FinetuneConfig(steps=STEPS, lr=6e-3, augment=False, seed=0)
    result = finetune(tracker, support, [img for _, img in queries], config)
    path = tmp_path_factory.mktemp("adapter") / "group.adapter.pt"
    save_adapter(tracker, path, config.model_dump())
    return tracker, result, path


def _logits(tracker, support, image) -> torch.Tensor:
    """What the tracker's pairwise session outputs for one query (before the label map)."""
    session = TrackingSession(tracker.predictor, encode_images(tracker.predictor, [support.image]), [support.mask], support.trait_ids)
    return session.track(encode_images(tracker.predictor, [image])[0])


def _one_backward(tracker, support, image) -> None:
    model = tracker.predictor
    model.zero_grad(set_to_none=True)
    target = resize_masks(np.stack([support.mask == t for t in support.trait_ids]), SIZE, model.device)
    frames = [frame_features(model, encode_backbone(model, im), len(support.trait_ids)) for im in (support.image, image)]
    cycle_loss(round_trip(model, frames[0], target, frames[1]), target)["total"].backward()


def test_cycle_loss_goes_down(trained):
    _, result, _ = trained
    cycle = [h["cycle"] for h in result.history]
    assert len(cycle) == STEPS and np.isfinite(cycle).all()
    half = STEPS // 2
    assert np.mean(cycle[half:]) < np.mean(cycle[:half]) - 0.01, cycle
    assert result.history[-1]["total"] < result.history[0]["total"]


def test_only_lora_parameters_get_gradients(trained, group_data):
    tracker, _, _ = trained
    support, queries = group_data
    _one_backward(tracker, support, queries[0][1])
    params = dict(tracker.predictor.named_parameters())
    lora = {n for n in params if "lora_" in n}
    assert lora and all(n.startswith(("memory_attention.", "sam_mask_decoder.")) for n in lora)
    assert {n for n, p in params.items() if p.grad is not None} == lora
    assert all(params[n].grad.abs().sum() > 0 for n in lora if "lora_B" in n)
    assert all(p.grad is None and not p.requires_grad for n, p in params.items() if n.startswith("image_encoder."))


def test_gradient_flows_back_through_the_soft_query_mask(trained, group_data):
    tracker, _, _ = trained
    support, queries = group_data
    model = tracker.predictor
    target = resize_masks(np.stack([support.mask == t for t in support.trait_ids]), SIZE, model.device)
    sup, qry = (frame_features(model, encode_backbone(model, im), len(support.trait_ids)) for im in (support.image, queries[0][1]))
    forward = track(model, qry, condition(model, sup, target, soft=False))["logits"].detach()
    grads = {}
    for soft in (True, False):  # a hard mask reaches the loss only through the object pointer
        logits = forward.clone().requires_grad_()
        back = track(model, sup, condition(model, qry, torch.sigmoid(logits), soft=soft))
        torch.nn.functional.binary_cross_entropy_with_logits(back["logits"], target).backward()
        grads[soft] = logits.grad
    assert grads[True].abs().sum() > 0
    assert not torch.allclose(grads[True], grads[False])  # the memory encoder path carries gradient too


def test_full_finetuning_trains_memory_attention_and_decoder_only(group_data):
    support, queries = group_data
    tracker = _tracker()
    trainable = prepare_trainable(tracker, "full")
    _one_backward(tracker, support, queries[0][1])
    params = dict(tracker.predictor.named_parameters())
    expected = {
        n for n in params if n.startswith(("memory_attention.", "sam_mask_decoder.")) and not n.startswith(FROZEN_PREFIXES)
    }
    assert {id(p) for p in trainable} == {id(params[n]) for n in expected}
    assert {n for n, p in params.items() if p.grad is not None} == expected
    nonzero = [n for n in expected if params[n].grad.abs().sum() > 0]
    assert len(nonzero) > 0.8 * len(expected)


def test_adapter_file_holds_only_trained_tensors(trained, tracker):
    base = tracker  # the session's SAM 2: the base the adapter was trained on, built the same way
    tracker, _, path = trained
    payload = load_adapter(path)
    assert payload["kind"] == "lora" and payload["lora"]["rank"] == 4
    assert payload["state"] and all("lora_" in n for n in payload["state"])
    assert payload["config"]["steps"] == STEPS and payload["config"]["augment"] is False
    assert payload["base"] == base_fingerprint(base.predictor, MODEL, "random")
    assert payload["base"]["weights_sha256"] == "random" and payload["base"]["image_size"] == SIZE
    assert tracker.fingerprint["adapter_sha256"] == adapter_sha256(path)


def test_loaded_adapter_reproduces_predictions_and_changes_them(trained, group_data, tracker):
    base = tracker  # the session's SAM 2, built as _tracker() builds it, without an adapter
    tracker, _, path = trained
    support, queries = group_data
    loaded = _tracker(adapter=path)
    assert loaded.fingerprint == {**base.fingerprint, "adapter_sha256": adapter_sha256(path)}
    assert base.fingerprint["adapter_sha256"] is None
    for a, b in zip(tracker.segment([support], queries), loaded.segment([support], queries)):
        assert a.error is None and a.query_id == b.query_id
        np.testing.assert_array_equal(a.label_map, b.label_map)
    image = queries[0][1]
    adapted = _logits(loaded, support, image)
    torch.testing.assert_close(adapted, _logits(tracker, support, image), rtol=0, atol=0)
    assert (adapted - _logits(base, support, image)).abs().max() > 1e-3


@pytest.mark.parametrize("other", ["image_size", pytest.param("model", marks=pytest.mark.slow),  # each builds another SAM 2
                                   pytest.param("weights_sha256", marks=pytest.mark.slow)])
def test_adapter_for_another_base_is_refused(trained, other, tmp_path, tracker):
    _, _, path = trained
    if other == "image_size":
        kw = {"image_size": 64}
    elif other == "model":
        kw = {"model": "sam2.1-hiera-small"}
    else:  # the same values saved as a checkpoint file: a different weights digest
        ckpt = tmp_path / "ckpt.pt"
        torch.save({"model": tracker.predictor.state_dict()}, ckpt)
        kw = {"weights": str(ckpt)}
    with pytest.raises(AdapterMismatchError) as err:
        _tracker(adapter=path, **kw)
    assert str(path) in str(err.value) and other in err.value.differing and other in str(err.value)
    assert err.value.expected[other] != err.value.found[other]
    target = _tracker(**kw)
    with pytest.raises(AdapterMismatchError):
        apply_adapter(target, path)
    assert not any("lora_" in n for n, _ in target.predictor.named_parameters())
    assert target.fingerprint["adapter_sha256"] is None


def test_unreadable_adapter_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not an adapter")
    with pytest.raises(AdapterError, match="bad.pt"):
        apply_adapter(_tracker(), bad)


@pytest.mark.slow  # two fine-tuning runs through the CLI; fine-tuning and adapters are tested quickly above
def test_cli_is_deterministic_and_feeds_segment(synthetic, tmp_path):
    from sst_search.cli import app

    group = synthetic.groups[1]
    ref = synthetic.references / group
    args = [
        "finetune", "--support", str(ref / f"{group}-ref.png"), "--support-mask", str(ref / f"{group}-ref.mask.png"),
        "--traits", str(ref / "traits.yaml"), "--queries", str(synthetic.root / "images" / group),
        "--steps", "3", "--weights", "random", "--image-size", str(SIZE), "--device", "cpu", "--quiet",
    ]  # fmt: skip
    runner = CliRunner()
    outs = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for out in outs:
        res = runner.invoke(app, [*args, "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert "RANDOM" in res.output and "sha256" in res.output
    a, b = (load_adapter(p)["state"] for p in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    query = sorted((synthetic.root / "images" / group).glob("*.png"))[0]
    seg = [
        "segment", str(query), "--support", str(ref / f"{group}-ref.png"), "--support-mask", str(ref / f"{group}-ref.mask.png"),
        "--weights", "random", "--device", "cpu", "--quiet", "--adapter", str(outs[0]),
    ]  # fmt: skip
    ok = runner.invoke(app, [*seg, "--image-size", str(SIZE), "--out", str(tmp_path / "seg")])
    assert ok.exit_code == 0, ok.output
    wrong = runner.invoke(app, [*seg, "--image-size", "64", "--out", str(tmp_path / "seg2")])
    assert wrong.exit_code == 2 and "image_size" in wrong.output
