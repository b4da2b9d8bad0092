"""A mislabeled reference must fail at load time, naming the file, not hours into indexing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sst_search.images import save_image, save_mask
from sst_search.references import (
    MASK_SUFFIX,
    TRAITS_FILE,
    ReferencesError,
    Support,
    Trait,
    load_group_references,
    load_instance_references,
    load_instance_spec,
    load_references,
    load_support,
    load_traits,
    references_fingerprint,
    write_instance_spec,
    write_traits,
)

H, W = 12, 16


def _image(seed: int = 0, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _mask(ids: tuple[int, ...] = (1, 2), shape: tuple[int, int] = (H, W)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for k, tid in enumerate(ids):
        mask[2 + 3 * k : 4 + 3 * k, 2:10] = tid
    return mask


def _support(folder: Path, stem: str, *, ids=(1, 2), seed=0, mask_shape=(H, W)) -> tuple[Path, Path]:
    image, mask = folder / f"{stem}.png", folder / f"{stem}{MASK_SUFFIX}"
    save_image(image, _image(seed))
    save_mask(mask, _mask(ids, mask_shape))
    return image, mask


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / TRAITS_FILE
    path.write_text(text)
    return path


TWO = {1: Trait(id=1, name="forewing_band"), 2: Trait(id=2, name="hindwing_spot")}


# --- traits.yaml ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "1: forewing_band\n2: hindwing_spot\n",
        "1: {name: forewing_band, description: red band}\n2: {name: hindwing_spot}\n",
        "traits:\n  1: forewing_band\n  2:\n    name: hindwing_spot\n    description: yellow spot\n",
    ],
    ids=["plain", "dicts", "traits-key"],
)
def test_traits_formats(tmp_path, text):
    traits = load_traits(_yaml(tmp_path, text))
    assert sorted(traits) == [1, 2]
    assert [t.name for t in traits.values()] == ["forewing_band", "hindwing_spot"]
    assert all(t.id == k for k, t in traits.items())


def test_traits_descriptions_round_trip(tmp_path):
    traits = {
        1: Trait(id=1, name="forewing_band", description="red band: it's \"wide\""),
        3: Trait(id=3, name="discal_patch"),
    }
    write_traits(tmp_path / TRAITS_FILE, traits)
    assert load_traits(tmp_path / TRAITS_FILE) == traits


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1: [unclosed\n", "not valid YAML"),
        ("", "expected a mapping"),
        ("- forewing_band\n", "expected a mapping"),
        ("traits: {}\n", "expected a mapping"),
        ("0: background\n", "trait 0 is invalid"),
        ("256: too_big\n", "trait 256 is invalid"),
        ("band: 1\n", "trait 'band' is invalid"),
        ("1: 5\n", "trait 1 is invalid"),
        ("1: {description: no name}\n", "trait 1 is invalid"),
        ("1: band\n2: band\n", r"unique, repeated: \['band'\]"),
        ("1: band\n'1': spot\n", "trait id 1 is declared twice"),
    ],
)
def test_bad_traits_files_name_the_file(tmp_path, text, reason):
    path = _yaml(tmp_path, text)
    with pytest.raises(ReferencesError, match=reason) as err:
        load_traits(path)
    assert str(path) in str(err.value)


def test_missing_traits_file(tmp_path):
    with pytest.raises(ReferencesError, match="traits file does not exist"):
        load_traits(tmp_path / TRAITS_FILE)


# --- one support ------------------------------------------------------------------------


def test_support_loads_with_traits_and_without(tmp_path):
    image, mask = _support(tmp_path, "ref")
    support = load_support(image, mask, TWO)
    assert support.id == "ref" and support.trait_ids == [1, 2]
    assert support.image.shape == (H, W, 3) and support.mask.shape == (H, W)
    assert support.traits[1].name == "forewing_band"

    anonymous = load_support(image, mask)
    assert {k: t.name for k, t in anonymous.traits.items()} == {1: "trait_1", 2: "trait_2"}

    write_traits(tmp_path / TRAITS_FILE, TWO)
    assert load_support(image, mask, tmp_path / TRAITS_FILE).traits == TWO


def test_declared_but_absent_trait_is_allowed(tmp_path):
    image, mask = _support(tmp_path, "ref", ids=(2,))
    support = load_support(image, mask, TWO)
    assert support.trait_ids == [2] and sorted(support.traits) == [1, 2]


def test_mask_size_must_match_image(tmp_path):
    image, mask = _support(tmp_path, "ref", mask_shape=(H, W + 2))
    with pytest.raises(ReferencesError, match=f"mask size {W + 2}x{H} differs from image size {W}x{H}") as err:
        load_support(image, mask, TWO)
    assert str(mask) in str(err.value)


def test_undeclared_mask_ids_are_listed(tmp_path):
    image, mask = _support(tmp_path, "ref", ids=(1, 2, 7, 9))
    with pytest.raises(ReferencesError, match=r"not declared in traits.yaml: \[7, 9\]") as err:
        load_support(image, mask, TWO)
    assert str(mask) in str(err.value) and "declared: [1, 2]" in str(err.value)


def test_empty_mask_is_rejected(tmp_path):
    image, mask = _support(tmp_path, "ref", ids=())
    with pytest.raises(ReferencesError, match="mask is empty") as err:
        load_support(image, mask, TWO)
    assert str(mask) in str(err.value)


def test_unreadable_support_image_names_the_file(tmp_path):
    image, mask = _support(tmp_path, "ref")
    image.write_text("not a picture")
    with pytest.raises(ReferencesError, match="not a readable image") as err:
        load_support(image, mask, TWO)
    assert str(image) in str(err.value)


def test_rgb_mask_is_rejected(tmp_path):
    image, _ = _support(tmp_path, "ref")
    rgb_mask = tmp_path / f"rgb{MASK_SUFFIX}"
    save_image(rgb_mask, np.repeat(_mask()[..., None], 3, axis=2))
    with pytest.raises(ReferencesError, match="single-channel"):
        load_support(image, rgb_mask, TWO)


# --- group folders ----------------------------------------------------------------------


def test_several_supports_load_in_file_name_order(tmp_path):
    group = tmp_path / "refs" / "alba"
    for stem, seed in (("b_second", 2), ("a_first", 1), ("c_third", 3)):
        _support(group, stem, seed=seed)
    (group / "notes.txt").write_text("photographed 2024")
    write_traits(group / TRAITS_FILE, TWO)
    supports = load_group_references(group)
    assert [s.id for s in supports] == ["a_first", "b_second", "c_third"]
    assert np.array_equal(supports[0].image, _image(1))
    assert all(s.traits == TWO for s in supports)


def test_support_without_mask_is_an_error(tmp_path):
    group = tmp_path / "alba"
    _support(group, "ok")
    save_image(group / "lonely.png", _image())
    write_traits(group / TRAITS_FILE, TWO)
    with pytest.raises(ReferencesError, match=f"has no mask lonely{MASK_SUFFIX}") as err:
        load_group_references(group)
    assert str(group / "lonely.png") in str(err.value)


def test_group_without_supports_is_an_error(tmp_path):
    write_traits(tmp_path / TRAITS_FILE, TWO)
    with pytest.raises(ReferencesError, match="no support images"):
        load_group_references(tmp_path)


def test_load_references_maps_groups_and_skips_other_folders(tmp_path):
    refs = tmp_path / "refs"
    for group, seed in (("cyrbia", 1), ("alba", 2)):
        _support(refs / group, "ref", seed=seed)
        write_traits(refs / group / TRAITS_FILE, TWO)
    (refs / "scratch").mkdir()
    loaded = load_references(refs)
    assert list(loaded) == ["alba", "cyrbia"]
    assert np.array_equal(loaded["alba"][0].image, _image(2))
    with pytest.raises(ReferencesError, match="does not exist"):
        load_references(tmp_path / "nowhere")


def test_fingerprint_follows_pixels_and_names():
    base = Support(id="r", image=_image(), mask=_mask(), traits=TWO)
    same = Support(id="other_id", image=_image(), mask=_mask(), traits=dict(TWO))
    moved = _mask()
    moved[0, 0] = 1
    renamed = {1: Trait(id=1, name="forewing_bar"), 2: TWO[2]}
    fp = references_fingerprint([base])
    assert references_fingerprint([same]) == fp
    assert references_fingerprint([Support(id="r", image=_image(), mask=moved, traits=TWO)]) != fp
    assert references_fingerprint([Support(id="r", image=_image(), mask=_mask(), traits=renamed)]) != fp
    assert references_fingerprint([Support(id="r", image=_image(1), mask=_mask(), traits=TWO)]) != fp
    assert references_fingerprint([base, same]) != fp


# -- instance references ------------------------------------------------------------------


def _instance_folder(root: Path, spec: str, ids=(1, 2, 3), mask_shape=(H, W)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / TRAITS_FILE).write_text(spec)
    save_image(root / "tray.png", _image())
    save_mask(root / f"tray{MASK_SUFFIX}", _mask(ids, mask_shape))
    return root


def test_instance_reference_marks_every_instance(tmp_path):
    folder = _instance_folder(tmp_path / "inst", "instance_of: specimen\n")
    (ref,) = load_instance_references(folder)
    assert ref.kind == "specimen" and ref.instance_ids == [1, 2, 3]
    assert [int(m.sum()) for m in ref.instance_masks()] == [16, 16, 16]
    assert load_instance_spec(folder / TRAITS_FILE).instance_of == "specimen"
    # A trait loader or a references scan never mistakes instances for traits.
    with pytest.raises(ReferencesError, match="declares instances"):
        load_traits(folder / TRAITS_FILE)
    assert load_references(tmp_path) == {}


def test_instance_mask_with_class_map_keeps_only_that_class(tmp_path):
    folder = _instance_folder(tmp_path / "inst", "instance_of: specimen\nclasses: {1: specimen, 2: label, 3: specimen}\n")
    (ref,) = load_instance_references(folder)
    assert ref.instance_ids == [1, 3]
    write_instance_spec(tmp_path / "w" / TRAITS_FILE, "specimen", {1: "specimen", 2: "label"})
    assert load_instance_spec(tmp_path / "w" / TRAITS_FILE).classes == {1: "specimen", 2: "label"}


@pytest.mark.parametrize(
    ("spec", "ids", "shape", "reason"),
    [
        ("instance_of: specimen\nclasses: {1: specimen}\n", (1, 2), (H, W), r"ids \[2\] have no class"),
        ("instance_of: specimen\nclasses: {1: label, 2: label}\n", (1, 2), (H, W), "no instance of 'specimen'"),
        ("instance_of: specimen\n", (1,), (H + 1, W), "differs from image size"),
        ("instance_of: ''\n", (1,), (H, W), "must name a kind"),
        ("instance_of: specimen\ncolour: red\n", (1,), (H, W), "invalid instance declaration"),
        ("{1: wing}\n", (1,), (H, W), "declares traits, not instances"),
    ],
)
def test_bad_instance_references_name_the_file(tmp_path, spec, ids, shape, reason):
    folder = _instance_folder(tmp_path / "inst", spec, ids, shape)
    with pytest.raises(ReferencesError, match=reason) as err:
        load_instance_references(folder)
    assert str(folder) in str(err.value)


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "a\\b", "band\x00", "line\nbreak", " band"])
def test_trait_names_that_would_be_paths_are_refused_in_traits_yaml(tmp_path, name):
    import yaml

    from sst_search.references import ReferencesError, load_traits

    path = tmp_path / "traits.yaml"
    path.write_text(yaml.safe_dump({"traits": {1: "band", 2: name}}))
    with pytest.raises(ReferencesError, match=r"traits\.yaml: trait 2 is invalid.*trait name .* cannot name"):
        load_traits(path)


def test_group_names_follow_one_rule_wherever_they_are_used(tmp_path):
    from sst_search.references import ReferencesError, check_group_name, save_support

    image = np.zeros((8, 8, 3), np.uint8)
    band = np.zeros((8, 8), bool)
    band[2:5, 2:5] = True
    assert check_group_name("Heliconius erato") == "Heliconius erato"
    support = save_support(tmp_path / "refs", "Heliconius erato", "spec", image, {"band": band})  # was refused here
    assert Path(support.image_path).parent == tmp_path / "refs" / "Heliconius erato"
    for bad in ("../x", "/etc", ".."):
        with pytest.raises(ReferencesError, match="cannot name a references folder"):
            check_group_name(bad)
        with pytest.raises(ReferencesError, match="cannot name a references folder"):
            save_support(tmp_path / "refs", bad, "spec", image, {"band": band})
    with pytest.raises(ReferencesError, match="trait name '../band' cannot name"):
        save_support(tmp_path / "refs", "Heliconius erato", "spec2", image, {"../band": band})
    assert sorted(p.name for p in (tmp_path / "refs").iterdir()) == ["Heliconius erato"]


def test_an_annotation_category_that_would_be_a_path_is_refused_before_writing(tmp_path):
    import json

    from sst_search.annotations import AnnotationError, import_annotations
    from tests.hostile import PHOTO, H, W, photo

    photo(tmp_path)
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": PHOTO, "height": H, "width": W}],
                                "categories": [{"id": 1, "name": "../../etc/band"}],
                                "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                                 "segmentation": [[1, 1, 9, 1, 9, 9]]}]}))
    with pytest.raises(AnnotationError, match=r"coco\.json: spec_001\.png: trait name '../../etc/band' cannot name"):
        import_annotations(coco, tmp_path / "refs", "g")
    assert not (tmp_path / "refs").exists()
