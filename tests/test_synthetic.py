"""The synthetic collection is the ground truth other tests measure against, so it must be
reproducible, exactly labeled and actually varied."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from sst_search.commands.synth import synth
from sst_search.images import load_image, load_mask
from sst_search.references import load_references, load_traits
from sst_search.synthetic import MAX_SPECIES, generate_collection, species_traits

COLUMNS = ["path", "group", "catalogNumber", "scientificName", "institutionCode", "eventDate", "locality", "pixelsPerMM"]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def coll(tmp_path_factory):
    return generate_collection(tmp_path_factory.mktemp("syn"), species=3, per_species=4, seed=0)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path, coll):
    again = generate_collection(tmp_path / "a", species=3, per_species=4, seed=0)
    other = generate_collection(tmp_path / "b", species=3, per_species=4, seed=1)
    first, second, third = _files(coll.root), _files(again.root), _files(other.root)
    assert len(first) == 3 * 4 * 2 + 3 * 3 + 1
    assert first == second
    assert first.keys() == third.keys()
    images = [k for k in first if k.startswith(("images/", "references/")) and k.endswith(".png")]
    assert all(first[k] != third[k] for k in images)
    assert first["manifest.csv"] != third["manifest.csv"]


def test_more_specimens_leave_existing_ones_unchanged(tmp_path, coll):
    bigger = generate_collection(tmp_path, species=4, per_species=5, seed=0)
    before, after = _files(coll.root), _files(bigger.root)
    assert {k: v for k, v in after.items() if k in before and k != "manifest.csv"} == {
        k: v for k, v in before.items() if k != "manifest.csv"
    }


def test_masks_align_and_only_hold_declared_traits(coll):
    rows = _rows(coll.manifest)
    for row in rows:
        image = load_image(coll.root / row["path"])
        assert image.shape == (192, 256, 3)
        mask = load_mask(coll.ground_truth / row["group"] / Path(row["path"]).name, shape=image.shape[:2])
        declared = set(load_traits(coll.references / row["group"] / "traits.yaml"))
        assert declared == set(range(1, len(declared) + 1)) and 2 <= len(declared) <= 4
        present = set(np.unique(mask).tolist()) - {0}
        assert present and present <= declared
        # Trait pixels are painted on the specimen, not on the light background.
        assert image[mask > 0].mean() < image[0:4, 0:4].mean()


def test_mask_pixels_are_painted_in_the_trait_colour(coll):
    """Exact alignment: the trait's colour stops where its mask stops (away from the blur)."""
    image = load_image(coll.root / "images/alba/alba-000.png").astype(float)
    mask = load_mask(coll.ground_truth / "alba/alba-000.png")
    band = mask == 1  # alba's forewing band is near-white on a near-black wing
    assert image[band].mean() > 200
    grown = np.zeros_like(band)
    grown[1:-1, 1:-1] = band[:-2, 1:-1] | band[2:, 1:-1] | band[1:-1, :-2] | band[1:-1, 2:]
    outside = grown & ~band & (mask == 0)
    assert image[outside].mean() < image[band].mean() - 40


def test_references_load_one_per_group(coll):
    refs = load_references(coll.references)
    assert list(refs) == coll.groups == ["alba", "cyrbia", "dora"]
    for group, supports in refs.items():
        assert len(supports) == 1
        support = supports[0]
        assert support.image.shape == (192, 256, 3)
        assert support.trait_ids == sorted(species_traits(group))
        assert {t.name for t in support.traits.values()} == {t.name for t in species_traits(group).values()}
    stems = {Path(r["path"]).stem for r in _rows(coll.manifest)}
    assert not stems & {s.id for supports in refs.values() for s in supports}


def test_manifest_columns_rows_and_awkward_locality(coll):
    rows = _rows(coll.manifest)
    assert list(rows[0]) == COLUMNS
    assert len(rows) == 12
    assert [r["group"] for r in rows] == [g for g in coll.groups for _ in range(4)]
    assert len({r["catalogNumber"] for r in rows}) == 12
    assert all(r["catalogNumber"].startswith("SYN-") for r in rows)
    assert all(r["scientificName"].endswith(" " + r["group"]) for r in rows)
    assert all((coll.root / r["path"]).is_file() for r in rows)
    assert any("'" in r["locality"] and '"' in r["locality"] for r in rows)
    assert all(date.fromisoformat(r["eventDate"]) for r in rows)


def test_specimens_of_a_species_vary(coll):
    a = load_mask(coll.ground_truth / "cyrbia/cyrbia-000.png")
    b = load_mask(coll.ground_truth / "cyrbia/cyrbia-001.png")
    assert set(np.unique(a).tolist()) == set(np.unique(b).tolist())
    assert (a != b).mean() > 0.005
    ia = load_image(coll.root / "images/cyrbia/cyrbia-000.png")
    ib = load_image(coll.root / "images/cyrbia/cyrbia-001.png")
    assert not np.array_equal(ia, ib)


def test_trait_colour_separates_all_species(tmp_path):
    coll = generate_collection(tmp_path, species=MAX_SPECIES, per_species=3, seed=0)
    feats: dict[str, list[np.ndarray]] = {}
    for row in _rows(coll.manifest):
        image = load_image(coll.root / row["path"]).astype(float)
        mask = load_mask(coll.ground_truth / row["group"] / Path(row["path"]).name)
        feats.setdefault(row["group"], []).append(image[mask > 0].mean(axis=0))
    centres = {g: np.mean(v, axis=0) for g, v in feats.items()}
    for group, vectors in feats.items():
        for v in vectors:
            nearest = min(centres, key=lambda g: np.linalg.norm(v - centres[g]))
            assert nearest == group


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="species"):
        generate_collection(tmp_path, species=MAX_SPECIES + 1)
    with pytest.raises(ValueError, match="per_species"):
        generate_collection(tmp_path, per_species=0)
    with pytest.raises(ValueError, match="unknown synthetic species"):
        species_traits("nope")


def test_synth_command(tmp_path):
    app = typer.Typer()
    app.command()(synth)
    result = CliRunner().invoke(app, [str(tmp_path), "--species", "2", "--per-species", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "alba" in result.output and "forewing_band" in result.output
    assert len(_rows(tmp_path / "manifest.csv")) == 4
    assert CliRunner().invoke(app, [str(tmp_path / "x"), "--species", "0"]).exit_code != 0


# -- drawers -------------------------------------------------------------------------------


def test_drawers_hold_the_requested_specimens_apart_and_exactly_labeled(tmp_path):
    from sst_search.references import load_instance_references
    from sst_search.synthetic import (
        MAX_DRAWER_SPECIMENS,
        generate_drawers,
        render_drawer,
    )

    out = generate_drawers(tmp_path, counts=(0, 1, 5, MAX_DRAWER_SPECIMENS), size=(192, 256))
    rows = _rows(out.manifest)
    assert [r["path"] for r in rows] == [f"images/drawer-{i:03d}.png" for i in range(4)]
    assert len({r["catalogNumber"] for r in rows}) == 4
    sizes = []
    for row, count in zip(rows, out.counts):
        stem = Path(row["path"]).stem
        image = load_image(out.root / row["path"])
        instances = load_mask(out.ground_truth / "instances" / f"{stem}.png")
        traits = load_mask(out.ground_truth / "traits" / f"{stem}.png")
        assert image.shape == (192, 256, 3)
        assert set(np.unique(instances).tolist()) == set(range(count + 1))
        assert not (traits > 0)[instances == 0].any()  # traits lie on specimens
        foam = image[instances == 0].astype(float).mean()
        for k in range(1, count + 1):
            m = instances == k
            ys, xs = np.nonzero(m)
            sizes.append(m.sum())
            assert image[m].astype(float).mean() < foam - 40  # alba is dark on light foam
            assert (traits[m] > 0).any()
            # One specimen per cell: boxes never overlap another specimen's pixels.
            box = instances[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            assert set(np.unique(box).tolist()) <= {0, k}
    assert max(sizes) > 1.5 * min(sizes)  # sizes vary
    (ref,) = load_instance_references(out.instance_references)
    assert ref.kind == "specimen" and ref.instance_ids == [1, 2, 3, 4]
    a, b = render_drawer("alba", 3, seed=0, index=1), render_drawer("alba", 3, seed=0, index=1)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instances, b.instances)
    assert not np.array_equal(a.instances, render_drawer("alba", 3, seed=0, index=2).instances)
    with pytest.raises(ValueError, match="count"):
        render_drawer("alba", MAX_DRAWER_SPECIMENS + 1)


def test_synth_drawers_command(tmp_path):
    app = typer.Typer()
    app.command()(synth)
    result = CliRunner().invoke(app, [str(tmp_path), "--drawers", "0,2"])
    assert result.exit_code == 0, result.output
    assert len(_rows(tmp_path / "manifest.csv")) == 2
    assert load_references(tmp_path / "references").keys() == {"alba"}  # instances are not a trait group
    assert (tmp_path / "references" / "instances" / "traits.yaml").read_text().startswith("instance_of: specimen")
    assert CliRunner().invoke(app, [str(tmp_path / "x"), "--drawers", "13"]).exit_code != 0
