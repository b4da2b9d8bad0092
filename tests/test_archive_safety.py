"""Hostile archives: members that climb out of the temporary folder, links, bombs, and media
rows pointing at the rest of the disk. Each is refused with the archive (or row) named,
nothing is written outside, and no temporary folder stays behind."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.collection import CollectionError, load_collection
from indexer.job import run_index
from sst_search.cli import app
from sst_search.config import SourcesConfig
from sst_search.sources.archives import ArchiveError, unpacked
from tests.fixtures import random_weights_config

DWC = "http://rs.tdwg.org/dwc/terms/"
META = ('<archive xmlns="http://rs.tdwg.org/dwc/text/"><core encoding="UTF-8" fieldsTerminatedBy="\\t" '
        'linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1" rowType="' + DWC + 'Occurrence">'
        '<files><location>occurrence.txt</location></files><id index="0"/>'
        f'<field index="1" term="{DWC}scientificName"/><field index="2" term="{DWC}associatedMedia"/></core></archive>')


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A private temporary folder, so a test sees every folder an archive leaves behind."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    return tmp


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("member", [
    ("../../escaped.txt", b"x"), ("/tmp/escaped-abs.txt", b"x"), _link("meta.xml", "/etc/passwd"),
    _link("occurrence.txt", "../../escaped.txt", tarfile.LNKTYPE), ("a/../../escaped.txt", b"x"),
])
def test_tar_members_outside_the_folder_or_links_are_refused_before_writing(tmp_path, scratch, member):
    archive = _tar(tmp_path / "hostile.zip", [("meta.xml", META.encode()), member])  # a tar, whatever its name
    with pytest.raises(CollectionError, match=r"hostile\.zip: member .* (outside the archive's folder|link)"):
        load_collection(archive)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/escaped-abs.txt").exists()
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("name", ["../escaped.txt", "/abs/escaped.txt", "C:/escaped.txt"])
def test_zip_members_outside_the_folder_are_refused(tmp_path, scratch, name):
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("meta.xml", META)
        zf.writestr(zipfile.ZipInfo(name), b"x")  # ZipInfo keeps the name as written
    with pytest.raises(CollectionError, match=r"hostile\.zip: member .* outside the archive's folder"):
        load_collection(archive)
    assert not (tmp_path / "escaped.txt").exists() and list(scratch.iterdir()) == []


def test_a_zip_bomb_is_refused_from_its_declared_size_before_anything_is_written(tmp_path, scratch):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("meta.xml", META)
        zf.writestr("occurrence.txt", b"\0" * 8_000_000)
    assert bomb.stat().st_size < 20_000  # a few KB that expand to 8 MB
    (tmp_path / "bomb.yaml").write_text("sources:\n  max_archive_bytes: 1000000\n")
    db = tmp_path / "db.duckdb"
    result = CliRunner().invoke(app, ["index", str(bomb), "--references", str(tmp_path), "--db", str(db),
                                      "--config", str(tmp_path / "bomb.yaml")])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "bomb.zip: would unpack to 8000" in text and "limit of 1000000" in text, result.output
    assert list(scratch.iterdir()) == [] and not db.exists()
    with pytest.raises(ArchiveError, match="holds more than 1 members"):  # so is one of too many members
        with unpacked(bomb, max_bytes=10**9, max_members=1):
            pass
    tar = _tar(tmp_path / "bomb.tgz", [("meta.xml", META.encode()), ("occurrence.txt", b"\0" * 8_000_000)])
    with pytest.raises(CollectionError, match=r"bomb\.tgz: would unpack to"):
        load_collection(tar, limits=SourcesConfig(max_archive_bytes=1_000_000))
    assert list(scratch.iterdir()) == []


def test_a_member_larger_than_it_declares_is_cut_off(tmp_path, scratch):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("occurrence.txt", b"a" * 1000)
    data = bytearray(archive.read_bytes())
    declared = (1000).to_bytes(4, "little")
    for at in [i for i in range(len(data) - 3) if data[i:i + 4] == declared]:
        data[at:at + 4] = (10).to_bytes(4, "little")  # both headers now declare 10 bytes
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"liar\.zip"):
        with unpacked(archive, max_bytes=100):
            pass
    assert list(scratch.iterdir()) == []


def test_media_rows_reading_outside_the_archive_fail_alone_naming_the_row(tmp_path, tracker, scratch):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for you")
    folder = tmp_path / "collection" / "archive"
    folder.mkdir(parents=True)
    (folder / "meta.xml").write_text(META)
    (folder / "occurrence.txt").write_text(
        f"id\tscientificName\tassociatedMedia\no1\tAus bus\tfile://{secret}\no2\tAus bus\t../../secret.png\n")
    config = random_weights_config()
    summary = run_index(folder, tmp_path / "refs", tmp_path / "db.duckdb", config, tracker=tracker)
    assert summary.counts["failed"] == 2 and summary.counts["indexed"] == 0
    reasons = sorted(reason for _, reason in summary.failures)
    assert "occurrence.txt row 1: media 'file://" in reasons[0] and "outside the archive's folder" in reasons[0]
    assert "occurrence.txt row 2: media '../../secret.png' lies outside" in reasons[1]
