"""Index kinds by size (``index.tiers``) on a real DuckDB catalog and real FAISS indexes: the
tier each size gets, its factory string and measured bytes per vector recorded in the store
and shown by status; recall and exactly k under every plan for SQ8, RaBitQ, PQ and fast-scan PQ codes
re-ranked by the float16 vectors at rest; a store written before tiers existed."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from sst_search.cli import app
from sst_search.config import IndexConfig, IndexTier, PlanConfig
from sst_search.query import Filter, SearchEngine
from sst_search.store import Store
from sst_search.store import verify
from sst_search.store.snapshots import publish_snapshot, resolve_snapshot
from sst_search.vector_search.indexes import build_index, filled_factory, index_paths, is_fast_scan, read_manifest
from sst_search.vector_search.planner import choose_plan

DIM, EMBEDDER = 64, "e"
TIERED = IndexConfig(exact_threshold=500, nlist_factor=1.0, train_per_list=39, tiers=[
    IndexTier(up_to=2_000, factory="IVF{nlist},SQ8"), IndexTier(factory="IVF{nlist},RaBitQ", refine=10)])


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, DIM)).astype(np.float32)
    x = centres[rng.integers(60, size=n)] / np.sqrt(DIM) + 0.04 * rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write(db, config: IndexConfig, sizes: dict[str, int], seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One trait per entry of ``sizes`` over the same specimens (a trait has the first n of them)."""
    n = max(sizes.values())
    ids = np.random.default_rng(seed).choice(1 << 62, size=n, replace=False).astype(np.int64)
    data = {trait: (ids[:m], clustered(m, seed + i)) for i, (trait, m) in enumerate(sizes.items())}
    with Store.open(db, index_config=config) as store:
        store.write_columns(
            pa.table({"specimen_id": ids, "path": [f"img/{i}.png" for i in range(n)],
                      "group_name": [f"g{i % 4}" for i in range(n)], "status": ["indexed"] * n}),
            metadata=pa.table({"specimen_id": ids, "key": ["locality"] * n,
                               "value": np.where(np.arange(n) % 50 == 0, "rare", "common")}),
            vectors={(EMBEDDER, trait): value for trait, value in data.items()},
        )
    return data


def test_each_size_gets_its_tier_recorded_with_measured_bytes_per_vector(tmp_path):
    db = tmp_path / "tiers.duckdb"
    write(db, TIERED, {"small": 400, "middle": 1_500, "large": 3_000})
    with Store.open(db, read_only=True) as store:
        rows = {row["trait"]: row for row in store.status()["indexes"]}
        for trait, row in rows.items():
            manifest = read_manifest(store.faiss_dir, EMBEDDER, trait)
            size = index_paths(store.faiss_dir, EMBEDDER, trait)[0].stat().st_size
            assert row["index_bytes_per_vector"] == pytest.approx(size / row["vectors"], abs=0.1)
            assert manifest["factory"] == row["factory"]
            assert row["rerank"] == "float32 in RAM" and row["rerank_bytes_per_vector"] == 4 * DIM + 8
    assert rows["small"]["factory"] == "Flat" and rows["small"]["kind"] == "flat"
    assert rows["middle"]["factory"].endswith(",SQ8") and rows["middle"]["factory"].startswith("IVF")
    assert rows["large"]["factory"].endswith(",RaBitQ")
    # SQ8 stores a byte a dimension (+ 8 for the id), RaBitQ about a bit: measured, not assumed
    assert DIM + 8 <= rows["middle"]["index_bytes_per_vector"] < 4 * DIM
    assert rows["large"]["index_bytes_per_vector"] < 0.6 * rows["middle"]["index_bytes_per_vector"]
    shown = CliRunner().invoke(app, ["status", "--db", str(db)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert rows["large"]["factory"] in shown.output and f"{rows['large']['index_bytes_per_vector']:,.0f}" in shown.output
    snapshot = publish_snapshot(db)
    with Store.open(snapshot, read_only=True) as store:
        row = next(r for r in store.status()["indexes"] if r["trait"] == "large")
    assert row["rerank"] == "float16 mapped" and row["rerank_bytes_per_vector"] == pytest.approx(2 * DIM + 8, abs=1)


def test_an_index_that_grows_into_the_next_tier_is_rebuilt_as_that_tier(tmp_path):
    db = tmp_path / "grow.duckdb"
    data = write(db, TIERED, {"t": 1_500})
    assert read_manifest(db.with_name(db.name + ".faiss"), EMBEDDER, "t")["codes"] == f"IndexIVFScalarQuantizer/{DIM}"
    more = 1_200
    ids = np.random.default_rng(9).choice(1 << 62, size=more, replace=False).astype(np.int64)
    with Store.open(db) as store:
        store.write_columns(pa.table({"specimen_id": ids, "path": [f"more/{i}.png" for i in range(more)],
                                      "group_name": ["g0"] * more, "status": ["indexed"] * more}),
                            vectors={(EMBEDDER, "t"): (ids, clustered(more, 5))})
        assert store.index(EMBEDDER, "t").ntotal == 2_700
        assert store.check_consistency() == []
    manifest = read_manifest(db.with_name(db.name + ".faiss"), EMBEDDER, "t")
    assert manifest["codes"].startswith("IndexIVFRaBitQ/") and manifest["factory"].endswith(",RaBitQ")
    with Store.open(db, read_only=True) as store:
        hits = store.filtered_search(EMBEDDER, "t", data["t"][1][3], 5).hits
    assert hits[0][0] == int(data["t"][0][3])


KINDS = {"sq8": "IVF{nlist},SQ8", "rabitq": "IVF{nlist},RaBitQ2", "pq": "IVF{nlist},PQ16x4",
         "fastscan": "IVF{nlist},PQ{half_dim}x4fs", "fastscan4": "IVF{nlist},PQ{dim}x4fs"}
#: One trait per kind, sized into its tier of :data:`BY_SIZE`.
SIZES = {"sq8": 1_900, "rabitq": 2_500, "pq": 3_000, "fastscan": 3_300, "fastscan4": 3_600}
BY_SIZE = IndexConfig(exact_threshold=500, nlist_factor=1.0, train_per_list=39, tiers=[
    IndexTier(up_to=2_000, factory=KINDS["sq8"]), IndexTier(up_to=2_600, factory=KINDS["rabitq"], refine=10),
    IndexTier(up_to=3_100, factory=KINDS["pq"], refine=10), IndexTier(up_to=3_400, factory=KINDS["fastscan"], refine=20),
    IndexTier(factory=KINDS["fastscan4"])])


@pytest.fixture(scope="module")
def kinds_published(tmp_path_factory):
    """One published store, one trait per code kind (dim 64, 4 groups, a 2% locality)."""
    db = tmp_path_factory.mktemp("kinds") / "k.duckdb"
    data = write(db, BY_SIZE, SIZES)
    publish_snapshot(db)
    return db, data


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("filters", "plan", "exact_max"), [
    ([], "unfiltered", 20_000),
    ([Filter(field="group", op="==", value="g1")], "postfilter", 20_000),
    ([Filter(field="locality", op="==", value="rare")], "selector", 10),
    ([Filter(field="locality", op="==", value="rare")], "exact", 20_000),
])
def test_every_plan_keeps_recall_and_exactly_k_for_every_code_kind(kinds_published, kind, filters, plan, exact_max):
    db, data = kinds_published
    ids, vectors = data[kind]
    rows = np.arange(len(ids))
    passing = {"group": rows % 4 == 1, "locality": rows % 50 == 0}[filters[0].field] if filters else rows >= 0
    recalls = []
    with SearchEngine.open(db) as engine:
        store = engine.store
        assert read_manifest(store.faiss_dir, EMBEDDER, kind)["factory"].endswith(
            KINDS[kind].split(",")[-1].format(half_dim=DIM // 2, dim=DIM))
        assert store.vector_table(EMBEDDER, kind).matrix.dtype == np.float16  # re-ranked by the float16 at rest
        assert is_fast_scan(store.index(EMBEDDER, kind)) == kind.startswith("fastscan")
        store.index_cache.config = store.index_config.model_copy(update={"plan": PlanConfig(exact_max=exact_max)})
        admission = engine.admission(filters) if filters else None
        for row in range(0, len(ids), 83):
            outcome = store.filtered_search(EMBEDDER, kind, vectors[row], 10, admission, skip=int(ids[row]))
            assert outcome.plan == plan
            found = [sid for sid, _ in outcome.hits]
            assert len(found) == 10 == len(set(found)) and set(found) <= set(ids[passing].tolist())
            scores = np.where(passing, vectors @ vectors[row], -np.inf)
            scores[row] = -np.inf
            recalls.append(len(set(found) & set(ids[np.argsort(-scores)[:10]].tolist())) / 10)
    assert np.mean(recalls) >= 0.95, (kind, plan, np.mean(recalls))


def test_a_store_written_before_tiers_opens_and_keeps_building_its_kind(tmp_path):
    db = tmp_path / "old.duckdb"
    data = write(db, IndexConfig(exact_threshold=500, nlist_factor=1.0, train_per_list=39), {"t": 1_000})
    faiss_dir = db.with_name(db.name + ".faiss")
    manifest_path = index_paths(faiss_dir, EMBEDDER, "t")[1]
    old_manifest = {k: v for k, v in json.loads(manifest_path.read_text()).items() if k not in ("factory", "codes")}
    manifest_path.write_text(json.dumps(old_manifest))
    with Store.open(db) as store:  # the config as the writer recorded it before tiers: one factory string
        recorded = json.loads(store.index_config.model_dump_json())
        del recorded["tiers"]
        store.con.execute("UPDATE store_settings SET value = ? WHERE key = 'index_config'",
                          [json.dumps({**recorded, "factory": "IVF{nlist},Flat"})])
    with Store.open(db, read_only=True) as store:
        assert [t.factory for t in store.index_config.tiers] == ["IVF{nlist},Flat"]
        row = store.status()["indexes"][0]
        assert row["file"] == "fresh" and row["factory"] is None and row["index_bytes_per_vector"] > 0
        assert store.filtered_search(EMBEDDER, "t", data["t"][1][7], 3).hits[0][0] == int(data["t"][0][7])
    with Store.open(db) as store:  # the next change rebuilds as the recorded factory, not the new defaults
        store.remove_specimens([int(data["t"][0][0])])
        store.repair_indexes(deep=True)
    assert read_manifest(faiss_dir, EMBEDDER, "t")["codes"] == f"IndexIVFFlat/{4 * DIM}"


def test_a_store_a_newer_version_wrote_opens_with_its_new_settings_ignored(tmp_path, caplog):
    """A rolling upgrade: an older reader opens a store whose writer recorded settings it
    does not know (at the top, in the plan, in a tier), and says which it ignored."""
    db = tmp_path / "newer.duckdb"
    data = write(db, IndexConfig(exact_threshold=500, nlist_factor=1.0, train_per_list=39), {"t": 1_000})
    with Store.open(db) as store:
        newer = json.loads(store.index_config.model_dump_json())
        newer["posting_sketches"] = 4
        newer["plan"]["lookahead"] = 2
        newer["tiers"][0]["bits"] = 6
        store.con.execute("UPDATE store_settings SET value = ? WHERE key = 'index_config'", [json.dumps(newer)])
    with caplog.at_level("WARNING", logger="sst_search.config"), Store.open(db, read_only=True) as store:
        assert store.index_config.exact_threshold == 500 and store.index_config.nlist_factor == 1.0
        assert store.filtered_search(EMBEDDER, "t", data["t"][1][7], 3).hits[0][0] == int(data["t"][0][7])
        assert store.verify() == []
    warned = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(warned) == 1 and all(key in warned[0] for key in ("posting_sketches", "plan.lookahead", "tiers[0].bits"))


def test_tiers_must_ascend_and_end_unbounded():
    with pytest.raises(ValueError, match="tiers"):
        IndexConfig(tiers=[IndexTier(up_to=10, factory="IVF{nlist},SQ8")])
    with pytest.raises(ValueError, match="not both"):
        IndexConfig.model_validate({"factory": "IVF{nlist},SQ8", "tiers": [{"factory": "IVF{nlist},Flat"}]})
    assert IndexConfig().tier_for(10**9).factory == "IVF{nlist},RaBitQ2" and IndexConfig().refine_for(10**9) == 10
    assert IndexConfig().tier_for(2_000_000).factory == "IVF{nlist},SQ8"
    assert IndexConfig().tier_for(8_000_000).factory == "IVF{nlist},PQ{dim}x4fs" and IndexConfig().refine_for(8_000_000) == 4
    assert filled_factory("IVF{nlist},PQ{dim}x4fs", 768, 11_314) == "IVF11314,PQ768x4fs"


def test_verify_tells_a_fast_scan_index_of_the_catalogs_vectors_from_one_of_other_vectors(kinds_published):
    """Fast-scan codes cannot be reconstructed: verify scores each sampled vector among the
    sample's ids instead, which a coarse code of the same vector passes and another's fails."""
    db, data = kinds_published
    ids, vectors = data["fastscan"]
    key = (EMBEDDER, "fastscan")
    con = duckdb.connect(str(resolve_snapshot(db)), read_only=True)
    try:
        generation = next(g for e, t, g, _ in verify.index_states(con) if (e, t) == key)
        faiss_dir = resolve_snapshot(db).with_name(db.name + ".faiss")
        assert verify.check_index(con, faiss_dir, key, generation, DIM) == []
        others = build_index(clustered(len(ids), seed=99), ids, DIM, BY_SIZE)
        assert is_fast_scan(others)
        problems = verify.check_index(con, faiss_dir, key, generation, DIM, index=others)
    finally:
        con.close()
    assert len(problems) == 1 and "sampled vectors differ" in problems[0].what


def test_a_postfilter_fetches_enough_candidates_for_k_times_refine_survivors():
    """Coarse codes re-rank more candidates; a post-filter then needs as many survivors, so a
    filter whose fetch would pass ``max_postfilter_fetch`` goes to the admitted-set plans."""
    plan = PlanConfig()
    assert choose_plan(0.05, 10**7, 10, plan) == "postfilter"  # 3 x 10 / 0.05 = 600 candidates
    assert choose_plan(0.05, 10**7, 10, plan, refine=20) == "postfilter"  # 4,000
    assert choose_plan(0.05, 10**7, 10, plan, refine=40) == "selector"  # 8,000 > 4,096
    assert choose_plan(0.05, 10**7, 10, plan, refine=2) == "postfilter"
