"""Finding, downloading and verifying model checkpoints: SAM 2's and open_clip's, here and
nowhere else, so every model records exactly which bytes produced its outputs.

Resolution order for a SAM 2 checkpoint: an explicit path, ``$SST_SEARCH_SAM2_CHECKPOINT``,
the cache directory (``~/.cache/sst-search`` or ``$SST_SEARCH_CACHE``), then a download when
allowed. Downloads go to a temporary file, are hashed while streaming and only renamed into
place once complete and verified, so an interrupted download never leaves a file that looks
valid. ``"random"`` is a first-class choice: it builds the real architecture with random
weights for tests and smoke runs, and every output records it.

An open_clip checkpoint (:func:`resolve_open_clip_weights`) is ``"random"``, a path, or, for
``None``, the model's published weights from the Hugging Face cache, downloaded when online.
An offline miss becomes an :class:`~sst_search.errors.EmbedderError` that says what to pass
instead, and it fails at once: the cache lookup never touches the network when
``HF_HUB_OFFLINE`` is set. A file from the hub is checked against the sha256 the hub
published for it (the Git LFS object id, which huggingface_hub names the cached file by), so a
truncated or altered download is refused instead of silently producing other vectors; a model
with a digest pinned here (:data:`PINNED_SHA256`) must match that pin as well.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from .errors import EmbedderError

RANDOM = "random"
CHECKPOINT_ENV = "SST_SEARCH_SAM2_CHECKPOINT"
CACHE_ENV = "SST_SEARCH_CACHE"
ALLOW_DOWNLOAD_ENV = "SST_SEARCH_ALLOW_DOWNLOAD"

_SAM2_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"


@dataclass(frozen=True)
class Sam2ModelSpec:
    """One SAM 2.1 model: how to build it and where its official checkpoint lives.

    ``sha256`` pins the official file when known. Meta does not publish digests beside the
    checkpoints, so an unpinned model is pinned on first download (the digest is stored beside
    the cached file) and every later load is verified against that pin.
    """

    name: str
    config: str
    checkpoint: str
    url: str
    sha256: str | None = None


SAM2_MODELS: dict[str, Sam2ModelSpec] = {
    spec.name: spec
    for spec in (
        Sam2ModelSpec("sam2.1-hiera-tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt", f"{_SAM2_BASE_URL}/sam2.1_hiera_tiny.pt"),
        Sam2ModelSpec("sam2.1-hiera-small", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt", f"{_SAM2_BASE_URL}/sam2.1_hiera_small.pt"),
        Sam2ModelSpec("sam2.1-hiera-base-plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt", f"{_SAM2_BASE_URL}/sam2.1_hiera_base_plus.pt"),
        Sam2ModelSpec("sam2.1-hiera-large", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt", f"{_SAM2_BASE_URL}/sam2.1_hiera_large.pt"),
    )
}


class WeightsError(RuntimeError):
    """A checkpoint could not be resolved; the message says which file, from where, and what to do."""


@dataclass(frozen=True)
class ResolvedWeights:
    """What a model was built from; ``sha256`` is ``"random"`` for random initialisation.
    ``source`` says where an open_clip checkpoint came from (hub page, URL or path)."""

    path: Path | None
    sha256: str
    source: str | None = None

    @property
    def is_random(self) -> bool:
        return self.sha256 == RANDOM


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sst-search")


def get_model_spec(name: str) -> Sam2ModelSpec:
    try:
        return SAM2_MODELS[name]
    except KeyError:
        raise WeightsError(f"unknown SAM 2 model {name!r}; choose one of {sorted(SAM2_MODELS)}") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _pin_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify(path: Path, expected: str | None) -> str:
    """Hash ``path`` and check it against ``expected`` or the pin recorded at download."""
    digest = sha256_file(path)
    pin = _pin_path(path)
    if expected is None and pin.exists():
        expected = pin.read_text().strip()
    if expected is not None and digest != expected:
        raise WeightsError(
            f"{path}: checksum mismatch (sha256 {digest}, expected {expected}); "
            "the file is corrupt or not the official checkpoint - delete it and download again"
        )
    return digest


def download(url: str, dest: Path, expected_sha256: str | None = None, quiet: bool = False) -> str:
    """Stream ``url`` to ``dest`` atomically, verifying the digest before the final rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=quiet) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
        digest = h.hexdigest()
        if expected_sha256 is not None and digest != expected_sha256:
            raise WeightsError(f"{url}: downloaded file has sha256 {digest}, expected {expected_sha256}")
        os.replace(tmp, dest)
        _pin_path(dest).write_text(digest + "\n")
        return digest
    except OSError as exc:
        raise WeightsError(
            f"could not download {url} to {dest}: {exc}. Download it by hand and put it at {dest}, "
            f"or pass its path explicitly"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def resolve_sam2_weights(
    model: str,
    weights: str | Path | None = None,
    allow_download: bool | None = None,
    quiet: bool = False,
) -> ResolvedWeights:
    """Find the checkpoint for ``model``; see the module docstring for the order.

    ``allow_download`` defaults to ``$SST_SEARCH_ALLOW_DOWNLOAD`` (on unless set to 0), so
    offline batch jobs can forbid network access and get an actionable error instead.
    """
    spec = get_model_spec(model)
    if weights is not None and str(weights) == RANDOM:
        return ResolvedWeights(None, RANDOM)
    candidate = weights or os.environ.get(CHECKPOINT_ENV)
    if candidate:
        path = Path(candidate).expanduser()
        if not path.is_file():
            source = "--weights" if weights else f"${CHECKPOINT_ENV}"
            raise WeightsError(f"{path}: checkpoint given by {source} does not exist")
        return ResolvedWeights(path, verify(path, spec.sha256))
    cached = cache_dir() / spec.checkpoint
    if cached.is_file():
        return ResolvedWeights(cached, verify(cached, spec.sha256))
    if allow_download is None:
        allow_download = os.environ.get(ALLOW_DOWNLOAD_ENV, "1") not in ("0", "false", "no")
    if not allow_download:
        raise WeightsError(
            f"SAM 2 checkpoint {spec.checkpoint} for {model} is not available offline. "
            f"Download {spec.url} and put it at {cached} (or set ${CHECKPOINT_ENV}, or pass "
            f"--weights PATH); use --weights random only for smoke tests"
        )
    return ResolvedWeights(cached, download(spec.url, cached, spec.sha256, quiet=quiet))


#: sha256 of a hub checkpoint known here, by hub id. Neither BioCLIP's nor BioCLIP 2's digest
#: could be read from a public source this code was written against (the hub shows it only
#: on the file's page), so they are not pinned: inventing one would refuse the real file.
#: The hub's own digest is checked on every load (:func:`_verify_hub_file`), and every
#: index records the sha256 of the weights its vectors came from.
PINNED_SHA256: dict[str, str] = {}


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; read it per call instead.
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=None)
def _hub_unreachable(endpoint: str, timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (None when it can), asked once per process:
    huggingface_hub would otherwise retry every file for most of a minute, logging each try."""
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"{parsed.hostname}:{port} is unreachable ({exc.strerror or type(exc).__name__})"
    return None


def _hub_checkpoint(repo_id: str, filename: str | None = None) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    offline = _offline()
    unreachable = None if offline else _hub_unreachable(constants.ENDPOINT)
    offline = offline or unreachable is not None  # the cache may still hold the file
    for name in names:
        try:
            return Path(hf_hub_download(repo_id=repo_id, filename=name, local_files_only=offline))
        except Exception as exc:  # noqa: BLE001 - every hub failure means "not available"
            last = exc
    if unreachable:
        reason = f"not in the Hugging Face cache and {unreachable}"
    elif offline:
        reason = "not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    else:
        reason = f"{type(last).__name__}: {last}"
    raise FileNotFoundError(f"none of {names} could be loaded ({reason})")


def resolve_open_clip_weights(
    label: str, weights: str | Path | None, hub_id: str | None = None, pretrained_tag: str | None = None,
    arch: str | None = None,
) -> ResolvedWeights:
    """Find and verify the checkpoint of an open_clip model; see the module docstring for the rules.

    ``label`` names the model in messages. ``hub_id`` follows open_clip's pretrained-config
    convention: ``org/repo/`` for the repository's default open_clip weights file,
    ``org/repo/file`` for a named file; without it, ``pretrained_tag`` names one of open_clip's
    tags for ``arch``.
    """
    if weights is not None and str(weights) == RANDOM:
        return ResolvedWeights(None, RANDOM, RANDOM)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise EmbedderError(f"{path}: {label} checkpoint does not exist")
        return ResolvedWeights(path, sha256_file(path), str(path))
    if hub_id is None and pretrained_tag is not None:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(arch, pretrained_tag)
        if not cfg:
            raise EmbedderError(
                f"open_clip has no pretrained tag {pretrained_tag!r} for {arch}; "
                f"known tags: {open_clip.list_pretrained_tags_by_model(arch)}"
            )
        hub_id = cfg.get("hf_hub") or None
        url = cfg.get("url") or None
    else:
        url = None
    where = f"https://huggingface.co/{hub_id.rstrip('/')}" if hub_id else url
    try:
        if hub_id:
            repo_id, filename = os.path.split(hub_id)
            path = _hub_checkpoint(repo_id, filename or None)
        elif url and not _offline():
            from open_clip.pretrained import download_pretrained_from_url

            path = Path(download_pretrained_from_url(url))
        else:
            raise FileNotFoundError("offline (HF_HUB_OFFLINE is set) and the file is not cached")
    except Exception as exc:  # noqa: BLE001
        raise EmbedderError(
            f"{label} weights are not available ({where}): {exc}. Download them while online "
            f"(they are cached by huggingface_hub), or pass --embedder-weights PATH to a checkpoint "
            f"file, or use the weight-free --embedder color-pattern (--embedder-weights random: smoke tests only)"
        ) from None
    digest = sha256_file(path)
    _verify_hub_file(label, path, digest, PINNED_SHA256.get(hub_id.rstrip("/")) if hub_id else None)
    return ResolvedWeights(path, digest, where)


def _verify_hub_file(label: str, path: Path, digest: str, pinned: str | None) -> None:
    """Refuse a cached hub file whose bytes are not what the hub published (its cache blob is
    named by the LFS sha256) or not the pinned digest."""
    published = Path(path).resolve().name
    expected = [d for d in (pinned, published if re.fullmatch(r"[0-9a-f]{64}", published) else None) if d]
    for want in expected:
        if digest != want:
            raise EmbedderError(f"{path}: {label} checkpoint has sha256 {digest}, expected {want}; the download is "
                                "corrupt or altered: delete it from the Hugging Face cache and download it again")
