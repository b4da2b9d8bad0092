"""Every command that builds a tracker reads its settings one way: the config file, then the
options given on the command line. A checkpoint path that does not exist stops the run at
weights resolution, before any model is built, so the message shows which setting won."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sst_search.cli import app

runner = CliRunner()


def _command(name: str, synthetic, tmp_path) -> list[str]:
    group = synthetic.groups[0]
    ref_dir = synthetic.references / group
    support = next(p for p in sorted(ref_dir.glob("*.png")) if not p.name.endswith(".mask.png"))
    support_args = ["--support", str(support), "--support-mask", str(support.with_name(support.stem + ".mask.png"))]
    images = synthetic.root / "images" / group
    return {
        "segment": ["segment", str(next(images.glob("*.png"))), *support_args, "--out", str(tmp_path / "out")],
        "eval-kshot": ["eval-kshot", "--format", "synthetic", "--root", str(synthetic.root)],
        "finetune": ["finetune", *support_args, "--queries", str(images), "--out", str(tmp_path / "a.pt")],
    }[name]


def _words(text: str) -> str:
    return " ".join(text.split())  # the console wraps long lines


@pytest.mark.parametrize("name", ["segment", "eval-kshot", "finetune"])
def test_the_config_file_reaches_the_tracker_and_options_override_it(name, synthetic, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"segmentation:\n  weights: {tmp_path / 'from-file.pt'}\n  device: cpu\n")
    args = [*_command(name, synthetic, tmp_path), "--config", str(config)]

    from_file = runner.invoke(app, args)
    assert from_file.exit_code == 2, from_file.output
    assert "from-file.pt" in from_file.output and "does not exist" in _words(from_file.output)

    from_cli = runner.invoke(app, [*args, "--weights", str(tmp_path / "from-cli.pt")])
    assert from_cli.exit_code == 2, from_cli.output
    assert "from-cli.pt" in from_cli.output and "from-file.pt" not in from_cli.output


def test_finetune_settings_live_in_the_config_and_a_bad_one_names_the_file(synthetic, tmp_path):
    config = tmp_path / "tune.yaml"
    config.write_text("finetune:\n  steps: 0\n")
    result = runner.invoke(app, [*_command("finetune", synthetic, tmp_path), "--config", str(config)])
    assert result.exit_code == 2
    assert "tune.yaml" in result.output and "steps" in result.output
