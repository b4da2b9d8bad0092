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
