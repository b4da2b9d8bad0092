"""Regression tests for inputs that used to crash, hang, leak or mislead: the query API, upload
decoding limits, Markdown in the app, manifests with repeated columns or ragged rows, file
names that are not UTF-8, and group names used as paths."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from markdown_it import MarkdownIt
from PIL import Image
from pydantic import ValidationError

from indexer.collection import CollectionError, load_collection
from indexer.job import run_index
from sst_search.images import UPLOAD_FORMATS, ImageLoadError, _open, load_image
from sst_search.query import Filter, QueryError, SearchEngine, compile_filters
from sst_search.references import ReferencesError, check_group_name
from tests.fixtures import random_weights_config
from ui.render import escape_markdown

CONFIG = random_weights_config()


# -- query API -------------------------------------------------------------------------------------

def test_search_by_specimen_with_an_explicit_embedder_keeps_working(indexed):
    _, db = indexed
    with SearchEngine.open(db) as engine:
        sid = engine.store.filter_specimens()[0]
        for _ in range(3):  # an unread result used to block every later query on the connection
            hits = engine.search("forewing_band", 2, specimen_id=sid, embedder="color-pattern")
            assert len(hits) == 2 and sid not in [h.specimen_id for h in hits]


@pytest.mark.parametrize("k", [0, -1, -10**9, 2.5, True, "3"])
def test_bad_k_is_a_query_error(indexed, k):
    _, db = indexed
    with SearchEngine.open(db) as engine:
        sid = engine.store.filter_specimens()[0]
        with pytest.raises(QueryError, match="k must be a positive integer"):
            engine.search("forewing_band", k, specimen_id=sid)
        with pytest.raises(ValueError, match="k must be a positive integer"):
            engine.store.search("color-pattern", "forewing_band", np.ones(8, np.float32), k=k)


def test_huge_k_is_capped_and_cheap(indexed):
    _, db = indexed
    with SearchEngine.open(db) as engine:
        sid = engine.store.filter_specimens()[0]
        started = time.perf_counter()
        hits = engine.search("forewing_band", 10**8, specimen_id=sid)
        elapsed = time.perf_counter() - started
        others = len(engine.store.population("color-pattern", "forewing_band")) - 1  # every other specimen with it
        assert len(hits) == others and elapsed < 5


def test_nan_query_vectors_are_refused(indexed):
    _, db = indexed
    with SearchEngine.open(db) as engine:
        dim = engine.store.index("color-pattern", "forewing_band").d
        query = np.full(dim, np.nan, np.float32)
        with pytest.raises(ValueError, match="NaN"):
            engine.store.search("color-pattern", "forewing_band", query, k=3)
        with pytest.raises(ValueError, match="NaN"):
            engine.store.search("color-pattern", "forewing_band", query, k=3, candidate_ids=engine.store.filter_specimens())


def test_filter_op_is_validated_on_assignment_and_allow_listed_in_the_compiler(indexed):
    _, db = indexed
    f = Filter(field="group", op="==", value="alba")
    with pytest.raises(ValidationError):
        f.op = "= '' OR 1=1 OR m.value ="
    assert f.op == "=="
    forged = Filter.model_construct(field="group", op="= '' OR 1=1 OR s.group_name =", value="x")
    with pytest.raises(QueryError, match="unknown operator"):
        compile_filters([forged], set())
    with SearchEngine.open(db) as engine:
        sid = engine.store.filter_specimens()[0]
        with pytest.raises(QueryError, match="unknown operator"):
            engine.search("forewing_band", 3, specimen_id=sid, filters=[forged])


def test_group_names_never_leave_the_references_folder(indexed):
    for bad in ("../alba", "/etc", "a/b", "a\\b", ".", "..", "", " alba", "a\x00b", "a\nb"):
        with pytest.raises(ReferencesError, match="cannot name a references folder"):
            check_group_name(bad)
    assert check_group_name("Heliconius erato") == "Heliconius erato"
    _, db = indexed
    with SearchEngine.open(db) as engine, pytest.raises(QueryError, match="cannot name a references folder"):
        engine.supports("../alba")


# -- decoding limits ---------------------------------------------------------------------------------

def _encoded(fmt: str, size=(32, 24), mode="RGB") -> bytes:
    import io

    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "ICO", "PCX", "TGA", "WEBP"])
def test_uploads_decode_only_jpeg_png_tiff(fmt):
    data = _encoded(fmt, mode="RGBA" if fmt == "ICO" else "RGB")
    with pytest.raises(ImageLoadError, match="allowed format"):
        load_image("upload.jpg", data=data, formats=UPLOAD_FORMATS)
    for ok in ("JPEG", "PNG", "TIFF"):
        assert load_image("upload", data=_encoded(ok), formats=UPLOAD_FORMATS).shape == (24, 32, 3)


def test_eps_is_never_handed_to_ghostscript():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageLoadError, match="allowed format"):
        load_image("x.png", data=eps)


def test_upload_pixel_limit_is_checked_before_decoding():
    # A 16-bit 9400 x 9400 PNG is 0.17 MB compressed and decoded to 2.3 GB as the app used to;
    # its header alone must be enough to refuse it.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 9400, 9400, 16, 0, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    with pytest.raises(ImageLoadError, match="exceeds the limit of 50,000,000"):
        load_image("big.png", data=data, formats=UPLOAD_FORMATS, max_pixels=50_000_000)


def test_a_100_megapixel_image_is_within_the_documented_250_mp_limit(tmp_path):
    path = tmp_path / "sheet.png"
    Image.new("1", (10_000, 10_000)).save(path)  # PIL alone refuses above 89 MP
    assert _open(path).size == (10_000, 10_000)


def test_reading_a_fifo_or_device_never_blocks(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for path, reason in ((fifo, "FIFO"), ("/dev/zero", "device")):
        with pytest.raises(ImageLoadError, match=reason):
            load_image(path)


# -- Markdown ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "![x](http://example.org/pixel.png)", "[click](javascript:alert(1))", "images/a `b` c.png", "**bold** _it_",
    "<img src=x onerror=alert(1)>", "# heading", "$x^2$", "a | b", "1. list", "- item", "> quote", "line\nbreak",
    "back\\slash",
])
def test_manifest_text_and_file_names_render_literally(text):
    import html as html_lib

    for prefix in ("**Path:** ", ""):  # inside a line, and as a line of its own (a caption line)
        html = MarkdownIt("commonmark").enable("table").render(prefix + escape_markdown(text))
        assert "<img" not in html and "<a " not in html and "<code>" not in html and "<em>" not in html
        assert "<h1>" not in html and "<ol>" not in html and "<table>" not in html
        plain = html.replace("<p>", "").replace("<strong>Path:</strong> ", "").replace("</p>\n", "")
        assert html_lib.unescape(plain) == text.replace("\n", " ")


def test_catalog_numbers_keep_their_hyphens():
    assert escape_markdown("SYN-000001") == "SYN-000001"


# -- manifests and folders ------------------------------------------------------------------------------

def test_repeated_columns_and_ragged_rows_name_the_file_and_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,group,locality,locality\na.png,g,x,y\n")
    with pytest.raises(CollectionError, match=r"m\.csv:1: column\(s\) \['locality'\] appear more than once"):
        load_collection(manifest)
    manifest.write_text("path,group,locality\na.png,g,x\nb.png,g,Ridge, 1200 m\n\nc.png,g\n")
    with pytest.raises(CollectionError, match=r"m\.csv:3: 4 values for 3 columns"):
        load_collection(manifest)
    manifest.write_text("path,group,locality\na.png,g,x\n\nc.png,g\n")
    with pytest.raises(CollectionError, match=r"m\.csv:4: 2 values for 3 columns"):
        load_collection(manifest)


def test_a_file_name_that_is_not_utf8_fails_alone(indexed, tmp_path):
    coll, _ = indexed
    folder = tmp_path / "folder" / "alba"
    folder.mkdir(parents=True)
    sources = sorted((coll.root / "images" / "alba").glob("*.png"))[:2]
    for src in sources:
        (folder / src.name).write_bytes(src.read_bytes())
    bad = os.fsencode(folder) + b"/caf\xe9.png"
    with open(bad, "wb") as fh:
        fh.write(sources[0].read_bytes()[:-1] + b"\x01")
    summary = run_index(tmp_path / "folder", coll.references, tmp_path / "db.duckdb", CONFIG, masks=coll.ground_truth)
    assert summary.counts["indexed"] == 2 and summary.counts["failed"] == 1 and summary.exit_code == 1
    (path, reason), = summary.failures
    assert "caf\\xe9.png" in path and "not valid UTF-8" in reason
