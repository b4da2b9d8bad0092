"""The ``sst-search`` command line: thin wrappers over the library.

Commands are imported only when they run: ``sst-search --help`` and ``sst-search status``
must not pay for torch, SAM 2 and open_clip (seconds of start-up) that only segmenting and
embedding need. The command list's one-line helps are read from the command modules'
source (their docstrings), never by importing them.
"""

from __future__ import annotations

import ast
import gc
import importlib
from functools import lru_cache
from pathlib import Path

import click
import typer
from typer.core import TyperGroup

#: Command name -> (module under sst_search.commands, the function or sub-Typer it defines), in help order.
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("segment", "segment"),
    "synth": ("synth", "synth"),
    "index": ("index", "index"),
    "status": ("index", "status"),
    "verify": ("verify", "verify"),
    "measure": ("measure", "measure"),
    "relocate": ("relocate", "relocate"),
    "demo": ("demo", "demo"),
    "finetune": ("finetune", "finetune"),
    "eval-seg": ("evaluate", "eval_seg"),
    "ui": ("ui", "ui"),
    "eval-kshot": ("evaluate", "eval_kshot"),
    "eval-retrieval": ("evaluate", "eval_retrieval"),
    "eval-instances": ("evaluate", "eval_instances"),
    "refs": ("refs", "refs_app"),
    "export": ("export", "export_app"),
    "review": ("review", "review_app"),
    "map": ("pattern", "map_"),
    "convergence": ("pattern", "convergence"),
}


@lru_cache(maxsize=None)
def _load(name: str) -> click.Command:
    module, attr = COMMANDS[name]
    target = getattr(importlib.import_module(f"sst_search.commands.{module}"), attr)
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    return command


@lru_cache(maxsize=None)
def _summary(name: str) -> str:
    """First docstring paragraph of a command function, or the ``help=`` of a sub-Typer, from the source."""
    module, attr = COMMANDS[name]
    tree = ast.parse((Path(__file__).parent / "commands" / f"{module}.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == attr:
            return " ".join((ast.get_docstring(node) or "").strip().split("\n\n")[0].split())
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == attr for t in node.targets):
            for kw in getattr(node.value, "keywords", []):
                if kw.arg == "help" and isinstance(kw.value, ast.Constant):
                    return str(kw.value.value)
    return ""


class LazyCommands(TyperGroup):
    """A group whose commands are imported when resolved; the help list uses stand-ins."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS) + [n for n in super().list_commands(ctx) if n not in COMMANDS]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:  # registered the usual way (app.command()), imported with this module
            return super().get_command(ctx, name)
        if self._listing:
            return click.Command(name, help=_summary(name))
        return _load(name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(cls=LazyCommands, add_completion=False, no_args_is_help=True,
                  help="Trait segmentation and search for natural-history collections.")


@app.callback()
def _root() -> None:
    """Trait segmentation and search for natural-history collections."""


def main() -> None:
    """The ``sst-search`` entry point. At exit the interpreter's last garbage collection walks
    every object torch and the model libraries created, about half a second for a command
    that built a model, and finds nothing the process's end would not free anyway: the
    objects alive when the command returns are frozen out of it."""
    try:
        app()
    finally:
        gc.freeze()


if __name__ == "__main__":
    main()
