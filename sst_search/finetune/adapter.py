"""Which SAM 2 parameters fine-tuning trains, and the adapter files that carry them.

Two choices: LoRA (``peft``) on the attention projections of memory attention and the
mask decoder, or full fine-tuning of those two modules. The mask decoder's ``conv_s0`` /
``conv_s1`` stay frozen even in full mode: SAM 2 applies them inside ``forward_image``, so
they are part of the cached image features, which must not depend on an adapter.

An adapter file holds only the trained tensors, the fingerprint of the base model they
were trained on and the training config. A fine-tuned delta applied to another base model
would silently produce garbage, so loading checks the fingerprint and refuses a mismatch.
Callers record :func:`adapter_sha256` next to the base model's fingerprint.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..sam2_predictor import ADAPTABLE_MODULES, IMAGE_FEATURE_PARAMETERS
from ..weights import sha256_file

FORMAT = "sst-search-adapter"
VERSION = 1
KINDS = ("lora", "full")
#: The submodules fine-tuning adapts: every one that leaves the cached image features alone.
ADAPTED_MODULES = ADAPTABLE_MODULES
#: Attention projections of SAM 2's ``Attention``/``RoPEAttention`` (both adapted modules).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
#: Parts of the adapted modules that stay frozen even in full mode: the image-feature path.
FROZEN_PREFIXES = IMAGE_FEATURE_PARAMETERS
#: Attribute on the predictor recording what was applied to it.
ADAPTER_ATTR = "sst_adapter"


class AdapterError(ValueError):
    """An adapter file is unreadable, malformed or cannot be applied."""


class AdapterMismatchError(AdapterError):
    """An adapter was trained on a different base model than the one it is applied to."""

    def __init__(self, path: str | Path, expected: dict, found: dict):
        self.path, self.expected, self.found = Path(path), expected, found
        self.differing = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        super().__init__(
            f"{path}: adapter belongs to another base model (differs in {', '.join(self.differing)}); "
            f"expected base {expected}, found {found}. Build the tracker with the model, weights "
            "and image size the adapter was trained with, or fine-tune a new adapter"
        )


def _predictor(target: Any) -> nn.Module:
    return getattr(target, "predictor", target)


def _is_lora_param(name: str) -> bool:
    return "lora_" in name


def _base_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


def modules_sha256(predictor: nn.Module) -> str:
    """Hash of the names, shapes and values of the adapted modules' base parameters."""
    h = hashlib.sha256()
    for module in ADAPTED_MODULES:
        for name, p in getattr(predictor, module).named_parameters():
            if _is_lora_param(name):
                continue
            t = p.detach().float().cpu().contiguous()
            h.update(f"{module}.{_base_name(name)}:{tuple(t.shape)}\n".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def base_fingerprint(predictor: nn.Module, model: str, weights_sha256: str) -> dict:
    """What an adapter must match: model name, checkpoint digest, input size, base values.

    Once an adapter is applied the base values may be gone (full fine-tuning overwrites
    them), so the fingerprint taken before is reused.
    """
    applied = getattr(predictor, ADAPTER_ATTR, None)
    if applied is not None:
        return dict(applied["base"])
    return {
        "model": model,
        "weights_sha256": weights_sha256,
        "image_size": int(predictor.image_size),
        "modules_sha256": modules_sha256(predictor),
    }


def prepare_trainable(target: Any, kind: str, rank: int = 4, alpha: float | None = None) -> list[nn.Parameter]:
    """Freeze SAM 2, add LoRA or unfreeze the adapted modules, and return what to train.

    ``target`` is an ``SSTTracker``; its base fingerprint is recorded before anything changes.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; choose one of {KINDS}")
    predictor = _predictor(target)
    if getattr(predictor, ADAPTER_ATTR, None) is not None:
        raise AdapterError("this model already carries an adapter; build a fresh tracker to train another")
    base = base_fingerprint(predictor, target.model, target.weights.sha256)
    lora = _lora_spec(rank, alpha) if kind == "lora" else None
    if lora is not None:
        _inject_lora(predictor, lora)
    predictor.requires_grad_(False)
    names = _trainable_names(predictor, kind)
    params = dict(predictor.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    setattr(predictor, ADAPTER_ATTR, {"base": base, "kind": kind, "lora": lora, "names": names})
    target.adapter_sha256 = "unsaved"
    return [params[n] for n in names]


def _lora_spec(rank: int, alpha: float | None) -> dict:
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    return {"rank": int(rank), "alpha": float(alpha if alpha is not None else rank), "targets": list(LORA_TARGETS)}


def _inject_lora(predictor: nn.Module, lora: dict) -> None:
    # peft imports transformers (seconds): loaded only where a LoRA is built, not by every
    # process that imports the fine-tuning package or reads an adapter's fingerprint.
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=lora["rank"], lora_alpha=lora["alpha"], target_modules=list(lora["targets"]), lora_dropout=0.0, bias="none"
    )
    for module in ADAPTED_MODULES:
        inject_adapter_in_model(config, getattr(predictor, module))


def _trainable_names(predictor: nn.Module, kind: str) -> list[str]:
    names = []
    for name, _ in predictor.named_parameters():
        if not name.startswith(tuple(f"{m}." for m in ADAPTED_MODULES)):
            continue
        if kind == "lora" and _is_lora_param(name):
            names.append(name)
        elif kind == "full" and not name.startswith(FROZEN_PREFIXES):
            names.append(name)
    return names


def save_adapter(target: Any, path: str | Path, config: dict | None = None) -> str:
    """Write the trained tensors of ``target`` (atomically) and return the file's sha256."""
    predictor = _predictor(target)
    applied = getattr(predictor, ADAPTER_ATTR, None)
    if applied is None:
        raise AdapterError("this model has no adapter to save; fine-tune it first")
    params = dict(predictor.named_parameters())
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": applied["kind"],
        "lora": applied["lora"],
        "base": applied["base"],
        "config": dict(config or {}),
        "state": {n: params[n].detach().cpu().clone() for n in applied["names"]},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    digest = adapter_sha256(path)
    if hasattr(target, "predictor"):
        target.adapter_sha256 = digest
    return digest


def adapter_sha256(path: str | Path) -> str:
    """The adapter's identity for fingerprints: the digest of the file's bytes."""
    return sha256_file(Path(path))


def load_adapter(path: str | Path) -> dict:
    """Read and validate an adapter file (tensors only; no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: adapter file does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise AdapterError(f"{path}: not a readable adapter file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise AdapterError(f"{path}: not an {FORMAT} file")
    if payload.get("version") != VERSION:
        raise AdapterError(f"{path}: adapter format version {payload.get('version')} is not supported (need {VERSION})")
    if payload.get("kind") not in KINDS:
        raise AdapterError(f"{path}: unknown adapter kind {payload.get('kind')!r}")
    return payload


def apply_adapter(
    target: Any, path: str | Path, *, model: str | None = None, weights_sha256: str | None = None
) -> str:
    """Load the adapter at ``path`` into an ``SSTTracker`` (or a bare predictor, given the
    ``model`` name and ``weights_sha256`` it was built from) and return the file's sha256.

    Raises :class:`AdapterMismatchError` when the adapter was trained on another base model.
    """
    path = Path(path)
    predictor = _predictor(target)
    if hasattr(target, "predictor"):
        model, weights_sha256 = target.model, target.weights.sha256
    elif model is None or weights_sha256 is None:
        raise ValueError("applying an adapter to a bare predictor needs its model name and weights_sha256")
    payload = load_adapter(path)
    if getattr(predictor, ADAPTER_ATTR, None) is not None:
        raise AdapterError(f"{path}: the model already carries an adapter; build a fresh tracker")
    found = base_fingerprint(predictor, model, weights_sha256)
    if payload["base"] != found:
        raise AdapterMismatchError(path, payload["base"], found)
    if payload["kind"] == "lora":
        _inject_lora(predictor, payload["lora"])
    params = dict(predictor.named_parameters())
    state = payload["state"]
    unknown = sorted(set(state) - set(params))
    bad = sorted(n for n in set(state) & set(params) if state[n].shape != params[n].shape)
    if unknown or bad:
        raise AdapterError(f"{path}: tensors do not fit this model (unknown {unknown[:5]}, wrong shape {bad[:5]})")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    setattr(
        predictor,
        ADAPTER_ATTR,
        {"base": found, "kind": payload["kind"], "lora": payload["lora"], "names": sorted(state)},
    )
    digest = adapter_sha256(path)
    if hasattr(target, "predictor"):
        target.adapter_sha256 = digest
    return digest
