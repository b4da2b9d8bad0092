"""Finding, downloading and verifying model checkpoints.

Resolution order for a SAM 2 checkpoint: an explicit path, ``$SST_SEARCH_SAM2_CHECKPOINT``,
the cache directory (``~/.cache/sst-search`` or ``$SST_SEARCH_CACHE``), then a download when
allowed. Downloads go to a temporary file, are hashed while streaming and only renamed into
place once complete and verified, so an interrupted download never leaves a file that looks
valid. ``"random"`` is a first-class choice: it builds the real architecture with random
weights for tests and smoke runs, and every output records it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

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
    """What a model was built from; ``sha256`` is ``"random"`` for random initialisation."""

    path: Path | None
    sha256: str

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
