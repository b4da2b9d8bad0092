"""The ``sst-search`` command line: thin wrappers over the library."""

from __future__ import annotations

import typer

from .commands.demo import demo
from .commands.evaluate import eval_instances, eval_kshot, eval_retrieval, eval_seg
from .commands.finetune import finetune
from .commands.export import export_app
from .commands.index import index, status
from .commands.measure import measure
from .commands.refs import refs_app
from .commands.review import review_app
from .commands.segment import segment
from .commands.synth import synth
from .commands.ui import ui

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Trait segmentation and search for natural-history collections.")


@app.callback()
def _root() -> None:
    """Trait segmentation and search for natural-history collections."""


app.command()(segment)
app.command()(synth)
app.command()(index)
app.command()(status)
app.command()(measure)
app.command()(demo)
app.command()(finetune)
app.command("eval-seg")(eval_seg)
app.command()(ui)
app.command("eval-kshot")(eval_kshot)
app.command("eval-retrieval")(eval_retrieval)
app.command("eval-instances")(eval_instances)
app.add_typer(refs_app, name="refs")
app.add_typer(export_app, name="export")
app.add_typer(review_app, name="review")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
