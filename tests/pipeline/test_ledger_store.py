"""The ledger against a real store: rebuilt when lost, read (never written) by `avsed status`, also on a
read-only store as another user, and a damaged one reported with what to do."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.download import NO_YOUTUBE_ID_MESSAGE
from pipeline.ledger import (NEVER_CHECKED, REBUILT_MESSAGE, Ledger, LedgerRebuild, open_ledger_for_store,
                             rebuild_ledger, store_video_features)
from pipeline.status import format_status, store_status
from avsed.core.store import FeatureStore
from tests.pipeline.extracted_store import extract_small_store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    data, cfg = extract_small_store(tmp_path_factory.mktemp("extracted"))
    with Ledger(cfg.ledger_path) as ledger:
        entries = ledger.entries()
    return Path(cfg.store), entries


def _copy(extracted, dst: Path) -> tuple[Path, Path]:
    store, _ = extracted
    shutil.copytree(store, dst / store.name)
    ledger = Ledger.path_for_store(dst / store.name)
    shutil.copy(Ledger.path_for_store(store), ledger)
    return dst / store.name, ledger


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_a_lost_ledger_is_rebuilt_from_the_store(extracted, tmp_path):
    store_path, ledger_path = _copy(extracted, tmp_path)
    original = extracted[1]
    store = FeatureStore.open(store_path)
    assert store_video_features(store) == ["openl3"]  # log-mel is not evidence of a video
    available = {c for c, e in original.items() if e.status == "available"}
    no_id = {c for c, e in original.items() if e.reason == "no_youtube_id"}
    not_found = {c for c, e in original.items() if e.reason == "not_found"}
    assert available and no_id and not_found  # the small set has every kind
    assert available == {c for c, p in zip(store.clip_ids(), store.present("openl3")) if p}

    ledger_path.unlink()
    Path(f"{ledger_path}-wal").write_bytes(b"a WAL left by the lost ledger" * 100)  # must not be replayed
    with open_ledger_for_store(ledger_path, store) as ledger:
        assert ledger.rebuild == LedgerRebuild(available=len(available), no_youtube_id=len(no_id))
        entries = ledger.entries()
        assert set(entries) == available | no_id  # not-found clips get no entry: the next run tries them
        for cid in available:
            e = entries[cid]
            assert (e.status, e.reason, e.message, e.last_checked, e.attempts) == (
                "available", None, REBUILT_MESSAGE, NEVER_CHECKED, 0)
            assert e.youtube_id == original[cid].youtube_id
        assert all((entries[c].status, entries[c].reason, entries[c].message) ==
                   ("missing", "no_youtube_id", NO_YOUTUBE_ID_MESSAGE) for c in no_id)
        assert ledger.due_for_recheck() == available  # the next run re-checks every rebuilt video
        ledger.record("Ynew", "new", "available")  # and it is a normal, writable ledger
    assert sorted(p.name for p in tmp_path.iterdir() if "rebuilding" in p.name) == []

    # an existing ledger is opened as it is, never rebuilt
    with open_ledger_for_store(ledger_path, store) as ledger:
        assert ledger.rebuild is None and "Ynew" in ledger.entries()


def test_rebuild_with_explicit_video_features_and_an_empty_store_opens_a_new_ledger(extracted, tmp_path):
    store_path, ledger_path = _copy(extracted, tmp_path)
    store = FeatureStore.open(store_path)
    with rebuild_ledger(ledger_path, store, video_features=[]) as ledger:  # nothing counts as a video
        assert {e.status for e in ledger.entries().values()} == {"missing"}
    empty = FeatureStore.create_or_open(tmp_path / "empty.zarr")  # a store with no clip yet: nothing to rebuild
    with open_ledger_for_store(Ledger.path_for_store(empty.path), empty) as ledger:
        assert ledger.rebuild is None and ledger.entries() == {}


def test_status_reads_store_and_ledger_without_writing_and_says_when_there_is_no_ledger(extracted, tmp_path):
    store_path, ledger_path = _copy(extracted, tmp_path)
    original = extracted[1]
    before, ledger_bytes = _files(tmp_path), ledger_path.read_bytes()
    status = store_status(store_path)
    after = _files(tmp_path)
    # SQLite's readers of a WAL database make its index (-shm) and an empty -wal beside it; nothing else changes
    wal = {name: after.pop(name) for name in list(after) if name.endswith(("-wal", "-shm"))}
    assert after == before and ledger_path.read_bytes() == ledger_bytes
    assert all(size == 0 for name, (size, _) in wal.items() if name.endswith("-wal"))
    assert status["ledger"]["state"] == "ok"
    assert status["videos"]["available"] == sum(e.status == "available" for e in original.values())
    assert status["videos"]["reasons"] == {"no_youtube_id": 2, "not_found": 2}

    ledger_path.unlink()
    status = store_status(store_path)
    assert status["ledger"]["state"] == "absent" and status["features"]["openl3"]["present"] == len(
        [e for e in original.values() if e.status == "available"])
    text = format_status(status)
    assert f"ledger {ledger_path}: no ledger: video availability unknown" in text and "rebuilds it" in text
    assert "videos: available" not in text  # no made-up zeros


def test_status_reports_a_damaged_ledger_with_what_to_do(extracted, tmp_path):
    store_path, ledger_path = _copy(extracted, tmp_path)
    ledger_path.write_bytes(os.urandom(8192))
    status = store_status(store_path)
    assert status["ledger"]["state"] == "damaged" and status["clips"] == 8
    text = format_status(status)
    assert f"ledger: {ledger_path}: the availability ledger is damaged" in text and "move it aside" in text


def _as_other_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv  # permissions already apply to this user
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot take away write permission")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]


def test_status_on_a_read_only_store_and_ledger_as_another_user(extracted):
    # A folder nobody may write: SQLite cannot even create the WAL index (-shm) a read of a WAL ledger needs.
    root = Path(tempfile.mkdtemp(prefix="avsed-ro-"))
    try:
        store_path, ledger_path = _copy(extracted, root)
        expected = store_status(store_path)
        for leftover in root.glob("*-[ws][ah][lm]"):  # the -wal / -shm this process's read left: none now
            leftover.unlink()
        for p in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(p.stat().st_mode) & ~0o222
            p.chmod(mode | 0o444 | (0o111 if p.is_dir() else 0))
        code = ("import json, sys; from pipeline.status import store_status, format_status; "
                "s = store_status(sys.argv[1]); print(json.dumps(s)); format_status(s)")
        proc = subprocess.run(_as_other_user([sys.executable, "-c", code, str(store_path)]), cwd=REPO,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO),
                                                                   "HOME": str(root)}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got["ledger"]["state"] == "ok" and got["videos"] == expected["videos"]
        assert got["features"] == expected["features"] and got["clips"] == expected["clips"]
        assert sorted(p.name for p in root.iterdir()) == sorted([store_path.name, ledger_path.name])
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755)
        shutil.rmtree(root)
