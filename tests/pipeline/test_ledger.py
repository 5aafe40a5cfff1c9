"""The availability ledger: upsert semantics, retry policy, counts, problems, crash safety, threads."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.ledger import PERMANENT_REASONS, Ledger, LedgerError

YT_MESSAGE = "ERROR: [youtube] abcdefghijk: Video unavailable. This video has been removed by the uploader"


def test_path_for_store_is_beside_the_store(tmp_path):
    assert Ledger.path_for_store(tmp_path / "features.zarr") == tmp_path / "features.zarr.ledger.sqlite"
    assert Ledger.path_for_store("out/features.zarr/") == Path("out/features.zarr.ledger.sqlite")


def test_record_upserts_keeps_first_seen_and_counts_attempts(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        assert ledger.get("Ya_0_10.wav") is None
        first = ledger.record("Ya_0_10.wav", "aaaaaaaaaaa", "failed", None, "Connection refused")
        assert (first.status, first.reason, first.attempts) == ("failed", None, 1)
        assert first.first_seen == first.last_checked and first.first_seen.endswith("+00:00")
        second = ledger.record("Ya_0_10.wav", "aaaaaaaaaaa", "missing", "removed", YT_MESSAGE)
        assert second.first_seen == first.first_seen
        assert second.last_checked > first.last_checked
        assert (second.status, second.reason, second.attempts, second.message) == ("missing", "removed", 2, YT_MESSAGE)
        assert ledger.get("Ya_0_10.wav") == second
        assert list(ledger.entries()) == ["Ya_0_10.wav"]


@pytest.mark.parametrize("status,reason", [("gone", None), ("missing", None), ("missing", "vanished"),
                                           ("available", "removed")])
def test_record_validates_status_and_reason(tmp_path, status, reason):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        with pytest.raises(LedgerError, match="clip Yx"):
            ledger.record("Yx", "x", status, reason)
        assert ledger.get("Yx") is None


def test_should_download_policy(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.record("avail", "a", "available")
        ledger.record("gone", "g", "missing", "removed")
        ledger.record("net", "n", "failed", None, "timed out")
        assert ledger.should_download("never-seen")
        assert ledger.should_download("net") and ledger.should_download("net", recheck_missing=False)
        assert ledger.should_download("avail")
        assert not ledger.should_download("gone")
        assert ledger.should_download("gone", recheck_missing=True)


def test_counts_and_problems(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        assert ledger.counts() == {"available": 0, "missing": 0, "failed": 0, "reasons": {}}
        for i, reason in enumerate(PERMANENT_REASONS):
            ledger.record(f"m{i}", None, "missing", reason)
        ledger.record("m-extra", "x", "missing", "removed")
        ledger.record("a", "a", "available")
        ledger.record("f", "f", "failed")
        counts = ledger.counts()
        assert counts["available"] == 1 and counts["failed"] == 1 and counts["missing"] == len(PERMANENT_REASONS) + 1
        assert counts["reasons"] == {r: (2 if r == "removed" else 1) for r in PERMANENT_REASONS}
        ledger.record_problem("a", "audio", "silent audio (peak 0)")
        ledger.record_problem("b", "audio", "missing audio file /x/b.wav")
        ledger.record_problem("a", "logmel", "something else")
        probs = ledger.problems()
        assert [(p.clip_id, p.stage, p.cause) for p in probs] == [
            ("a", "audio", "silent audio (peak 0)"), ("b", "audio", "missing audio file /x/b.wav"), ("a", "logmel", "something else")]
        assert [p.stage for p in ledger.problems("a")] == ["audio", "logmel"]
        assert all(p.time.endswith("+00:00") for p in probs)


def test_every_record_survives_a_crash(tmp_path):
    path = tmp_path / "l.sqlite"
    # a process that records and then dies without closing (os._exit skips every cleanup)
    code = ("import os, sys; sys.path.insert(0, sys.argv[2]); from pipeline.ledger import Ledger; "
            "l = Ledger(sys.argv[1]); [l.record(f'c{i}', 'y', 'available') for i in range(20)]; "
            "l.record('gone', 'g', 'missing', 'private', 'Private video'); l.record_problem('c1', 'audio', 'silent'); "
            "os._exit(9)")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(Path(__file__).resolve().parents[2])])
    assert proc.returncode == 9
    with Ledger(path) as ledger:
        assert ledger.counts() == {"available": 20, "missing": 1, "failed": 0, "reasons": {"private": 1}}
        assert ledger.get("gone").message == "Private video"
        assert len(ledger.problems()) == 1
        ledger.record("gone", "g", "missing", "private")
        assert ledger.get("gone").attempts == 2


def test_concurrent_threads_and_connections(tmp_path):
    path = tmp_path / "l.sqlite"
    shared = Ledger(path)
    other = Ledger(path)  # a second connection to the same file, as a second process would have
    errors: list[BaseException] = []

    def work(ledger: Ledger, t: int) -> None:
        try:
            for i in range(40):
                ledger.record(f"clip{i}", f"id{i}", "failed" if t % 2 else "available")
                ledger.record(f"own{t}-{i}", None, "missing", "not_found")
                ledger.record_problem(f"clip{i}", "audio", f"t{t}")
        except BaseException as exc:  # noqa: BLE001 - surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(shared if t < 4 else other, t)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    entries = shared.entries()
    assert len(entries) == 40 + 6 * 40
    assert all(entries[f"clip{i}"].attempts == 6 for i in range(40))
    assert shared.counts()["missing"] == 240
    assert len(other.problems()) == 6 * 40
    shared.close()
    other.close()
