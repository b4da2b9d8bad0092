"""The bad-input battery: one bad item of each kind added to an indexed collection.

Every case asserts the same three things: the four items indexed before are still indexed
(nothing indexed is lost), the run publishes a snapshot that verifies (nothing damaged is
published), and the bad item is reported as failed with a reason that names its file (or
group). One indexed collection is built per module; each case restores the store from a
pristine copy and runs one incremental index.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.job import run_index
from sst_search.store import Store
from sst_search.store.snapshots import current_version, is_verified, versions_dir
from sst_search.store.verify import verify_files
from sst_search.synthetic import generate_collection
from tests.fixtures import random_weights_config
from tests.hostile import png_header

CONFIG = random_weights_config()


def _png(path: Path, size=(48, 40), mode="RGB", fill=180) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, fill).save(path, format="PNG")
    return path


def _png_bytes(**kw) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new(kw.get("mode", "RGB"), kw.get("size", (48, 40)), 120).save(buf, format=kw.get("format", "PNG"))
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """An RGB PNG whose header claims ``width`` x ``height`` with almost no pixel data behind it."""
    return png_header(width, height, colour_type=2)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _refs(root: Path, group: str, traits: str | None = "1: band\n", mask=None, image_size=(48, 40)) -> None:
    """A references folder for ``group`` (valid unless the arguments spoil it)."""
    folder = root / "references" / group
    folder.mkdir(parents=True)
    if traits is not None:
        (folder / "traits.yaml").write_text(traits)
    _png(folder / "ref.png", image_size)
    if mask is None:
        mask = np.zeros(image_size[::-1], np.uint8)
        mask[5:20, 5:20] = 1
    Image.fromarray(mask).save(folder / "ref.mask.png")


# Each case makes its bad item under ``d`` (a fresh folder inside the collection) and returns
# (manifest path, group, text the failure reason must contain).
def _symlink_loop(d):
    d.mkdir()
    os.symlink(d / "b.png", d / "a.png")
    os.symlink(d / "a.png", d / "b.png")
    return f"{d.name}/a.png", "alba", "a.png"


def _fifo(d):
    d.mkdir()
    os.mkfifo(d / "pipe.png")
    return f"{d.name}/pipe.png", "alba", "FIFO"


def _dangling(d):
    d.mkdir()
    os.symlink(d / "nowhere.png", d / "dangling.png")
    return f"{d.name}/dangling.png", "alba", "dangling.png"


def _directory(d):
    (d / "folder.png").mkdir(parents=True)
    return f"{d.name}/folder.png", "alba", "directory"


def _sparse_huge(d):
    d.mkdir()
    with open(d / "huge.png", "wb") as fh:
        fh.truncate(3 << 30)  # sparse: costs no disk, must never be read
    return f"{d.name}/huge.png", "alba", "over the limit"


def _bytes_case(name: str, data: bytes, needle: str):
    def make(d):
        _write(d / name, data)
        return f"{d.name}/{name}", "alba", needle
    return make


def _pil_case(name: str, fmt: str, mode: str = "RGB"):
    def make(d):
        _write(d / name, _png_bytes(format=fmt, mode=mode))
        return f"{d.name}/{name}", "alba", "allowed format"
    return make


def _alias(path: str):
    def make(d):
        return path, "alba", "same file"
    return make


def _symlink_alias(d):
    d.mkdir()
    os.symlink(d.parent / "images/alba/alba-002.png", d / "alias.png")
    return f"{d.name}/alias.png", "alba", "same file"


def _group(group: str, needle: str):
    def make(d):
        _png(d / "x.png")
        return f"{d.name}/x.png", group, needle
    return make


def _broken_refs(**spoil):
    def make(d):
        _refs(d.parent, d.name, **spoil)
        _png(d / "x.png")
        return f"{d.name}/x.png", d.name, f"references/{d.name}"
    return make


def _provided_mask(mask: np.ndarray | bytes, needle: str):
    def make(d):
        stem = d.name
        _png(d / f"{stem}.png")
        target = d.parent / "ground_truth" / "alba" / f"{stem}.png"
        if isinstance(mask, bytes):
            _write(target, mask)
        else:
            Image.fromarray(mask).save(target)
        return f"{d.name}/{stem}.png", "alba", needle
    return make


_TRUNCATED_PNG = _png_bytes(size=(64, 64))[:80]
_JPEG = _png_bytes(format="JPEG", size=(64, 64))

CASES = {
    "empty": _bytes_case("empty.png", b"", "empty"),
    "text_as_png": _bytes_case("text.png", b"just some text\n", "not a readable image"),
    "random_bytes": _bytes_case("noise.png", bytes(range(256)) * 8, "not a readable image"),
    "truncated_png": _bytes_case("trunc.png", _TRUNCATED_PNG, "trunc.png"),
    "truncated_jpeg": _bytes_case("trunc.jpg", _JPEG[: len(_JPEG) // 3], "trunc.jpg"),
    "jpeg_header_only": _bytes_case("head.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "head.jpg"),
    "tiff_bad_ifd": _bytes_case("bad.tif", b"II*\x00\xff\xff\xff\x7f" + b"\0" * 64, "bad.tif"),
    "gif_truncated": _bytes_case("t.gif", _png_bytes(format="GIF")[:30], "t.gif"),
    "eps_as_png": _bytes_case("ps.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "allowed format"),
    "pdf_as_png": _bytes_case("doc.png", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", "allowed format"),
    "svg_as_png": _bytes_case("v.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "allowed format"),
    "psd_as_png": _bytes_case("p.png", b"8BPS\x00\x01" + b"\0" * 40, "allowed format"),
    "camera_raw": _bytes_case("shot.CR2", b"II*\x00\x10\x00\x00\x00CR\x02\x00" + b"\0" * 32, "camera raw"),
    "ico_as_png": _pil_case("icon.png", "ICO", "RGBA"),
    "pcx_as_png": _pil_case("pcx.png", "PCX"),
    "tga_as_png": _pil_case("tga.png", "TGA"),
    "header_over_250mp": _bytes_case("bomb.png", _png_header(20_000, 20_000), "exceeds the limit"),
    "zero_width_png": _bytes_case("zero.png", _png_header(0, 10), "zero.png"),
    "sparse_3gb": _sparse_huge,
    "directory": _directory,
    "fifo": _fifo,
    "dev_zero": lambda d: ("/dev/zero", "alba", "device"),
    "dev_null": lambda d: ("/dev/null", "alba", "device"),
    "etc_passwd": lambda d: ("/etc/passwd", "alba", "/etc/passwd"),
    "missing": lambda d: (f"{d.name}/not-there.png", "alba", "does not exist"),
    "dangling_symlink": _dangling,
    "symlink_loop": _symlink_loop,
    "newline_in_name": _bytes_case("bad\nname.png", b"garbage", "name.png"),
    "markdown_in_name": _bytes_case("x `code` ![i](http:e).png", b"garbage", "![i](http:e).png"),
    "dot_slash_alias": _alias("./images/alba/alba-001.png"),
    "dotdot_alias": _alias("images/alba/../alba/alba-001.png"),
    "symlink_alias": _symlink_alias,
    "group_dotdot": _group("../alba", "../alba"),
    "group_slash": _group("alba/x", "alba/x"),
    "group_absolute": _group("/etc", "/etc"),
    "group_dot": _group(".", "group name"),
    "group_unknown": _group("nosuchgroup", "nosuchgroup"),
    "no_group": _group("", "no group"),
    "refs_yaml_typo": _broken_refs(traits="1: band\n  2: bar: [\n"),
    "refs_no_traits_file": _broken_refs(traits=None),
    "refs_empty_mask": _broken_refs(mask=np.zeros((40, 48), np.uint8)),
    "refs_mask_size": _broken_refs(mask=np.ones((10, 10), np.uint8)),
    "refs_undeclared_trait": _broken_refs(mask=np.full((40, 48), 7, np.uint8)),
    "mask_wrong_size": _provided_mask(np.ones((5, 5), np.uint8), "differs"),
    "mask_undeclared_ids": _provided_mask(np.full((40, 48), 9, np.uint8), "not declared"),
    "mask_rgb": _provided_mask(np.zeros((40, 48, 3), np.uint8), "single-channel"),
    "mask_garbage": _provided_mask(b"not a png at all", "not a readable image"),
}


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    """Index four good items, then add one bad item of every kind and index again."""
    root = tmp_path_factory.mktemp("battery")
    coll = generate_collection(root / "syn", species=1, per_species=4, seed=11)
    db = root / "db.duckdb"
    run_index(coll.manifest, coll.references, db, CONFIG, masks=coll.ground_truth)
    with Store.open(db, read_only=True) as store:
        indexed = store.filter_specimens()
    before = current_version(db)
    with open(coll.manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    paths = {}
    for kind, make in CASES.items():
        path, group, needle = make(coll.root / f"bad-{kind}")
        paths[kind] = (path, needle)
        rows.append({**rows[0], "path": path, "group": group, "catalogNumber": f"BAD-{kind}"})
    with open(coll.manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = run_index(coll.manifest, coll.references, db, CONFIG, masks=coll.ground_truth)
    return coll, db, indexed, before, summary, paths


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_bad_item_fails_alone_with_a_reason_naming_it(battery, kind):
    coll, _, _, _, summary, paths = battery
    path, needle = paths[kind]
    full = path if path.startswith("/") else os.path.normpath(coll.root / path)  # keys are normalised
    reasons = [reason for p, reason in summary.failures if p == full]
    assert reasons and all(needle in r for r in reasons), (full, summary.failures)


def test_bad_items_lose_nothing_indexed_and_publish_nothing_damaged(battery):
    _, db, indexed, before, summary, _ = battery
    assert summary.exit_code == 1
    assert summary.counts["unchanged"] == 4 and summary.counts["indexed"] == 0, summary.counts
    assert summary.counts["failed"] + summary.counts["no_reference"] == len(CASES) == len(summary.failures)
    with Store.open(db, read_only=True) as store:
        assert store.filter_specimens() == indexed
        for sid in indexed:
            assert store.get_vectors("color-pattern", "__specimen__", [sid])[0].tolist() == [sid]
        assert store.check_consistency() == []
    version = current_version(db)
    assert version != before and is_verified(db, version)
    assert verify_files(versions_dir(db) / version / db.name) == []
