"""Image I/O must show pixels as a person sees them, or fail naming the file and why."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sst_search.images as images
from sst_search.images import (
    ImageLoadError,
    load_image,
    load_mask,
    save_image,
    save_mask,
)


def _save(tmp_path: Path, img: Image.Image, name: str, **kw) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_exif_orientation_is_applied(tmp_path):
    # Left half red, right half blue, stored 20 wide x 10 high; Orientation 6 means the
    # camera was turned, so a viewer rotates 90 degrees clockwise: red on top.
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    path = _save(tmp_path, img, "turned.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.shape == (20, 10, 3)
    assert out[:8].mean(axis=(0, 1)) == pytest.approx((255, 0, 0), abs=12)
    assert out[12:].mean(axis=(0, 1)) == pytest.approx((0, 0, 255), abs=12)


@pytest.mark.parametrize(
    ("img", "expected"),
    [
        (Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L"), [(0, 0, 0), (77, 77, 77), (255, 255, 255)]),
        (Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)), [(0, 0, 0), (128, 128, 128), (255, 255, 255)]),
        (
            Image.fromarray(np.array([[[100, 0], [100, 255]]], np.uint8), "LA"),
            [(255, 255, 255), (100, 100, 100)],
        ),
        (
            Image.fromarray(np.array([[[255, 0, 0, 0], [255, 0, 0, 128], [10, 20, 30, 255]]], np.uint8), "RGBA"),
            [(255, 255, 255), (255, 127, 127), (10, 20, 30)],
        ),
        (Image.new("CMYK", (1, 1), (255, 0, 0, 0)), [(0, 255, 255)]),
        (Image.new("CMYK", (1, 1), (0, 0, 0, 255)), [(0, 0, 0)]),
    ],
    ids=["L", "I;16", "LA", "RGBA", "CMYK-cyan", "CMYK-black"],
)
def test_modes_convert_to_rgb(tmp_path, img, expected):
    path = _save(tmp_path, img, "x.tif" if img.mode == "CMYK" else "x.png")
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (1, len(expected), 3)
    assert out[0].tolist() == [list(e) for e in expected]


def test_16bit_png_is_read_as_16bit():
    buf = io.BytesIO()
    Image.fromarray(np.array([[65535]], np.uint16)).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    assert load_image("scan.png", data=buf.getvalue())[0, 0].tolist() == [255, 255, 255]


def test_palette_image_uses_palette_colours(tmp_path):
    img = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    img.putpalette([200, 10, 20, 5, 100, 250] + [0] * 762)
    out = load_image(_save(tmp_path, img, "pal.png"))
    assert out[0].tolist() == [[200, 10, 20], [5, 100, 250]]


def test_transparent_palette_entry_becomes_white(tmp_path):
    img = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    img.putpalette([200, 10, 20, 5, 100, 250] + [0] * 762)
    img.info["transparency"] = 0
    out = load_image(_save(tmp_path, img, "pal.png", transparency=0))
    assert out[0].tolist() == [[255, 255, 255], [5, 100, 250]]


def test_cmyk_jpeg_is_not_inverted(tmp_path):
    path = _save(tmp_path, Image.new("CMYK", (8, 8), (255, 0, 0, 0)), "c.jpg", quality=100)
    assert load_image(path)[4, 4].tolist() == pytest.approx([0, 255, 255], abs=3)


def test_pixel_limit_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    save_image(path, np.zeros((20, 30, 3), np.uint8))
    monkeypatch.setattr(images, "MAX_PIXELS", 500)
    with pytest.raises(ImageLoadError, match="exceeds the limit") as err:
        load_image(path)
    assert str(path) in str(err.value) and "30x20" in str(err.value)
    monkeypatch.setattr(images, "MAX_PIXELS", 600)
    assert load_image(path).shape == (20, 30, 3)


def _bad(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.png"
    if kind == "truncated":
        buf = io.BytesIO()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "text":
        path.write_text("catalogNumber,locality\nSYN-1,somewhere\n")
    elif kind == "empty":
        path.touch()
    elif kind == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "truncated"),
        ("text", "not a readable image"),
        ("empty", "empty"),
        ("missing", "does not exist"),
        ("directory", "directory"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, kind, reason):
    path = _bad(tmp_path, kind)
    for load in (load_image, load_mask):
        with pytest.raises(ImageLoadError, match=reason) as err:
            load(path)
        assert str(path) in str(err.value)
        assert err.value.path == str(path)


def test_empty_upload_bytes_name_the_upload():
    with pytest.raises(ImageLoadError, match="empty") as err:
        load_image("upload.jpg", data=b"")
    assert "upload.jpg" in str(err.value)


def test_raw_camera_file_gets_a_hint(tmp_path):
    path = tmp_path / "IMG_0001.CR2"
    path.write_bytes(b"not a decodable raw file" * 4)
    with pytest.raises(ImageLoadError, match="camera raw"):
        load_image(path)


def test_unreadable_file_is_an_image_load_error(tmp_path, monkeypatch):
    path = tmp_path / "locked.png"
    save_image(path, np.zeros((4, 4, 3), np.uint8))

    def deny(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(ImageLoadError, match="Permission denied") as err:
        load_image(path)
    assert str(path) in str(err.value)


def test_mask_round_trip_and_checks(tmp_path):
    labels = np.array([[0, 1, 2], [3, 0, 255]], np.uint8)
    path = tmp_path / "m.mask.png"
    save_mask(path, labels)
    assert np.array_equal(load_mask(path, shape=(2, 3)), labels)

    with pytest.raises(ImageLoadError, match=r"mask size 3x2 differs from image size 4x2") as err:
        load_mask(path, shape=(2, 4))
    assert str(path) in str(err.value)

    rgb = tmp_path / "rgb.png"
    save_image(rgb, np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ImageLoadError, match="single-channel.*RGB") as err:
        load_mask(rgb)
    assert str(rgb) in str(err.value)

    with pytest.raises(ValueError, match="2-D"):
        save_mask(tmp_path / "bad.png", np.zeros((2, 3, 3), np.uint8))


def test_palette_and_16bit_masks_keep_their_ids(tmp_path):
    pal = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    assert load_mask(_save(tmp_path, pal, "p.png")).tolist() == [[0, 1, 2]]
    wide = _save(tmp_path, Image.fromarray(np.array([[0, 3, 7]], np.uint16)), "w.png")
    assert load_mask(wide).tolist() == [[0, 3, 7]]
    big = _save(tmp_path, Image.fromarray(np.array([[0, 300]], np.uint16)), "big.png")
    with pytest.raises(ImageLoadError, match="0..255"):
        load_mask(big)
