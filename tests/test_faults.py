"""Fault injection: damaged stores, disk full, transient faults that look like mass deletion,
and the exit codes and messages each one ends in.

One four-item collection is indexed per module; every test restores the store files from a
pristine copy (same paths, so specimen ids stay the same) and damages what it needs. Each
test asserts that nothing indexed is lost, nothing damaged is published and the message
names the file.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from indexer.job import MassRemovalError, run_index
from sst_search.cli import app
from sst_search.store import Store
from sst_search.store import snapshots as snap
from sst_search.store.errors import StoreDamagedError
from sst_search.store.verify import verify_files
from sst_search.vector_search import indexes
from tests.fixtures import TEST_IMAGE_SIZE, index_synthetic, random_weights_config

CONFIG = random_weights_config()
STORE_FILES = ("db.duckdb", "db.duckdb.faiss", "db.duckdb.versions", "db.duckdb.current")
TRAIT = "forewing_band"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    coll, _ = index_synthetic(root, species=1, per_species=4, seed=13, config=CONFIG)
    (root / "pristine").mkdir()
    for name in STORE_FILES:
        _copy(root / name, root / "pristine" / name)
    return root, coll


def _copy(src, dst):
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


@pytest.fixture
def store(template):
    """The indexed store as it was after its first run: ``(db, collection, indexed ids, version)``."""
    root, coll = template
    for name in STORE_FILES:
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        _copy(root / "pristine" / name, target)
    for leftover in root.glob("db.duckdb.damaged-*"):
        shutil.rmtree(leftover)
    db = root / "db.duckdb"
    with Store.open(db, read_only=True) as s:
        ids = s.filter_specimens()
    assert len(ids) == 4
    return db, coll, ids, snap.current_version(db)


def _index(db, coll, **kwargs):
    return run_index(coll.manifest, coll.references, db, CONFIG, masks=coll.ground_truth, **kwargs)


def _cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output and not isinstance(result.exception, (AttributeError, TypeError))
    return result


def _index_cli(db, coll, *extra):
    return _cli("index", coll.manifest, "--references", coll.references, "--masks", coll.ground_truth, "--db", db,
                "--embedder", "color-pattern", "--weights", "random", "--image-size", TEST_IMAGE_SIZE, "--quiet", *extra)


def _assert_published_intact(db, ids, version=None):
    """The pointer names a verified version (``version`` when given) holding all of ``ids``."""
    current = snap.current_version(db)
    assert snap.is_verified(db, current) and (version is None or current == version)
    published = snap.versions_dir(db) / current / db.name
    assert verify_files(published) == []
    with Store.open(published, read_only=True) as s:
        assert set(ids) <= set(s.filter_specimens())


def _faiss_file(db, trait=TRAIT):
    return indexes.index_paths(db.with_name(db.name + ".faiss"), "color-pattern", trait)[0]


# -- damaged database --------------------------------------------------------------------------

def _truncate(path):
    os.truncate(path, path.stat().st_size // 2)


def _garbage(path):
    size = path.stat().st_size
    rng = np.random.default_rng(0)
    with open(path, "r+b") as fh:  # 4 KB of noise in every 256 KB block after the headers
        for offset in range(262_144 + 4096, size - 4096, 262_144):
            fh.seek(offset)
            fh.write(rng.bytes(4096))


def _empty(path):
    os.truncate(path, 0)


@pytest.mark.parametrize("damage", [_truncate, pytest.param(_garbage, marks=pytest.mark.slow),
                                    pytest.param(_empty, marks=pytest.mark.slow)], ids=["truncated", "garbage", "empty"])
def test_damaged_database_stops_the_run_and_verify_repair_restores_it(store, damage):
    db, coll, ids, version = store
    damage(db)
    with pytest.raises(StoreDamagedError, match=str(db)):
        _index(db, coll)
    result = _index_cli(db, coll)
    assert result.exit_code == 3 and "storage fault" in result.output and str(db) in result.output
    status = _cli("status", "--db", db)
    assert status.exit_code == 3 and "storage fault" in status.output
    _assert_published_intact(db, ids, version)  # nothing published, nothing pruned

    assert _cli("verify", "--db", db).exit_code == 3
    repaired = _cli("verify", "--db", db, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "restored" in repaired.output and list(db.parent.glob("db.duckdb.damaged-*"))
    summary = _index(db, coll)
    assert summary.exit_code == 0 and summary.counts["unchanged"] == 4
    _assert_published_intact(db, ids)


# -- damaged FAISS files ---------------------------------------------------------------------------

def _swap(db):
    shutil.copy2(_faiss_file(db, "hindwing_bar"), _faiss_file(db))  # valid file, same ids, other trait


def _truncate_faiss(db):
    os.truncate(_faiss_file(db), 100)


def _noise_faiss(db):
    path = _faiss_file(db)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
    path.write_bytes(bytes(data))


def _remove_faiss(db):
    _faiss_file(db).unlink()


@pytest.mark.parametrize("damage", [_swap, _truncate_faiss, pytest.param(_noise_faiss, marks=pytest.mark.slow),
                                    pytest.param(_remove_faiss, marks=pytest.mark.slow)],
                         ids=["swapped", "truncated", "zeroed", "missing"])
def test_damaged_faiss_file_is_reported_then_rebuilt_before_publishing(store, damage):
    db, coll, ids, version = store
    damage(db)
    status = _cli("status", "--db", db)
    assert status.exit_code == 1 and "inconsistent" in status.output and TRAIT in status.output
    assert _cli("verify", "--db", db).exit_code == 3

    summary = _index(db, coll)
    assert summary.exit_code == 0 and summary.counts["unchanged"] == 4
    _assert_published_intact(db, ids)
    assert snap.current_version(db) != version
    with Store.open(db, read_only=True) as s:
        assert s.check_consistency() == []
        vectors = s.get_vectors("color-pattern", TRAIT)
        (hits,) = s.search("color-pattern", TRAIT, vectors[1][0], k=1)
        assert hits[0][0] == vectors[0][0] and hits[0][1] == pytest.approx(1.0, abs=1e-3)  # float16 in the catalog


def test_publish_refuses_a_damaged_copy_and_keeps_every_version(store):
    db, _, ids, version = store
    before = snap.list_versions(db)
    _swap(db)
    with pytest.raises(StoreDamagedError, match=f"{TRAIT}.index.*checksum"):
        snap.publish_snapshot(db)
    assert snap.list_versions(db) == before and not list(snap.versions_dir(db).glob(".*"))
    _assert_published_intact(db, ids, version)
    repaired = _cli("verify", "--db", db, "--repair")
    assert repaired.exit_code == 0 and "rebuilt color-pattern/forewing_band" in repaired.output
    _assert_published_intact(db, ids)


def test_pruning_spares_the_newest_verified_version(store):
    db, _, _, version = store
    root = snap.versions_dir(db)
    for name in ("29990101T000000000000Z-aaaaaaaa", "29990101T000000000001Z-bbbbbbbb"):  # newer, unverified
        shutil.copytree(root / version, root / name)
        (root / name / snap.VERIFIED).unlink()
    snap._write_pointer(db, "29990101T000000000001Z-bbbbbbbb")
    snap.prune_snapshots(db, keep=1)
    assert snap.list_versions(db) == [version, "29990101T000000000001Z-bbbbbbbb"]
    assert snap.last_verified(db) == version


# -- disk full, leftovers, permissions ---------------------------------------------------------------

def test_disk_full_while_publishing_exits_3_and_keeps_the_published_version(store, monkeypatch):
    db, coll, ids, version = store

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(snap.shutil, "copy2", full)
    result = _index_cli(db, coll)
    assert result.exit_code == 3 and "No space left on device" in result.output
    monkeypatch.undo()
    assert not [p for p in snap.versions_dir(db).iterdir() if p.name.startswith(".")]  # no half copy left
    _assert_published_intact(db, ids, version)
    with Store.open(db, read_only=True) as s:
        assert s.filter_specimens() == ids and s.check_consistency() == []


def test_leftover_temporary_files_are_removed_by_the_next_writer(store):
    db, _, _, _ = store
    leftover = _faiss_file(db).with_name(f"{TRAIT}.index.k1ll3d.tmp")
    leftover.write_bytes(b"half a file")
    Store.open(db).close()
    assert not leftover.exists()


def test_published_files_are_readable_by_other_users(store):
    db, coll, _, _ = store
    old = os.umask(0o022)
    try:
        _index(db, coll)
    finally:
        os.umask(old)
    version = snap.versions_dir(db) / snap.current_version(db)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [version, *version.rglob("*")]}
    assert all(mode & 0o044 == 0o044 for mode in modes.values()), modes
    assert stat.S_IMODE(snap.pointer_path(db).stat().st_mode) == 0o644


# -- transient faults that look like mass deletion ---------------------------------------------------

def test_moved_images_folder_stops_before_committing(store):
    db, coll, ids, version = store
    images = coll.root / "images"
    images.rename(coll.root / "images.moved")
    try:
        with pytest.raises(MassRemovalError, match="4 image files are missing") as err:
            _index(db, coll)
        assert str(images) in str(err.value) and "--allow-mass-removal" in str(err.value)
        result = _index_cli(db, coll)
        assert result.exit_code == 2 and "nothing was changed" in result.output
        with Store.open(db, read_only=True) as s:
            assert s.filter_specimens() == ids
        _assert_published_intact(db, ids, version)
        allowed = _index(db, coll, allow_mass_removal=True)
        assert allowed.counts["failed"] == 4
    finally:
        (coll.root / "images.moved").rename(images)


def test_broken_traits_yaml_stops_before_committing(store):
    db, coll, ids, version = store
    traits = coll.references / coll.groups[0] / "traits.yaml"
    good = traits.read_text()
    traits.write_text(good + "\n  oops: [\n")
    try:
        with pytest.raises(MassRemovalError, match="traits.yaml"):
            _index(db, coll)
    finally:
        traits.write_text(good)
    with Store.open(db, read_only=True) as s:
        assert s.filter_specimens() == ids
    _assert_published_intact(db, ids, version)


def test_items_dropped_from_the_manifest_are_named(store):
    db, coll, ids, _ = store
    lines = coll.manifest.read_text().splitlines()
    short = coll.manifest.with_name("short.csv")
    short.write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(MassRemovalError, match="3 items are no longer in the collection") as err:
        run_index(short, coll.references, db, CONFIG, masks=coll.ground_truth)
    assert "alba-001.png" in str(err.value) or coll.groups[0] in str(err.value)
    one_gone = coll.manifest.with_name("one-gone.csv")
    one_gone.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(MassRemovalError):  # 1 of 4 is 25%, over the default 20%
        run_index(one_gone, coll.references, db, CONFIG, masks=coll.ground_truth)
    lenient = CONFIG.model_copy(update={"indexer": CONFIG.indexer.model_copy(update={"max_removal_share": 0.5})})
    assert run_index(one_gone, coll.references, db, lenient, masks=coll.ground_truth).counts["removed"] == 1


def test_bad_config_exits_2(store, tmp_path):
    db, coll, _, _ = store
    config = tmp_path / "typo.yaml"
    config.write_text("indexer:\n  comit_every: 4\n")
    result = _index_cli(db, coll, "--config", config)
    assert result.exit_code == 2 and "comit_every" in result.output


# -- a store deleted, damaged twice, mis-pointed or read-only (round 3) ---------------------------

def test_deleted_live_database_is_found_and_restored_with_its_review_decisions(store):
    db, coll, ids, _ = store
    assert _cli("review", "accept", ids[0], TRAIT, "--db", db, "--by", "ana").exit_code == 0  # publishes
    db.unlink()
    checked = _cli("verify", "--db", db)
    assert checked.exit_code == 3 and "live database is missing" in checked.output
    refused = _index_cli(db, coll)  # would start an empty store and lose the decision
    assert refused.exit_code == 3 and "verify" in refused.output and not db.exists()
    repaired = _cli("verify", "--db", db, "--repair")
    assert repaired.exit_code == 0 and "restored" in repaired.output, repaired.output
    with Store.open(db, read_only=True) as s:
        assert s.filter_specimens() == ids
        decided = s.con.execute("SELECT specimen_id, decision, reviewer FROM review_decisions").fetchall()
    assert decided == [(ids[0], "accept", "ana")]
    _assert_published_intact(db, ids)


def test_repair_falls_back_to_an_older_snapshot_when_the_newest_is_damaged_too(store):
    db, _, ids, older = store
    snap.publish_snapshot(db)  # a second verified version
    newest = snap.current_version(db)
    assert newest != older and snap.list_versions(db) == [older, newest]
    _garbage(db)
    _garbage(snap.versions_dir(db) / newest / db.name)
    repaired = _cli("verify", "--db", db, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert f"passed over version {newest}" in repaired.output and f"snapshot {older}" in repaired.output
    _assert_published_intact(db, ids)
    assert verify_files(db) == []


@pytest.mark.parametrize("pointer", ["garbage{", '{"version": "20000101T000000000000Z-gone"}',
                                     pytest.param('{"version": 7}', marks=pytest.mark.slow)])
def test_a_bad_snapshot_pointer_is_reported_and_repaired(store, pointer):
    db, _, ids, _ = store
    snap.pointer_path(db).write_text(pointer)
    checked = _cli("verify", "--db", db)
    assert checked.exit_code == 3 and str(snap.pointer_path(db)) in checked.output, checked.output
    assert _cli("search", "--db", db, "--trait", TRAIT, "--specimen", ids[0]).exit_code in (2, 3)  # a message, no traceback
    repaired = _cli("verify", "--db", db, "--repair")
    assert repaired.exit_code == 0, repaired.output
    _assert_published_intact(db, ids)


def test_a_read_only_file_system_gives_one_true_message(store):
    """The store's folder bind-mounted read-only in a user namespace (a real EROFS, even for
    root): writers say it cannot be written, and verify, which only reads, says intact."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    db, *_ = store
    script = (
        "from typer.testing import CliRunner\n"
        "from sst_search.cli import app\n"
        "from sst_search.store import Store\n"
        "from sst_search.store.errors import StoreDamagedError, StoreError\n"
        f"db = {str(db)!r}\n"
        "try:\n    Store.open(db).close(); print('OPENED')\n"
        "except StoreDamagedError as e: print('DAMAGED', e)\n"
        "except StoreError as e: print('REFUSED', e)\n"
        "r = CliRunner().invoke(app, ['verify', '--db', db]); print('VERIFY', r.exit_code, r.output)\n"
    )
    folder = shlex.quote(str(db.parent))
    run = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind {folder} {folder} && "
                          f"mount -o remount,bind,ro {folder} && exec {shlex.quote(sys.executable)} -c \"$0\"", script],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    if "mount" in run.stderr and run.returncode and "REFUSED" not in run.stdout:
        pytest.skip(f"no user namespaces here: {run.stderr.strip()[:200]}")
    assert "REFUSED" in run.stdout and "read-only" in run.stdout and "not damaged" in run.stdout, run.stdout + run.stderr
    assert "VERIFY 0" in run.stdout and "intact" in run.stdout, run.stdout


# -- review corrections all or nothing, measure beside a writer (round 3) ----------------------------

_KILLED_CORRECTION = """
import os, sys
import numpy as np
from sst_search.mask_review import decide
from sst_search.store import writer

write = writer.write_measurements

def killed(connection, rows):  # the mask and the new measurements are written, the transaction not committed
    write(connection, rows)
    os._exit(9)

writer.write_measurements = killed
db, sid, trait, h, w = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
mask = np.zeros((h, w), bool)
mask[2:9, 3:11] = True
decide(db, sid, trait, "correct", "ana", mask=mask, publish=False)
"""


@pytest.mark.slow
def test_a_correction_killed_half_way_leaves_nothing_and_runs_again(store):
    db, _, ids, _ = store
    with Store.open(db, read_only=True) as s:
        before = {m.trait_id: m for m in s.trait_masks(ids[0])}
        (trait,) = [m for m in before.values() if m.trait_name == TRAIT]
        h, w = s.label_map(ids[0]).shape
    killed = subprocess.run([sys.executable, "-c", _KILLED_CORRECTION, str(db), str(ids[0]), TRAIT, str(h), str(w)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert killed.returncode == 9, killed.stderr[-2000:]
    with Store.open(db, read_only=True) as s:
        assert {m.trait_id: m for m in s.trait_masks(ids[0])} == before
        assert s.con.execute("SELECT count(*) FROM review_decisions").fetchone()[0] == 0
    assert _cli("verify", "--db", db).exit_code == 0

    mask = np.zeros((h, w), bool)
    mask[2:9, 3:11] = True
    assert _cli("review", "correct", ids[0], TRAIT, "--mask", _mask_file(db, mask), "--db", db).exit_code == 0
    with Store.open(db, read_only=True) as s:
        frame = s.measurements_frame(specimen_ids=[ids[0]])
        assert frame[frame["trait_id"] == trait.trait_id].iloc[0]["area_px"] == mask.sum()
    assert _cli("verify", "--db", db).exit_code == 0


def _mask_file(db, mask):
    from sst_search.images import save_mask

    path = db.parent / "corrected.png"
    save_mask(path, mask.astype(np.uint8))
    return path


def test_verify_finds_measurements_older_than_a_corrected_mask(store):
    db, _, ids, _ = store
    with Store.open(db, read_only=True) as s:
        mask = s.label_map(ids[1]) == next(m.trait_id for m in s.trait_masks(ids[1]) if m.trait_name == TRAIT)
    assert _cli("review", "correct", ids[1], TRAIT, "--mask", _mask_file(db, mask[::-1]), "--db", db).exit_code == 0
    with Store.open(db) as s:  # what a correction killed between its two transactions used to leave
        s.con.execute("UPDATE trait_measurements SET measured_at = measured_at - INTERVAL 1 DAY WHERE specimen_id = ?",
                      [ids[1]])
    checked = _cli("verify", "--db", db)
    assert checked.exit_code == 3 and f"specimen {ids[1]}" in checked.output and "predate" in checked.output
    assert _cli("measure", "--db", db, "--quiet").exit_code == 0
    assert _cli("verify", "--db", db).exit_code == 0


def test_measure_while_another_process_writes_says_the_store_is_busy(store):
    db, *_ = store
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom sst_search.store import Store\n"
         "s = Store.open(sys.argv[1]); print('ready', flush=True); time.sleep(60)", str(db)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "ready"
        busy = _cli("measure", "--db", db, "--quiet")
        assert busy.exit_code == 3 and "Only one process may write" in busy.output, busy.output
    finally:
        holder.kill()
        holder.wait()


def test_relocate_run_again_after_a_kill_between_commit_and_publish_publishes(store, tmp_path):
    db, coll, ids, version = store
    old, new = str(coll.root), str(tmp_path / "mounted")
    with Store.open(db) as s:  # what a relocate killed after its commit leaves: readers still see the old paths
        assert s.relocate(old, new) == len(ids)
    again = _cli("relocate", "--db", db, old, new)
    assert again.exit_code == 0 and "already point into" in again.output, again.output
    assert snap.current_version(db) != version
    with Store.open(snap.resolve_snapshot(db), read_only=True) as s:
        assert s.count_under(new) == len(ids) and s.count_under(old) == 0
    with Store.open(db) as s:
        s.relocate(new, old)
    assert _cli("relocate", "--db", db, str(tmp_path / "nowhere"), str(tmp_path)).exit_code == 2


def test_repair_recovers_corrections_made_after_the_snapshot_it_restores(store):
    """The newest snapshot holds a correction but one of its FAISS files is damaged, and the live
    database is gone: the older snapshot is restored and the correction is read back from the
    damaged copy, applied to the mask and measured."""
    db, _, ids, older = store
    with Store.open(db, read_only=True) as s:
        mask = s.label_map(ids[2]) == next(m.trait_id for m in s.trait_masks(ids[2]) if m.trait_name == TRAIT)
    corrected = np.zeros_like(mask)
    corrected[3:11, 4:20] = True
    assert _cli("review", "correct", ids[2], TRAIT, "--mask", _mask_file(db, corrected), "--db", db).exit_code == 0
    newest = snap.current_version(db)
    os.truncate(_faiss_file(snap.versions_dir(db) / newest / db.name), 100)
    db.unlink()
    repaired = _cli("verify", "--db", db, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert f"passed over version {newest}" in repaired.output and "recovered 1 review decisions" in repaired.output
    with Store.open(db, read_only=True) as s:
        (m,) = [m for m in s.trait_masks(ids[2]) if m.trait_name == TRAIT]
        assert m.source == "corrected" and m.area == corrected.sum()
        frame = s.measurements_frame(specimen_ids=[ids[2]])
        assert frame[frame["trait_id"] == m.trait_id].iloc[0]["area_px"] == corrected.sum()
        # its vector still describes the old mask: the next index run embeds it again, and only it
        states = s.specimen_states()
        assert states[ids[2]][1] is None and all(states[i][1] for i in ids if i != ids[2])
    assert "embeds the corrected specimens again" in repaired.output
    _assert_published_intact(db, ids)
