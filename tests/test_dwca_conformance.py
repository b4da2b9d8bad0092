"""Darwin Core Archives as python-dwca-reader's own samples have them: every valid one is read
with the right occurrences and terms, every invalid one is refused (exit 2, the archive and
the problem named, no store). Samples kept as text upstream are vendored under
tests/data/dwca-reader (BSD, see its LICENSE.txt); those kept only as zip or tar upstream are
rebuilt here with the same features."""

from __future__ import annotations

import io
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.collection import CollectionError, load_collection
from sst_search.cli import app
from sst_search.sources.dwca import archive_occurrences

SAMPLES = Path(__file__).parent / "data" / "dwca-reader"
DWC = "http://rs.tdwg.org/dwc/terms/"
TERMS = ["basisOfRecord", "locality", "family", "scientificName"]


def _meta(fields: str, core: str = "occurrence.txt", row_type: str = DWC + "Occurrence", extra: str = "") -> str:
    return (f'<archive xmlns="http://rs.tdwg.org/dwc/text/" {extra}><core encoding="UTF-8" fieldsTerminatedBy="\\t" '
            f'linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1" rowType="{row_type}">'
            f'<files><location>{core}</location></files><id index="0"/>{fields}</core></archive>')


FIELDS = "".join(f'<field index="{i}" term="{DWC}{t}"/>' for i, t in enumerate(TERMS, start=1))
TAB_CORE = "id\t" + "\t".join(TERMS) + "\n1\tObservation\tBorneo\tTetraodontidae\ttetraodon fluviatilis\n" \
           "2\tObservation\tMumbai\tOsphronemidae\tbetta splendens\n"


def _zip(path: Path, files: dict[str, str | bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, files: dict[str, str | bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            raw = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return path


def _valid(tmp: Path) -> dict[str, tuple[Path, int, dict[str, str]]]:
    """name -> (archive, occurrences, terms the first occurrence must have)."""
    simple_csv = 'occurrenceID,scientificName,locality\r\n"urn:1","Aus bus","Mons, Hainaut"\r\n"urn:2","Aus cus","Liège"\r\n'
    windows = tmp / "windows1252"
    shutil.copytree(SAMPLES / "dwca-metadata-windows1252-encoding", windows)
    (windows / "meta.xml").write_text(_meta(FIELDS, extra='metadata="eml.xml"'))
    (windows / "occurrence.txt").write_text(TAB_CORE)
    default = _meta(FIELDS + f'<field term="{DWC}country" default="Belgium"/>')
    return {
        "metafile-less folder (vendored)": (SAMPLES / "dwca-simple-dir", 2, {"family": "Tetraodontidae", "locality": "Borneo"}),
        "empty core ids (vendored)": (SAMPLES / "dwca-meta-default-values", 2, {"scientificName": "tetraodon fluviatilis"}),
        "quoted comma (vendored)": (SAMPLES / "dwca-csv-quote-dir", 2, {"basisOfRecord": "Observation, something"}),
        "windows-1252 metadata": (windows, 2, {"locality": "Borneo"}),
        "default values from meta.xml": (_zip(tmp / "default.zip", {"meta.xml": default, "occurrence.txt": TAB_CORE}), 2,
                                         {"country": "Belgium", "family": "Tetraodontidae"}),
        "metafile-less csv, DOS line ends": (_zip(tmp / "dos.zip", {"occurrence.csv": simple_csv}), 2,
                                             {"occurrenceID": "urn:1", "locality": "Mons, Hainaut"}),
        "metafile-less, not enclosed, with EML.xml": (
            _zip(tmp / "plain.zip", {"occurrence.txt": simple_csv.replace('"', "").replace("Mons, Hainaut", "Mons")
                                     .replace("\r\n", "\n"), "EML.xml": "<eml/>"}), 2, {"locality": "Mons"}),
        "files in a sub-folder": (_zip(tmp / "sub.zip", {"dwca/meta.xml": _meta(FIELDS), "dwca/occurrence.txt": TAB_CORE}), 2,
                                  {"locality": "Borneo"}),
        "tgz": (_tar(tmp / "archive.tgz", {"meta.xml": _meta(FIELDS), "occurrence.txt": TAB_CORE}), 2, {"locality": "Borneo"}),
        "tar named .zip": (_tar(tmp / "really-a-tar.zip", {"meta.xml": _meta(FIELDS), "occurrence.txt": TAB_CORE}), 2,
                           {"family": "Tetraodontidae"}),
    }


def test_every_valid_sample_is_read_with_its_occurrences_and_terms(tmp_path):
    for name, (archive, count, expected) in _valid(tmp_path).items():
        occurrences = archive_occurrences(archive)
        assert len(occurrences) == count, name
        assert expected.items() <= occurrences[0].terms.items(), (name, occurrences[0].terms)
        assert all(not v.endswith("\r") for o in occurrences for v in o.terms.values()), name
        keys = [o.key for o in occurrences]
        assert len(set(keys)) == count and all(keys), (name, keys)
    empty_ids = archive_occurrences(SAMPLES / "dwca-meta-default-values")
    assert [o.key for o in empty_ids] == ["row 1", "row 2"]  # never '' twice
    assert [o.key for o in archive_occurrences(SAMPLES / "dwca-simple-dir")] == ["3", "0"]
    assert not list(tmp_path.glob("sst-archive-*"))


def _invalid(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (archive, the problem the message must state)."""
    return {
        "two data files, no meta.xml": (_zip(tmp / "two.zip", {"occurrence.txt": TAB_CORE, "notes.txt": "x"}),
                                        "no meta.xml, and not one core file"),
        "taxon core": (_zip(tmp / "taxon.zip", {"meta.xml": _meta(FIELDS, "taxon.txt", DWC + "Taxon"), "taxon.txt": TAB_CORE}),
                       "only http://rs.tdwg.org/dwc/terms/Occurrence cores"),
        "core file missing": (_zip(tmp / "missing.zip", {"meta.xml": _meta(FIELDS, "gone.txt")}), "not a readable Darwin Core"),
        "malformed meta.xml": (_zip(tmp / "badxml.zip", {"meta.xml": "<archive><core", "occurrence.txt": TAB_CORE}),
                               "not a readable Darwin Core"),
        "truncated zip": (tmp / "truncated.zip", "not a readable Darwin Core Archive"),
        "no images (vendored, valid otherwise)": (SAMPLES / "dwca-simple-dir", "no images are referenced"),
        "tgz without images": (_tar(tmp / "noimg.tgz", {"meta.xml": _meta(FIELDS), "occurrence.txt": TAB_CORE}),
                               "no images are referenced"),
    }


def test_every_invalid_sample_exits_2_naming_the_archive_and_the_problem(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    whole = _zip(tmp_path / "whole.zip", {"meta.xml": _meta(FIELDS), "occurrence.txt": TAB_CORE})
    (tmp_path / "truncated.zip").write_bytes(whole.read_bytes()[:60])
    cases = _invalid(tmp_path)
    for name, (archive, problem) in cases.items():
        with pytest.raises(CollectionError) as caught:
            load_collection(archive)
        assert str(caught.value).startswith(str(archive)) and problem in str(caught.value), (name, caught.value)
    for name in ("core file missing", "no images (vendored, valid otherwise)"):  # through the command, as a user runs it
        archive = cases[name][0]
        db = tmp_path / f"{archive.stem}.duckdb"
        result = CliRunner().invoke(app, ["index", str(archive), "--references", str(tmp_path / "refs"), "--db", str(db)])
        text = re.sub(r"\s+", " ", result.output)
        assert result.exit_code == 2 and str(archive) in text and cases[name][1] in text, result.output
        assert "Traceback" not in result.output and not db.exists() and not db.with_name(db.name + ".images").exists()
    assert not list(tmp_path.glob("sst-archive-*"))  # every temporary folder removed, errors included
