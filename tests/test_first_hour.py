"""What a new user meets in the first hour: start-up time, clear messages, names instead of ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "sam2", "open_clip", "peft", "transformers")


@pytest.mark.parametrize("args", [["--help"], ["status", "--db", "no-such.duckdb"], ["export", "--help"]])
def test_help_and_status_start_without_the_model_libraries(args):
    code = (
        "import sys\nfrom sst_search.cli import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    if args == ["--help"]:  # every command is still listed with its summary
        for name in ("index", "status", "measure", "export", "eval-seg", "refs"):
            assert f" {name} " in out.stdout


def test_a_store_in_a_missing_folder_is_created_and_a_missing_store_is_named(tmp_path):
    from sst_search.store import Store

    db = tmp_path / "missing_dir" / "deeper" / "index.duckdb"
    with Store.open(db) as store:
        assert store.status()["specimens"] == {}
    assert db.is_file()
    with pytest.raises(FileNotFoundError, match="other_dir/index.duckdb: no such store"):
        Store.open(tmp_path / "other_dir" / "index.duckdb", read_only=True)


def test_run_summary_and_status_print_the_same_lines(tmp_path):
    from typer.testing import CliRunner

    from indexer.job import RunSummary
    from sst_search.cli import app
    from sst_search.commands import index as index_cmd
    from sst_search.store import SpecimenRecord, Store

    bad, orphan = str(tmp_path / "bad.png"), str(tmp_path / "orphan.png")
    errors = {bad: f"{bad}: not a readable image", orphan: "no references for group 'x'"}
    with Store.open(tmp_path / "db.duckdb") as store:
        store.write_batch([SpecimenRecord(1, bad, "failed", error=errors[bad]),
                           SpecimenRecord(2, orphan, "no_reference", group_name="x", error=errors[orphan])])
    summary = RunSummary("r" * 32, 2, {"indexed": 0, "failed": 1, "no_reference": 1}, list(errors.items()),
                         failure_status={bad: "failed", orphan: "no_reference"})
    with index_cmd.report.capture() as captured:  # the report goes to stdout
        index_cmd.print_summary(summary)
    summary_lines = [line for line in captured.get().splitlines() if line.startswith(("failed", "no_reference"))]
    assert summary_lines == [f"failed {bad}: not a readable image", f"no_reference {orphan}: no references for group 'x'"]
    status = CliRunner().invoke(app, ["status", "--db", str(tmp_path / "db.duckdb")])
    status_lines = [line for line in status.output.splitlines() if line.startswith(("failed", "no_reference"))]
    assert sorted(status_lines) == sorted(summary_lines)


def test_chance_map_is_the_exact_mean_over_all_rankings():
    from itertools import permutations
    from statistics import fmean

    from sst_search.evaluation.metrics import average_precision_at_k
    from sst_search.evaluation.retrieval import chance_average_precision

    for k, relevant, others in [(3, 2, 5), (2, 1, 4), (5, 3, 4), (1, 1, 1)]:
        gallery = list(range(others))
        exact = fmean(average_precision_at_k(list(p), set(range(relevant)), k) for p in permutations(gallery))
        assert chance_average_precision(k, relevant, others) == pytest.approx(exact)


def test_eval_retrieval_fits_80_columns_with_chance_levels_and_warns_about_random_masks(tmp_path):
    import numpy as np
    from rich.console import Console

    from sst_search.evaluation.retrieval import evaluate_retrieval
    from sst_search.store import SpecimenRecord, Store

    rng = np.random.default_rng(1)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    records = [SpecimenRecord(i, f"s{i}.png", "indexed", group_name=f"species_{i % 2}", vectors={
        ("color-pattern", "__specimen__"): unit(rng.normal(size=8)),
        ("color-pattern", "marginal_spots_long"): unit(rng.normal(size=8)),
        ("bioclip", "forewing_band"): unit(rng.normal(size=8))}) for i in range(1, 9)]
    with Store.open(tmp_path / "db.duckdb") as store:
        store.write_batch(records)
        run = store.begin_run({"segmentation": {"weights_sha256": "random"}, "embedder": {"embedder": "bioclip", "weights": "ab"}})
        store.finish_run(run)
        report = evaluate_retrieval(store, k=10)
    console = Console(width=80, record=True)
    console.print(report)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    row = report.row("color-pattern", "marginal_spots_long")
    assert row.chance_map_at_k is not None and f"{row.chance_map_at_k:.3f}" in text
    line = next(ln for ln in text.splitlines() if "marginal_spots_long" in ln)  # one row, one line: nothing wrapped
    assert f"{row.map_at_k:.3f}" in line and f"{row.chance_precision_at_k:.3f}" in line
    assert "RANDOM SAM 2 weights" in text


def test_readme_answers_the_first_questions():
    import re

    from sst_search.cli import _load

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    index_block = readme[readme.index("sst-search index COLLECTION"):]
    index_block = index_block[: index_block.index("sst-search status")]
    options = [o for p in _load("index").params for o in p.opts if o.startswith("--")]
    assert [o for o in options if o not in index_block] == []  # every `index` option is listed
    python = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "specimen_id=sid" in b)
    assert python.index("sid = ") < python.index("specimen_id=sid")  # where `sid` comes from
    for needle in ("7 GB", "CUDA build", "download.pytorch.org/whl/cpu", "Chromium"):
        assert needle in readme, needle
    assert re.search(r"take [^.]*minutes on an idle\s+2-core machine", readme)  # how long the tests take
