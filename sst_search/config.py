"""Run configuration: YAML defaults (``configs/default.yaml``) validated by pydantic.

Every default is stated here and nowhere else: each command loads a config file
(:func:`load_config`), lays its command-line options over it (:func:`apply_overrides`) and
hands the result to :mod:`sst_search.builder`, so a CLI flag, a config key and a Python
caller cannot disagree about, say, the model name. Only settings that change results enter
the index's fingerprints (``indexer.plan``); batch sizes, engines and worker counts do not,
so moving a job to Ray or a bigger batch never re-indexes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Model = TypeVar("Model", bound=BaseModel)
_reported: set[str] = set()


Mode = Literal["pairwise", "chain"]
OrientationCriterion = Literal["object_score", "cycle"]
#: Propagation modes: every query tracked from the supports alone, or queries as one chain.
MODES: tuple[str, ...] = get_args(Mode)
#: What ``orientation="auto"`` keeps: the view with the highest mean object score or cycle IoU.
ORIENTATION_CRITERIA: tuple[str, ...] = get_args(OrientationCriterion)


class SegmentationConfig(_Strict):
    model: str = "sam2.1-hiera-tiny"
    weights: str | None = Field(None, description="checkpoint path, 'random', or None to resolve/download")
    adapter: str | None = Field(None, description="fine-tuned adapter file (sst-search finetune)")
    image_size: int = 1024
    mode: Mode = "pairwise"
    quality: bool = Field(False, description="cycle-consistency quality score per mask")
    orientation: Literal[0, 90, 180, 270, "auto"] = Field(
        0, description="degrees to turn queries before tracking, or 'auto' to try all four per query"
    )
    mirror: bool = Field(False, description="flip queries left-right before turning them; with 'auto' try both")
    orientation_by: OrientationCriterion = Field(
        "object_score", description="what 'auto' keeps: highest mean object score, or cycle IoU (slower)"
    )
    batch_size: int | None = Field(None, description="queries per image-encoder batch (default: 8 on CUDA, 1 on CPU)")
    query_batch: int | None = Field(
        None, ge=1, description="pairwise queries per tracking call, queries x traits as one batch (default: 4 on CUDA, 1 on CPU)"
    )
    max_chain_length: int = Field(256, ge=1, description="chain mode: queries per pseudo-video")
    device: str | None = None
    channels_last: bool = Field(
        False, description="image encoder convolutions in channels-last layout: the same masks, speed depends on "
        "the machine (bench/bench_encoder.py)"
    )
    compile_encoder: bool = Field(
        False, description="SAM 2's compile_image_encoder (torch.compile, max-autotune): the same masks but for float "
        "ties; tens of seconds of compilation per process and batch size (bench/bench_encoder.py)"
    )


class EmbeddingConfig(_Strict):
    embedder: str = "bioclip"
    model_name: str | None = Field(None, description="open_clip model name (embedder 'clip')")
    pretrained: str | None = Field(None, description="open_clip pretrained tag (embedder 'clip')")
    weights: str | None = Field(None, description="checkpoint path or 'random'")


class PlanConfig(_Strict):
    """When a filtered search post-filters, uses a FAISS ID selector or scans the admitted
    vectors exactly (see :mod:`sst_search.vector_search.planner`); the defaults keep all three plans
    near one FAISS search in cost."""

    postfilter_min_fraction: float = Field(0.05, description="post-filter when at least this share of items passes")
    overfetch: float = Field(3.0, description="post-filter: fetch max(overfetch, refine)*k/share candidates")
    max_postfilter_fetch: int = Field(4096, description="post-filter: never fetch more candidates than this")
    min_candidate_pass_ratio: float = Field(
        0.5, description="post-filter: use the admitted-set plans when the candidates pass at less than this "
        "times the filter's share (the filter avoids the query's neighbourhood)"
    )
    exact_max: int = Field(20_000, description="scan the admitted vectors exactly when at most this many pass and "
                           "their count per IVF list is not known, or they are scattered and scattered_scan is 0")
    exact_min: int = Field(2_000, description="scan the admitted vectors exactly when at most this many pass, "
                           "wherever they sit in the index")
    concentrated_share: float = Field(
        0.25, gt=0, le=1, description="between exact_min and exact_max, search the index's codes (the selector) "
        "instead when the admitted vectors make up at least this share of the IVF lists holding them: the filter "
        "follows the vectors (a group), its nearest are found without reading every admitted row (at 200,000 x 768 "
        "an own-group scan read every page of the float16 file); one scattered over the lists (a 1% date) is "
        "searched as scattered_scan says"
    )
    scattered_scan: float = Field(
        4.0, ge=0, description="between exact_min and exact_max, a filter scattered over the IVF lists (under "
        "concentrated_share of the lists holding it) goes to the selector with this selector_scan instead of an exact "
        "scan (0: scanned exactly): its nearest lie further from the query's lists than a group's, and a scan reads "
        "each admitted row, which leaves the whole float16 file resident in a reader over a day of such filters. At "
        "1M x 512, a 1% date filter: exact 4.3 / 5.0 ms p50 / p95, recall@10 1.000; selector_scan 0.5 -> 0.830, "
        "2 -> 0.944, 4 -> 0.986 at 4.2 / 4.8 ms, 8 -> 0.994"
    )
    selector_scan: float = Field(
        1.0, gt=0, description="selector on IVF: beyond the lists an unfiltered search probes, score this share of what "
        "it would score if the admitted vectors were a collection of their own (at 1M vectors, a filter avoiding the "
        "query's neighbourhood: 0.25 -> recall@10 0.942, 0.5 -> 0.992, 1 -> 0.998; at 10M x 768 with fast-scan "
        "codes, 0.5 -> 0.934, 1 -> 0.984)"
    )
    scan_parts: int = Field(
        0, ge=0, description="split one query's scan (its probed IVF lists, an exact scan's rows) into this many "
        "parts, scanned on as many cores at once (0: one per CPU the process may use, at most FAISS's thread count "
        "and 4; 1: never split). At 8M x 768 with SQ8 codes an unfiltered search's scan took 18.7 ms in one part, "
        "10.5 ms in two (sst_search.vector_search.split_scan)"
    )
    scan_split_min: int = Field(
        1_000_000, ge=0, description="split a scan only into parts that each score at least this many code "
        "components (codes x dimension, about 0.2 ms of SQ8 scanning): a smaller part costs more to hand over "
        "than it saves"
    )
    coded_candidates: int = Field(
        3, ge=0, description="a fast-scan IVF ranks its lists among this many times as many candidates as a search "
        "reads, found by the lists' centroids coded with the index's own PQ, then scored exactly (0: score every "
        "centroid in float32). At 10M x 768, 3 found every list of the exact ranking for 200 queries, 2 missed up "
        "to 1.8% of a query's lists; centroids a real collection's codes fit worse may need more "
        "(sst_search.vector_search.coded_centroids)"
    )
    sample_size: int = Field(2048, description="ids sampled to estimate a filter's share (when it is not known exactly)")
    seed: int = Field(0, description="seed of that sample")


class IndexTier(_Strict):
    """One size band of :attr:`IndexConfig.tiers`: indexes of at most ``up_to`` vectors (no
    bound when None) are built from ``factory``."""

    up_to: int | None = Field(None, gt=0, description="most vectors an index of this tier holds (null: no bound)")
    factory: str = Field(description="FAISS factory string of an IVF index, {nlist} filled in from the size and "
                         "{dim} or {half_dim} (dim // 2) from the width, e.g. IVF{nlist},PQ{dim}x4fs")
    refine: int | None = Field(
        None, ge=1, description="re-rank refine*k candidates by the stored vectors (null: index.refine); coarser "
        "codes need more candidates for the same recall")
    nprobe_factor: float | None = Field(
        None, gt=0, description="lists probed per search = nprobe_factor * sqrt(nlist) for this tier's indexes (null: "
        "index.nprobe_factor); fast-scan codes kept their recall with fewer lists probed (10M x 768: 169 lists "
        "instead of 225, recall@10 0.998 both, p95 5.7 instead of 9.0 ms)")


#: The approximate tiers by default, from bench/bench_index_kinds.py and bench_query.py
#: (bench/README.md): SQ8 codes (dim + 8 bytes a vector) keep recall@10 >= 0.99 with 4k
#: candidates re-ranked and every filter's p95 within 10 ms up to 2M vectors. Above that
#: their scan is most of a search (18.7 of 23.9 ms at 8M x 768), and fast-scan PQ with a
#: 4-bit sub-quantizer per dimension (``PQ{dim}x4fs``: dim / 2 + 8 bytes, scanned by
#: SIMD table look-ups, its lists mapped from a file of their own) halved every scenario's
#: p95 at 8M x 768 (5.2-9.0 ms against 6.2-24.5) at SQ8's recall (0.958-0.998 against
#: 0.962-1.000) with the same 4k re-ranked. Two-bit codes (``PQ{half_dim}x4fs``) needed
#: 20k re-ranked rows, read from a float16 file the page cache could not hold, and still
#: lost recall under another group's filter (0.932). Two-bit RaBitQ codes held recall@10
#: 0.978 at 1M but at 10M x 128 fell to 0.93 under another group's filter with a 59 ms
#: unfiltered p95, so they start only where 4-bit codes (3.9 GB per 10M vectors of dim
#: 768) would no longer fit one machine (one-bit codes: 0.73 under the selector at 1M).
#: The fast-scan tier probes 1.5 sqrt(nlist) lists: at 10M x 768, 169 instead of 225 of
#: 12,649 took the unfiltered p95 from 9.0 to 5.7 ms at the same recall@10 (0.998).
DEFAULT_TIERS = (
    IndexTier(up_to=2_000_000, factory="IVF{nlist},SQ8"),
    IndexTier(up_to=20_000_000, factory="IVF{nlist},PQ{dim}x4fs", nprobe_factor=1.5),
    IndexTier(up_to=None, factory="IVF{nlist},RaBitQ2", refine=10),
)


#: The filter fields posted by default: a specimen's group, where and when it was collected,
#: its sex and life stage, its name and ranks, type status, holding institution and
#: collection, and collector (the Darwin Core terms a museum filters by). Any other field is
#: searched without postings: broad filters by post-filtering, selective ones from a mask
#: built on their first search.
POSTING_FIELDS = ("group", "locality", "country", "stateProvince", "eventDate", "year", "sex", "lifeStage",
                  "scientificName", "genus", "family", "order", "typeStatus", "institutionCode", "collectionCode",
                  "recordedBy")


class IndexConfig(_Strict):
    """Which FAISS index a trait gets, by size: exact below ``exact_threshold`` vectors, then
    the first of ``tiers`` whose bound the size is within. A store records the one it was
    written with, and readers that rebuild a stale index use that, never their own defaults."""

    exact_threshold: int = Field(50_000, description="vectors per trait index below which search is exact")
    approximate: Literal["hnsw", "ivf"] = Field("ivf", description="index family above exact_threshold")
    tiers: list[IndexTier] = Field(
        default_factory=lambda: [t.model_copy() for t in DEFAULT_TIERS],
        description="ivf: FAISS factory string by size above exact_threshold, smallest bound first; the last "
        "tier takes every larger index (e.g. 'IVF{nlist},Flat', 'OPQ64,IVF{nlist},PQ64', 'IVF{nlist},RaBitQ')",
    )
    refine: int = Field(4, ge=1, description="ivf: re-rank refine*k candidates by the stored float vectors")
    posting_fields: list[str] = Field(
        default_factory=lambda: list(POSTING_FIELDS),
        description="filter fields (group, a metadata key, or a <trait>.<measurement>) whose vectors are listed per "
        "IVF list by value when a "
        "snapshot is published, so the first search under a condition on one of them (any operator: a group, a "
        "locality containing a word, a date range) costs what the rest do; fields the collection lacks are skipped")
    posting_max_values: int = Field(
        1024, ge=1, description="most ranges of values a posting field is listed in: one value each up to this many, "
        "else this many ranges of neighbouring values (each range costs 4 bytes a list)")
    posting_categorical_values: int = Field(
        1024, ge=0, description="ivf: every other metadata field with at most this many distinct values (a "
        "preparation, a basis of record, a country code) is posted too, so that a selective condition on it builds no "
        "mask on its first search (8 bytes a vector per field); 0 posts posting_fields alone")

    @model_validator(mode="before")
    @classmethod
    def _one_factory(cls, data: object) -> object:
        """``factory: <string>``, the single IVF kind of configs and stores written before
        tiers, is one tier for every size: an older store keeps building the kind it has."""
        if isinstance(data, dict) and "factory" in data:
            data = dict(data)
            factory = data.pop("factory")
            if "tiers" in data:
                raise ValueError("index: give tiers or the older factory, not both")
            data["tiers"] = [{"up_to": None, "factory": factory}]
        return data

    @model_validator(mode="after")
    def _tiers_ascend(self) -> IndexConfig:
        bounds = [t.up_to for t in self.tiers]
        if not bounds or bounds[-1] is not None or None in bounds[:-1] or bounds[:-1] != sorted(bounds[:-1]):
            raise ValueError(f"index.tiers: bounds must ascend and the last be null (no bound), got {bounds}")
        return self
    nlist_factor: float = Field(
        4.0, description="ivf: nlist = nlist_factor * sqrt(n); training and adding cost grow with nlist, recall at "
        "a given probed share too")
    nprobe_factor: float = Field(
        2.0, gt=0, description="ivf: lists probed per search = nprobe_factor * sqrt(nlist); a fixed share would make "
        "search cost grow linearly with the collection (at 1M vectors, 127 of 4000 lists)"
    )
    nprobe_fraction: float | None = Field(
        None, gt=0, le=1, description="ivf: probe this share of the lists instead (stores written before nprobe_factor)"
    )
    min_nprobe: int = 8
    hnsw_m: int = 32
    hnsw_ef_search: int = 128
    hnsw_ef_construction: int = 200
    train_per_list: int = Field(
        40, description="ivf: training vectors sampled per list (FAISS warns below 39; at 1M vectors 40 trains in "
        "35 s where 64 took 74 s)"
    )
    train_niter: int = Field(10, description="ivf: k-means iterations")
    train_seed: int = Field(1234, description="ivf: seed of the training sample and clustering (same vectors, same index)")
    two_level_lists: int = Field(
        4000, ge=1, description="ivf: from this many lists (a million vectors), train the lists in two levels: "
        "sqrt(nlist) coarse clusters first (one-level k-means grows with nlist squared: hours at 10M vectors; at 1M "
        "x 768 a build took 167.9 s in one level and 34.7 s in two, recall@10 equal)")
    fast_assignment_lists: int = Field(
        1024, ge=1, description="ivf: from this many lists, a build files vectors in their lists by bfloat16 matrix "
        "products where the CPU has matrix units for them (AMX), checked in float32 wherever bfloat16 could have "
        "chosen another list, so the lists are FAISS's own: half the time of its float32 comparison with every list; "
        "and packs a fast-scan index's codes into its lists a million vectors at a time, on any CPU")
    plan: PlanConfig = PlanConfig()

    def kind_for(self, n: int) -> str:
        return "flat" if n <= self.exact_threshold else self.approximate

    def tier_for(self, n: int) -> IndexTier:
        """The tier an IVF index of ``n`` vectors is built in."""
        return next(t for t in self.tiers if t.up_to is None or n <= t.up_to)

    def refine_for(self, n: int) -> int:
        """Candidates re-ranked per result for an IVF index of ``n`` vectors."""
        return self.tier_for(n).refine or self.refine

    def nlist_for(self, n: int) -> int:
        return max(1, min(n // 39 or 1, int(round(self.nlist_factor * math.sqrt(n)))))

    def nprobe_for(self, nlist: int, n: int | None = None) -> int:
        """Lists an IVF index of ``nlist`` lists probes per search; ``n``: its size, whose
        tier may set its own factor."""
        factor = (self.tier_for(n).nprobe_factor if n is not None else None) or self.nprobe_factor
        wanted = self.nprobe_fraction * nlist if self.nprobe_fraction is not None else factor * math.sqrt(nlist)
        return min(nlist, max(self.min_nprobe, int(math.ceil(wanted))))


class MeasureConfig(_Strict):
    pixels_per_mm: float | None = Field(None, gt=0, description="scale of the whole collection (an item's own column wins)")
    scale_column: str = Field("pixelsPerMM", description="manifest column holding an item's pixels per millimetre")


class InstancesConfig(_Strict):
    """Finding every specimen in a photo (``--instances``); see :mod:`sst_search.instance_finding`."""

    points_per_side: int = Field(32, ge=1, description="proposal grid: points_per_side^2 point prompts")
    points_per_batch: int = Field(64, ge=1, description="point prompts per mask-decoder batch")
    pred_iou_thresh: float = Field(0.7, description="proposals below SAM 2's predicted IoU are dropped")
    stability_score_thresh: float = Field(0.9, description="proposals less stable than this are dropped")
    min_area: float = Field(0.001, ge=0, le=1, description="smallest candidate, fraction of the photo")
    max_area: float = Field(0.5, ge=0, le=1, description="largest candidate, fraction of the photo")
    max_candidates: int = Field(64, ge=0, description="candidates scored per photo (highest predicted IoU first)")
    min_score: float = Field(0.5, ge=0, le=1, description="keep a candidate whose cycle or forward IoU reaches this")
    nms_iou: float = Field(0.5, gt=0, le=1, description="of two kept candidates overlapping by this mask IoU, the better stays")
    margin: float = Field(0.1, ge=0, description="crop margin around an instance, fraction of its box's longer side")


class FetchConfig(_Strict):
    """Images given by http(s) URL, fetched into a cache before segmentation."""

    image_cache: str | None = Field(None, description="cache folder (default: <db>.images beside the store)")
    max_per_host: int = Field(2, ge=1, description="concurrent requests per host")
    concurrency: int = Field(8, ge=1, description="concurrent requests in all")
    timeout: float = Field(30.0, gt=0, description="seconds a whole response may take (an attempt; a server "
                                                   "trickling bytes is cut off), and the longest wait for a connection")
    retries: int = Field(4, ge=1, description="attempts per image (timeouts, dropped connections, 429, 5xx)")
    backoff: float = Field(0.5, gt=0, description="seconds before the first retry, doubling each time (at most 30)")
    max_bytes: int = Field(100_000_000, gt=0, description="largest image accepted")
    iiif_size: int | None = Field(None, description="IIIF images are requested at most this many pixels a side "
                                                    "(null: segmentation.image_size)")
    revalidate: bool = Field(False, description="ask the server whether cached images changed (ETag)")


class SourcesConfig(_Strict):
    """Collections handed over as archives (zip, tar): unpacked only within these bounds."""

    max_archive_bytes: int = Field(20_000_000_000, gt=0, description="largest total size an archive may unpack to")
    max_archive_members: int = Field(100_000, gt=0, description="most files and folders an archive may hold")


class IndexerConfig(_Strict):
    commit_every: int = Field(16, description="specimens per DuckDB transaction")
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    num_workers: int = 2
    threads: int | None = Field(
        None, ge=0, description="threads per process that decode, resize, embed and measure while the model segments "
        "(null: the cores the process may use; 0: every stage one after another, no pipeline)"
    )
    max_removal_share: float = Field(
        0.2, ge=0, le=1, description="largest share of indexed items a run may remove or fail (--allow-mass-removal)"
    )


#: Learning rates that suit each kind when none is given: full fine-tuning moves pretrained
#: weights directly and needs far smaller steps than a zero-initialised LoRA delta.
DEFAULT_LR = {"lora": 5e-4, "full": 2e-5}


class FinetuneConfig(_Strict):
    """``sst-search finetune``: everything that shapes the trained adapter (stored inside the
    adapter file), and how many query images it is trained on."""

    kind: Literal["lora", "full"] = "lora"
    steps: int = Field(200, ge=1, description="optimiser steps (one query each)")
    lr: float | None = Field(None, gt=0, description="peak learning rate (default depends on kind: DEFAULT_LR)")
    weight_decay: float = Field(0.01, ge=0)
    lora_rank: int = Field(4, ge=1)
    lora_alpha: float | None = Field(None, gt=0, description="default: the rank (scale 1)")
    grad_clip: float = Field(1.0, gt=0)
    iou_weight: float = Field(1.0, ge=0)
    object_weight: float = Field(1.0, ge=0)
    augment: bool = Field(True, description="flip, scale and colour-jitter the queries")
    seed: int = Field(0, ge=0, description="seed of LoRA's initialisation, the query order and sample, augmentation")
    max_queries: int = Field(64, ge=1, description="use at most this many query images (a seeded sample)")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.kind]

    def adapter_record(self) -> dict:
        """What the adapter file records about its training (the query sample size is not
        a training setting, and the learning rate is the one used)."""
        return {**self.model_dump(exclude={"max_queries"}), "lr": self.learning_rate}


class Config(_Strict):
    segmentation: SegmentationConfig = SegmentationConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    index: IndexConfig = IndexConfig()
    indexer: IndexerConfig = IndexerConfig()
    measure: MeasureConfig = MeasureConfig()
    instances: InstancesConfig = InstancesConfig()
    fetch: FetchConfig = FetchConfig()
    sources: SourcesConfig = SourcesConfig()
    finetune: FinetuneConfig = FinetuneConfig()


def apply_overrides(config: Config, **overrides) -> Config:
    """``config`` with command-line options merged in: they win over the config file, and
    ``None`` means "not given". Option names are the config's keys, except
    ``embedder_weights`` (``embedding.weights``); an unknown name is an error."""
    sections = {
        "segmentation": ("model", "weights", "adapter", "image_size", "mode", "quality", "device", "orientation",
                         "mirror", "orientation_by", "batch_size", "query_batch"),
        "embedding": ("embedder", "embedder_weights"),
        "indexer": ("engine", "ray_address", "num_workers"),
        "measure": ("pixels_per_mm", "scale_column"),
        "fetch": ("image_cache", "max_per_host"),
        "finetune": ("kind", "steps", "lr", "lora_rank", "augment", "seed", "max_queries"),
    }
    known = {key for keys in sections.values() for key in keys}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown configuration override(s): {unknown}")
    data = config.model_dump()
    for section, keys in sections.items():
        for key in keys:
            value = overrides.get(key)
            if value is not None:
                data[section]["weights" if key == "embedder_weights" else key] = (
                    str(value) if isinstance(value, Path) else value)
    return Config.model_validate(data)


def load_config(path: str | Path | None = None, **overrides) -> Config:
    """Defaults, overlaid by a YAML file when given, overlaid by ``overrides`` (command-line
    options, see :func:`apply_overrides`): the one way every command gets its configuration.
    Unknown keys are errors (typos in a config must not be silently ignored)."""
    config = _load_file(Path(path)) if path is not None else Config()
    return apply_overrides(config, **overrides) if overrides else config


def _load_file(path: Path) -> Config:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read config ({exc})") from exc
    try:
        return Config.model_validate(data)
    except Exception as exc:
        raise ValueError(f"{path}: invalid config: {exc}") from exc


def stable_hash(obj: object, length: int = 16) -> str:
    """Hash of a JSON-able object that does not depend on key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def recorded(model: type[Model], data: Mapping[str, Any] | str, source: str = "the store") -> Model:
    """A configuration a store recorded, read by this version. Settings a newer version added
    are left out, with a warning once per process: during a rolling upgrade an older reader
    must still open a store a newer writer wrote. A config file's unknown keys stay errors
    (:func:`load_config`): there they are typos, here they are someone else's settings."""
    raw = json.loads(data) if isinstance(data, str) else copy.deepcopy(dict(data))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        unknown = [error["loc"] for error in exc.errors() if error["type"] == "extra_forbidden"]
        if not unknown:
            raise
        for *parents, key in unknown:
            try:
                section = raw
                for step in parents:
                    section = section[step]
                del section[key]
            except (KeyError, IndexError, TypeError):  # a key a validator made, not one the store wrote
                raise exc from None
    names = ", ".join("".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in loc).lstrip(".")
                      for loc in unknown)
    if (message := f"{source} records settings this version of sst-search does not know, ignored: {names}"
        ) not in _reported:
        _reported.add(message)
        log.warning(message)
    return model.model_validate(raw)
