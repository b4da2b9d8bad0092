"""The public surface (``sst_search.__all__``) is what the package really exports, the app
imports nothing else from the library, and the layers point one way."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import sst_search

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import in a file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def test_import_sst_search_imports_none_of_its_modules():
    """Names load on first use, so the CLI's start-up and ``import sst_search`` stay light."""
    script = "import sys, sst_search; print(sorted(m for m in sys.modules if m.startswith('sst_search.')))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_all_is_exactly_what_the_package_exports():
    names = {name: getattr(sst_search, name) for name in sst_search.__all__}
    assert sorted(n for n, v in names.items() if isinstance(v, types.ModuleType)) == sorted(sst_search._MODULES)
    # Every other public attribute is in __all__: nothing is exported by accident.
    public = {n for n, v in vars(sst_search).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public == set(sst_search.__all__) - set(sst_search._MODULES)
    assert set(sst_search.__all__) <= set(dir(sst_search))
    assert sst_search.__all__ == sorted(set(sst_search.__all__))


def test_no_public_name_is_shadowed_by_a_submodule_of_the_same_name():
    """Importing ``sst_search.X`` binds the module X on the package, over a function X."""
    package = ROOT / "sst_search"
    for name in sst_search._EXPORTS:
        assert not (package / f"{name}.py").exists() and not (package / name).is_dir(), name


def test_index_and_segment_are_public_and_take_keywords():
    import inspect

    index = inspect.signature(sst_search.index)
    assert index.parameters["config"].default is None
    assert all(p.kind is p.KEYWORD_ONLY for n, p in index.parameters.items()
               if n not in ("collection", "references", "db", "config"))
    assert inspect.signature(sst_search.segment).parameters["tracker"].kind is inspect.Parameter.KEYWORD_ONLY


def test_ui_imports_only_public_names_of_sst_search():
    public = set(sst_search.__all__)
    wrong = []
    for path in sorted((ROOT / "ui").rglob("*.py")):
        for line, module, names in _imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module.startswith("sst_search."):
                wrong.append(f"{where} reaches into {module}")
            elif module == "sst_search":
                wrong += [f"{where} imports {n}, not in sst_search.__all__" for n in names if n not in public]
    assert not wrong, "\n".join(wrong)


def test_the_library_never_imports_the_layers_above_it():
    wrong = []
    for path in sorted((ROOT / "sst_search").rglob("*.py")):
        if "commands" in path.relative_to(ROOT / "sst_search").parts:
            continue  # the CLI is the one layer that may import the app
        for line, module, _ in _imports(path):
            if module.split(".")[0] in ("ui", "indexer"):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)
