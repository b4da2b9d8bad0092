"""Text that came from files reaches the terminal and the app as text: rich markup and Markdown in
file names are printed literally (no MarkupError after a store was published, no link rendered),
and uploads decode only the formats the pipeline reads, whatever their name says."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from indexer.instance_split import SplitSummary
from indexer.job import RunSummary
from sst_search.cli import app
from sst_search.commands.index import print_summary
from sst_search.images import ImageLoadError
from ui.views.search import decode_upload

MARKUP = "x[/red][bold]y[/]"


def test_run_summary_prints_markup_in_instance_and_item_paths_literally(capsys):
    summary = RunSummary("0123456789", 2, {"indexed": 0, "failed": 1, "unchanged": 0},
                         failures=[(f"/c/{MARKUP}.png", f"/c/{MARKUP}.png: not an image [/bold]")],
                         split=SplitSummary(photos=1, failed=1, failures=[(f"/c/{MARKUP}-photo.png", "[/red] no instance")]))
    print_summary(summary)
    out = capsys.readouterr().out  # the summary is the run's report: stdout
    assert f"{MARKUP}-photo.png: [/red] no instance" in out and f"{MARKUP}.png: not an image [/bold]" in out


def test_cli_messages_print_paths_with_markup_literally(tmp_path):
    bad = tmp_path / "x[" / "red]y.json"  # a closing tag across a folder: .../x[/red]y.json
    bad.parent.mkdir()
    bad.write_text("{not json")
    runner = CliRunner()
    imported = runner.invoke(app, ["refs", "import", str(bad), "--refs", str(tmp_path / "refs"), "--group", "g"])
    assert imported.exit_code == 2 and "x[/red]y.json: not valid JSON" in imported.output
    verified = runner.invoke(app, ["verify", "--db", str(tmp_path / MARKUP / "db.duckdb")])
    assert verified.exit_code == 2 and f"{MARKUP}/db.duckdb: no such store" in verified.output
    for result in (imported, verified):
        assert result.exception is None or isinstance(result.exception, SystemExit)


class _Upload:
    """What the app's uploaders hand over: a name, a size and the bytes."""

    def __init__(self, name: str, data: bytes):
        self.name, self.size, self._data = name, len(data), data

    def getvalue(self) -> bytes:
        return self._data


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP"])
def test_uploads_decode_only_the_formats_the_pipeline_reads(fmt):
    data = io.BytesIO()
    Image.new("RGB", (16, 12), "red").save(data, fmt)
    with pytest.raises(ImageLoadError, match=r"photo\.png: not a readable image of an allowed format \(JPEG, PNG, TIFF\)"):
        decode_upload(_Upload("photo.png", data.getvalue()))


def test_an_upload_of_an_allowed_format_decodes():
    data = io.BytesIO()
    Image.new("RGB", (16, 12), "red").save(data, "PNG")
    assert decode_upload(_Upload("photo.png", data.getvalue())).shape == (12, 16, 3)


def test_markdown_in_an_error_shown_by_the_app_is_escaped():
    from ui.render import escape_markdown

    shown = escape_markdown(ImageLoadError(f"![x](http://e.org/t.png) `{MARKUP}`.png", "not a readable image"))
    assert "![x](" not in shown and "\\!\\[x\\]" in shown and "\\`" in shown
    assert json.dumps(shown)  # plain text, ready for st.error
