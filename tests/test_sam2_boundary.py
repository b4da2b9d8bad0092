"""Only sst_search/sam2_predictor/ touches SAM 2's internals.

SAM 2's inference state (a dict of per-object outputs, cached features, id maps) and its
private methods change between releases without notice. The package's interface is what
tracking, instance finding, labeling and fine-tuning may use; this scan of the source
fails when any other module of the library or its apps imports ``sam2``, reads or writes a
key of SAM 2's state or output dicts, calls a private method of SAM 2 or drives SAM 2's
video predictor through its state-level methods. The vocabulary comes from SAM 2's own
source, so a new key or method is covered without editing this file.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = ROOT / "sst_search" / "sam2_predictor"
#: The library and the apps built on it; tests and benchmarks compare against the official
#: predictor and may use SAM 2 directly.
SCANNED = ("sst_search", "indexer", "ui")
#: Public methods of SAM 2's video predictor and model that are no state-level work: every
#: ``nn.Module`` has ``forward`` and ``device``, and ``from_pretrained`` only builds a model.
NOT_STATE_METHODS = {"forward", "device", "from_pretrained"}


def _sam2_trees() -> dict[str, ast.Module]:
    root = Path(importlib.util.find_spec("sam2").origin).parent
    return {str(f.relative_to(root)): ast.parse(f.read_text()) for f in root.rglob("*.py")}


@cache
def sam2_vocabulary() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """``(state keys, private names, state-level methods)`` as SAM 2's source defines them.

    State keys are the string keys the video predictor and ``SAM2Base`` subscript or put in
    dict literals (the inference state, per-frame outputs, backbone outputs); compound
    names only, since single words such as ``images`` or ``device`` are everyone's.
    """
    trees = _sam2_trees()
    keys: set[str] = set()
    for name in ("sam2_video_predictor.py", "modeling/sam2_base.py"):
        for node in ast.walk(trees[name]):
            found = [node.slice] if isinstance(node, ast.Subscript) else node.keys if isinstance(node, ast.Dict) else []
            keys.update(k.value for k in found if isinstance(k, ast.Constant) and isinstance(k.value, str))
    private: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                private.update(b.name for b in node.body if isinstance(b, ast.FunctionDef) and _is_private(b.name))
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _is_private(node.attr):
                private.add(node.attr)
    methods: set[str] = set()
    for name, cls in (("sam2_video_predictor.py", "SAM2VideoPredictor"), ("modeling/sam2_base.py", "SAM2Base")):
        (body,) = [n.body for n in trees[name].body if isinstance(n, ast.ClassDef) and n.name == cls]
        methods.update(b.name for b in body if isinstance(b, ast.FunctionDef) and not b.name.startswith("_"))
    return frozenset(k for k in keys if "_" in k), frozenset(private), frozenset(methods - NOT_STATE_METHODS)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@cache
def _any_name() -> re.Pattern:
    """Every access the scan looks for spells one of these words, so a module without any
    of them needs no parsing."""
    words = "|".join(sorted(set().union(*sam2_vocabulary())))
    return re.compile(rf"\b(sam2|{words})\b")


def violations(source: str) -> list[str]:
    """Where ``source`` (one module) reaches into SAM 2, one line per place."""
    if not _any_name().search(source):
        return []
    keys, private, methods = sam2_vocabulary()
    tree = ast.parse(source)
    # A module's own names (its methods, its attributes) are its own business, even when
    # SAM 2 happens to use the same name.
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    own |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
    docstrings = {
        id(n.body[0].value) for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: imports {a.name}" for a in node.names if a.name.split(".")[0] == "sam2"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "sam2":
            found.append(f"{where}: imports from {node.module}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys and id(node) not in docstrings:
            found.append(f"{where}: SAM 2 state key {node.value!r}")
        elif isinstance(node, ast.Attribute) and node.attr not in own:
            if node.attr in private:
                found.append(f"{where}: SAM 2 private member .{node.attr}")
            elif node.attr in methods:
                found.append(f"{where}: SAM 2 state-level method .{node.attr}")
    return found


def test_no_module_outside_the_sam2_package_touches_sam2_internals():
    files = [f for d in SCANNED for f in sorted((ROOT / d).rglob("*.py")) if BOUNDARY not in f.parents]
    assert len(files) > 50  # the scan really read the library
    offences = {str(f.relative_to(ROOT)): v for f in files if (v := violations(f.read_text()))}
    assert not offences, f"SAM 2 internals outside {BOUNDARY.relative_to(ROOT)}/: {offences}"


def test_the_scan_finds_what_tracking_and_fine_tuning_used_to_do():
    """The kinds of access tracking.py and finetune/roundtrip.py had before the boundary."""
    source = '''
from sam2.modeling.sam2_base import NO_OBJ_SCORE
import sam2.build_sam

def conditioning(state, predictor, model, frame_idx):
    out = state["output_dict_per_obj"][0]["cond_frame_outputs"].get(frame_idx)
    predictor.propagate_in_video_preflight(state)
    memory = {"non_cond_frame_outputs": {}}
    return model._encode_new_memory(out["pred_masks"]), model.track_step(memory)
'''
    found = violations(source)
    for expected in ("imports from sam2.modeling.sam2_base", "imports sam2.build_sam", "'output_dict_per_obj'",
                     "'cond_frame_outputs'", "'non_cond_frame_outputs'", "'pred_masks'", "._encode_new_memory",
                     ".propagate_in_video_preflight", ".track_step"):
        assert any(expected in v for v in found), (expected, found)
    # A module's own private members and everyday words are not SAM 2's.
    assert violations('class C:\n    def _track_step(self):\n        return self._track_step, {"images": 1}["images"]\n') == []


def test_the_sam2_package_itself_uses_what_the_scan_looks_for():
    """The vocabulary is SAM 2's: the boundary package, which must use it, is flagged."""
    found = [v for f in BOUNDARY.glob("*.py") for v in violations(f.read_text())]
    for expected in ("imports from sam2", "'obj_id_to_idx'", "._run_single_frame_inference", ".track_step"):
        assert any(expected in v for v in found), (expected, found)
