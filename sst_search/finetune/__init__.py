"""One-shot cycle-consistent fine-tuning (OC-CCL) of the SST tracker, and its adapters."""

from ..config import FinetuneConfig
from .adapter import (
    AdapterError,
    AdapterMismatchError,
    adapter_sha256,
    apply_adapter,
    base_fingerprint,
    load_adapter,
    save_adapter,
)
from .roundtrip import RoundTrip, cycle_loss, round_trip
from .train import FinetuneResult, finetune

__all__ = [
    "AdapterError",
    "AdapterMismatchError",
    "RoundTrip",
    "FinetuneConfig",
    "FinetuneResult",
    "adapter_sha256",
    "apply_adapter",
    "base_fingerprint",
    "cycle_loss",
    "finetune",
    "load_adapter",
    "round_trip",
    "save_adapter",
]
