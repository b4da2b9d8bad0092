"""Robust image and label-mask I/O.

Collections come from decades of digitisation: CMYK TIFFs, 16-bit scans, palette PNGs,
phone photos with EXIF rotation, and the occasional truncated upload. Everything that
reads pixels goes through here so that every caller gets RGB uint8 in the orientation a
person sees, or an :class:`ImageLoadError` naming the file and the problem.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest image we decode (pixels). Herbarium sheets at 600 dpi are ~100 MP; anything far
#: beyond that is more likely a decompression bomb than a specimen. ``SST_MAX_PIXELS`` in the
#: environment sets a stricter (or, for a collection of huge scans, looser) limit for every
#: process of a run, Ray workers included.
MAX_PIXELS = int(os.environ.get("SST_MAX_PIXELS") or 250_000_000)
#: PIL warns above its own limit (89 MP) and refuses at twice it; ours is the one that counts.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

#: Largest file we read: a 250 MP 16-bit RGB TIFF stored uncompressed is 1.5 GB.
MAX_FILE_BYTES = 2 << 30

#: The EXIF tag saying how the camera was held.
ORIENTATION = 0x0112

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")

#: The only decoders ever run on collection files: PIL knows ~40 formats, some of which hand
#: the bytes to external programs (EPS to Ghostscript). Uploads get a narrower list.
IMAGE_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP", "GIF")
UPLOAD_FORMATS = ("JPEG", "PNG", "TIFF")

#: Bytes per pixel a decoded image may take, by PIL mode (others count as 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "RGB": 3, "YCbCr": 3,
               "LAB": 3, "HSV": 3, "RGBA": 4, "CMYK": 4, "I": 4, "F": 4}


class ImageLoadError(ValueError):
    """An image or mask could not be used; ``str(err)`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def check_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> int:
    """The size of ``path`` if it is a regular file we may read, else :class:`ImageLoadError`.

    Reading a FIFO blocks until someone writes to it and ``/dev/zero`` never ends, so only
    regular files (after symlinks) are read, and only up to ``max_bytes``.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        reason = "broken symlink" if os.path.islink(path) else "file does not exist"
        raise ImageLoadError(path, reason) from exc
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(path, "is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(
            st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "special"
        raise ImageLoadError(path, f"not a regular file ({kind}); only regular files are read")
    if st.st_size == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")
    if st.st_size > max_bytes:
        raise ImageLoadError(path, f"file is {st.st_size:,} bytes, over the limit of {max_bytes:,}")
    return st.st_size


def check_pixels(path: str | Path, width: int, height: int, max_pixels: int | None = None) -> None:
    """:class:`ImageLoadError` unless a ``width`` x ``height`` image may be decoded: sizes come
    from headers (or annotation files), which cost nothing to forge."""
    max_pixels = max_pixels or MAX_PIXELS
    if width <= 0 or height <= 0:
        raise ImageLoadError(path, f"declared size {width}x{height} is not positive")
    if width * height > max_pixels:
        raise ImageLoadError(path, f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}")


def image_size(path: str | Path, formats: tuple[str, ...] = IMAGE_FORMATS, max_pixels: int | None = None) -> tuple[int, int]:
    """``(height, width)`` of an image (as :func:`load_image` returns it) from its header alone, after the same checks as
    :func:`load_image` (regular file, allowed format, pixel limit); no pixel is decoded."""
    check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=list(formats)) as img:
                w, h = img.size
                if img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):  # shown turned a quarter, as load_image turns it
                    w, h = h, w
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError) as exc:
        raise ImageLoadError(path, f"not a readable image of an allowed format ({exc})") from exc
    check_pixels(path, w, h, max_pixels)
    return h, w


def _open(path: Path | str, data: bytes | None = None, formats: tuple[str, ...] = IMAGE_FORMATS,
          max_pixels: int | None = None) -> Image.Image:
    path = Path(path)
    max_pixels = max_pixels or MAX_PIXELS
    if data is None:
        check_file(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    elif len(data) == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(formats))
            w, h = img.size
            check_pixels(path, w, h, max_pixels)
            decoded = w * h * _MODE_BYTES.get(img.mode, 4)
            if decoded > 4 * max_pixels:
                raise ImageLoadError(path, f"{w}x{h} {img.mode} decodes to {decoded:,} bytes, over the limit")
            img.load()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageLoadError(path, f"refused as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        hint = " (camera raw files such as .CR2 need converting to JPEG/TIFF first)" if path.suffix.lower() in {".cr2", ".nef", ".arw", ".dng"} else ""
        raise ImageLoadError(path, f"not a readable image of an allowed format ({', '.join(formats)}){hint}") from exc
    except OSError as exc:
        raise ImageLoadError(path, f"corrupt or truncated image data ({exc})") from exc
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB the way a viewer would show it."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)  # half of float64's memory; exact for 16-bit values
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16") or (img.mode == "I" and hi > 255):
            scale = 65535.0 if img.mode.startswith("I;16") else max(hi, 1.0)
            arr = arr / scale * 255.0
        elif img.mode == "F":
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Composite transparency onto white: specimen photos are shot on light backgrounds.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode == "CMYK":
        # PIL's CMYK->RGB ignores ICC profiles; Adobe JPEGs store inverted CMYK, handled by PIL.
        img = img.convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | Path, data: bytes | None = None, formats: tuple[str, ...] = IMAGE_FORMATS,
               max_pixels: int | None = None) -> np.ndarray:
    """Read an image as an ``HxWx3`` uint8 RGB array, EXIF orientation applied.

    ``data`` lets callers pass bytes they already hold (uploads) while still naming the
    file in errors. Only ``formats`` are decoded, and only images of at most
    ``max_pixels`` (default :data:`MAX_PIXELS`): both are checked from the header, before any
    pixel is decoded.
    """
    img = _open(path, data, formats, max_pixels)
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: otherwise a copy of every pixel
    except Exception:  # a malformed EXIF block should not lose the pixels
        pass
    return np.array(_to_rgb(img), dtype=np.uint8)  # writable: Pillow's array view is read-only


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a label mask: single-channel uint8, 0 = background, k = trait k.

    ``shape`` (H, W) is the size of the image the mask belongs to; a mismatch is an error
    because a silently resized mask would measure the wrong trait areas.
    """
    img = _open(path)
    if img.mode not in ("L", "P", "I", "I;16", "1"):
        raise ImageLoadError(
            path, f"label mask must be single-channel (mode L or P), got mode {img.mode}"
        )
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise ImageLoadError(path, "label mask values must be in 0..255")
        arr = arr.astype(np.uint8)
    if shape is not None and arr.shape[:2] != tuple(shape):
        raise ImageLoadError(
            path,
            f"mask size {arr.shape[1]}x{arr.shape[0]} differs from image size {shape[1]}x{shape[0]}",
        )
    return arr.copy()


def save_mask(path: str | Path, label_map: np.ndarray) -> None:
    """Write a label map as a lossless single-channel PNG."""
    if label_map.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label_map.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label_map.astype(np.uint8), "L").save(path, format="PNG")


def save_image(path: str | Path, rgb: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(path)


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
