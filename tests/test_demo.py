"""README's main command, `sst-search demo`, end to end (offline: random weights, colour-pattern)."""

from __future__ import annotations

from typer.testing import CliRunner

from sst_search.cli import app
from sst_search.store import Store


def test_demo_builds_a_searchable_index_and_scores_it(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--species", "2", "--per-species", "3", "--weights", "random", "--embedder", "color-pattern"]
    )
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output
    assert "overall mIoU" in result.output
    with Store.open(out / "index.duckdb", read_only=True) as store:
        assert store.status()["specimens"] == {"indexed": 6}
        assert store.check_consistency() == []
    assert len(list((out / "predictions").rglob("*.png"))) == 6
