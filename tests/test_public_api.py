"""The public surface (``sst_search.__all__``) is what the package really exports, the app
imports nothing else from the library, and the layers point one way."""

from __future__ import annotations

import ast
import re
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
        if not re.search(r"\b(ui|indexer)\b", path.read_text(encoding="utf-8")):
            continue  # cannot import either; parsing every module would cost seconds
        for line, module, _ in _imports(path):
            if module.split(".")[0] in ("ui", "indexer"):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)
    # The public surface names the batch layer's entry points by string, resolved on demand only.
    batch = {name for name, module in sst_search._EXPORTS.items() if module.split(".")[0] == "indexer"}
    assert batch == {"index", "RunSummary", "MassRemovalError", "CollectionError"}


def _readme_python_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python API\n", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_readme_python_api_example_runs(tmp_path, monkeypatch, tracker):
    """The README's example, as written, in a folder laid out as it says (two groups of a
    synthetic collection, a config for SAM 2 with random weights at the test size). The
    tracker that config describes is the session's, already built, instead of a second one."""
    import shutil

    import yaml

    from sst_search.synthetic import generate_collection
    from tests.fixtures import random_weights_settings

    coll = generate_collection(tmp_path / "synthetic", species=6, per_species=2, seed=3)
    work = tmp_path / "work"
    for group in ("erato", "hydara"):
        shutil.copytree(coll.root / "images" / group, work / "photos" / group)
        shutil.copytree(coll.references / group, work / "references" / group)
    (work / "config.yaml").write_text(yaml.safe_dump(random_weights_settings()))
    monkeypatch.chdir(work)

    def session_tracker(seg):
        assert (seg.model, seg.weights, seg.image_size) == (tracker.model, "random", tracker.predictor.image_size)
        return tracker

    monkeypatch.setattr(sst_search, "tracker_from_config", session_tracker)
    namespace: dict = {}
    exec(compile(_readme_python_example(), "README.md (Python API)", "exec"), namespace)

    assert namespace["summary"].counts["indexed"] == 4
    assert all(hit.group == "hydara" for hit in namespace["hits"])
    assert len(namespace["table"]) and (work / "measurements.csv").stat().st_size > 0
    assert namespace["result"].label_map.shape == namespace["image"].shape[:2]
    assert all(row["unit"] == "mm" for row in namespace["rows"])


def test_segment_names_an_image_it_cannot_read(tmp_path, tracker, references):
    import pytest

    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match="missing.png"):
        sst_search.segment(missing, next(iter(references.values())), tracker=tracker)
