"""The availability ledger: upsert semantics, retry policy, counts, problems once, bulk records in one transaction,
re-check scheduling, damaged and read-only files, crash safety, threads."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from avsed.core.errors import AvsedError
from pipeline.ledger import (NEVER_CHECKED, PERMANENT_REASONS, REBUILT_MESSAGE, Ledger, LedgerCorruptError, LedgerEntry,
                             LedgerError, VideoRecord)

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


# --- problems once, bulk records, re-check scheduling (issues 12 item 4, 13 items 7 and 9) ----------------------

def test_the_same_problem_is_one_row_with_first_and_last_sighting(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        first = ledger.record_problem("Ya.wav", "audio", "unreadable audio file /a/Ya.wav")
        again = [ledger.record_problem("Ya.wav", "audio", "unreadable audio file /a/Ya.wav") for _ in range(3)]
        other = ledger.record_problem("Ya.wav", "audio", "warning: silent audio (all samples are zero)")
        problems = ledger.problems()
        assert [(p.clip_id, p.cause) for p in problems] == [("Ya.wav", first.cause), ("Ya.wav", other.cause)]
        assert problems[0].time == first.time == again[-1].time  # first sighting kept
        assert problems[0].last_seen == again[-1].last_seen > first.last_seen == first.time
        assert ledger.n_problems() == 2


OLD_SCHEMA = """
CREATE TABLE videos (clip_id TEXT PRIMARY KEY, youtube_id TEXT, status TEXT NOT NULL, reason TEXT,
    message TEXT NOT NULL DEFAULT '', first_seen TEXT NOT NULL, last_checked TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE problems (id INTEGER PRIMARY KEY AUTOINCREMENT, clip_id TEXT NOT NULL, stage TEXT NOT NULL,
    cause TEXT NOT NULL, time TEXT NOT NULL);
CREATE INDEX problems_clip ON problems (clip_id);
"""


def _old_ledger(path: Path) -> None:
    """A ledger as the code before problems were recorded once wrote it: a duplicate row per rerun."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    db.executemany("INSERT INTO problems (clip_id, stage, cause, time) VALUES (?, ?, ?, ?)", [
        ("Ya", "manifest", "bad line", "2026-01-01T00:00:00.000000+00:00"),
        ("Yb", "audio", "silent", "2026-01-01T00:00:01.000000+00:00"),
        ("Ya", "manifest", "bad line", "2026-02-01T00:00:00.000000+00:00"),
        ("Ya", "manifest", "bad line", "2026-03-01T00:00:00.000000+00:00")])
    db.execute("INSERT INTO videos VALUES ('Ya', 'a', 'available', NULL, '', 't0', 't0', 1)")
    db.commit()
    db.close()


def test_an_old_ledger_with_duplicate_problems_is_folded_on_open(tmp_path):
    path = tmp_path / "old.sqlite"
    _old_ledger(path)
    with Ledger(path, read_only=True) as ledger:  # read-only: readable as it is, and left as it is
        assert [p.cause for p in ledger.problems()] == ["bad line", "silent", "bad line", "bad line"]
    with Ledger(path) as ledger:
        problems = ledger.problems()
        assert [(p.clip_id, p.stage, p.cause, p.time, p.last_seen) for p in problems] == [
            ("Ya", "manifest", "bad line", "2026-01-01T00:00:00.000000+00:00", "2026-03-01T00:00:00.000000+00:00"),
            ("Yb", "audio", "silent", "2026-01-01T00:00:01.000000+00:00", "2026-01-01T00:00:01.000000+00:00")]
        ledger.record_problem("Ya", "manifest", "bad line")
        assert ledger.n_problems() == 2 and ledger.get("Ya").status == "available"


def test_record_many_writes_20k_entries_in_one_transaction_and_reads_them_in_one_query(tmp_path):
    n = 20_000
    records = [VideoRecord(f"Y{i:011d}_0.000_10.000.wav", f"{i:011d}", *(
        ("available", None, "") if i % 7 else ("missing", "removed", "HTTP Error 410: Gone"))) for i in range(n)]
    with Ledger(tmp_path / "l.sqlite") as ledger:
        statements: list[str] = []
        ledger._db.set_trace_callback(statements.append)  # the statements SQLite runs, as it runs them
        assert ledger.record_many(records) == n
        assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT", "ROLLBACK")] == ["BEGIN IMMEDIATE", "COMMIT"]
        assert sum(s.lstrip().startswith("INSERT") for s in statements) == n
        statements.clear()
        entries = ledger.entries()
        due = ledger.due_for_recheck([r.clip_id for r in records], older_than_days=0)
        assert len(statements) == 2  # one SELECT each, whatever the number of clips
        assert len(entries) == n and entries[records[7].clip_id].reason == "removed"
        assert entries[records[8].clip_id] == LedgerEntry(records[8].clip_id, records[8].youtube_id, "available",
                                                          None, "", entries[records[8].clip_id].first_seen,
                                                          entries[records[8].clip_id].first_seen, 1)
        assert len(due) == n - len(range(0, n, 7))
        # a rerun recording the same clips again counts a second attempt, still in one transaction
        statements.clear()
        ledger.record_many(records[:100])
        assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == ["BEGIN IMMEDIATE", "COMMIT"]
        assert ledger.get(records[0].clip_id).attempts == 2 and ledger.get(records[100].clip_id).attempts == 1
        ledger._db.set_trace_callback(None)


def test_record_many_is_all_or_nothing(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        good = [VideoRecord(f"c{i}", "y", "available") for i in range(50)]
        with pytest.raises(LedgerError, match="clip bad"):
            ledger.record_many(good + [VideoRecord("bad", "y", "missing", "vanished")])
        assert ledger.entries() == {}


def test_due_for_recheck_picks_entries_last_checked_longer_ago_than_the_interval(tmp_path):
    now = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
    with Ledger(tmp_path / "l.sqlite") as ledger:
        def at(days_ago: float, *recs: VideoRecord) -> None:
            ledger.record_many(recs, checked_at=(now - timedelta(days=days_ago)).isoformat(timespec="microseconds"))

        at(45, VideoRecord("old", "o", "available"), VideoRecord("gone-old", "g", "missing", "removed"),
           VideoRecord("failed-old", "f", "failed", None, "HTTP Error 503"))
        at(29.9, VideoRecord("recent", "r", "available"))
        at(30.1, VideoRecord("just-due", "j", "available"))
        ledger.record_many([VideoRecord("rebuilt", "b", "available", None, REBUILT_MESSAGE)],
                           checked_at=NEVER_CHECKED, attempt=False)
        assert ledger.due_for_recheck(now=now) == {"old", "just-due", "rebuilt"}
        assert ledger.due_for_recheck(["old", "recent", "rebuilt", "unknown"], 30, now=now) == {"old", "rebuilt"}
        assert ledger.due_for_recheck(older_than_days=60, now=now) == {"rebuilt"}
        assert ledger.due_for_recheck(older_than_days=0, now=now) == {"old", "recent", "just-due", "rebuilt"}
        assert ledger.due_for_recheck(statuses=("missing", "failed"), now=now) == {"gone-old", "failed-old"}
        assert ledger.get("rebuilt").attempts == 0
        with pytest.raises(ValueError, match="older_than_days"):
            ledger.due_for_recheck(older_than_days=-1)


# --- damaged and read-only ledgers --------------------------------------------------------------------------------

def _assert_names_the_fix(message: str, path: Path) -> None:
    assert str(path) in message and "move it aside" in message and "rebuilds the ledger from the store" in message
    assert "\n" not in message


@pytest.mark.parametrize("read_only", [False, True])
def test_a_file_that_is_not_a_database_is_a_named_error(tmp_path, read_only):
    path = tmp_path / "features.zarr.ledger.sqlite"
    path.write_bytes(b"this is not an SQLite file, whatever its name says\n" * 200)
    with pytest.raises(LedgerCorruptError) as info:
        Ledger(path, read_only=read_only)
    assert isinstance(info.value, AvsedError) and "file is not a database" in str(info.value)
    _assert_names_the_fix(str(info.value), path)


def test_damage_found_after_opening_is_the_same_named_error(tmp_path):
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        ledger.record_many(VideoRecord(f"clip{i:05d}", f"y{i}", "available", None, "x" * 200) for i in range(2000))
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    data[5 * page:len(data) - page] = b"\xa5" * (len(data) - 6 * page)  # the header page opens, the B-tree is gone
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerCorruptError) as info:
        with Ledger(path, read_only=True) as ledger:
            ledger.entries()
    _assert_names_the_fix(str(info.value), path)


def test_read_only_ledger_reads_and_never_writes(tmp_path):
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        ledger.record("a", "a", "available")
        ledger.record("g", "g", "missing", "removed", "HTTP Error 410: Gone")
        ledger.record_problem("a", "audio", "warning: silent audio")
    before = path.read_bytes()
    with Ledger(path, read_only=True) as ro:
        assert ro.counts() == {"available": 1, "missing": 1, "failed": 0, "reasons": {"removed": 1}}
        assert ro.n_problems() == 1 and ro.get("g").message == "HTTP Error 410: Gone"
        with pytest.raises(LedgerError, match="read-only"):
            ro.record("b", "b", "available")
        with pytest.raises(LedgerError, match="read-only"):
            ro.record_problem("b", "audio", "x")
    assert path.read_bytes() == before
    # a file created but never written (a run killed at once) reads as empty and stays empty
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with Ledger(empty, read_only=True) as ro:
        assert ro.counts()["available"] == 0 and ro.entries() == {} and ro.problems() == []
    assert empty.read_bytes() == b""
    with pytest.raises(FileNotFoundError, match="no ledger file"):
        Ledger(tmp_path / "nothing.sqlite", read_only=True)
