"""The availability ledger: for every clip, whether its video could be had, and if not, why.

A SQLite file beside the store (`features.zarr.ledger.sqlite`: foreign files inside a zarr group make
zarr warn). One row per clip in `videos`: status `available`, `missing` (a permanent reason such as
removed / private / terminated / copyright / geo / age / not_found / corrupt / unsupported /
no_youtube_id; not retried unless asked) or `failed` (a transient error: network, timeout, 5xx;
retried on every run), the raw message (yt-dlp's or ffmpeg's), first-seen and last-checked times (UTC,
ISO-8601) and the number of attempts. Per-clip problems that are not about the video (missing audio
file, silent audio, ...) go to a second table, `problems`: one row per (clip, stage, cause), with the time
it was first seen (`time`) and last seen (`last_seen`), so a rerun that meets the same problem adds no row.

Every record commits at once and the database runs in WAL mode, so a crash loses at most the record
being written; one connection guarded by a lock serves all threads of a process, and SQLite's own
locking (with a busy timeout) serves several processes. `record_many` writes any number of records in one
transaction (DESED has ~20k clips: one transaction each would cost a disk sync each).

The ledger can be lost or damaged while the store is fine:
- missing: `open_ledger_for_store` rebuilds it from the store (`rebuild_ledger`): a clip with a cached video
  feature becomes `available` with a last-checked time so old that the next run re-checks its video, a clip
  without a YouTube id `missing/no_youtube_id`; every other clip gets no entry and is simply tried.
- damaged (`file is not a database`): `LedgerCorruptError` names the file and says to move it aside; the
  next run then rebuilds it.
`Ledger(path, read_only=True)` never writes (SQLite `mode=ro`; `immutable=1` where even that needs a write,
e.g. a WAL database in a read-only folder), for `avsed status` on a store the user may not write.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator
from urllib.parse import quote

import numpy as np

from avsed.core.errors import AvsedError

if TYPE_CHECKING:  # pragma: no cover
    from avsed.core.store import FeatureStore

VIDEO_STATUSES = ("available", "missing", "failed")
PERMANENT_REASONS = ("removed", "private", "terminated", "copyright", "geo", "age", "not_found", "corrupt",
                     "unsupported", "no_youtube_id")
LEDGER_SUFFIX = ".ledger.sqlite"
# Extraction's default for `recheck_after_days`: a cached clip's video is asked about again only when its
# entry was last checked longer ago than this, so a rerun does not ask the host about every video.
DEFAULT_RECHECK_AFTER_DAYS = 30.0
# last_checked of entries rebuilt from the store: older than any re-check interval, so the next run checks them.
NEVER_CHECKED = "1970-01-01T00:00:00.000000+00:00"
REBUILT_MESSAGE = ("rebuilt from the store after the ledger was lost: features were extracted, so the video "
                   "was available then; re-check pending")

_TABLES = """
CREATE TABLE IF NOT EXISTS videos (
    clip_id TEXT PRIMARY KEY,
    youtube_id TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    message TEXT NOT NULL DEFAULT '',
    first_seen TEXT NOT NULL,
    last_checked TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS problems (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    clip_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    cause TEXT NOT NULL,
    time TEXT NOT NULL,
    last_seen TEXT
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS problems_clip ON problems (clip_id);
CREATE INDEX IF NOT EXISTS videos_recheck ON videos (status, last_checked);
"""
_PROBLEMS_ONCE = "problems_once"  # the unique index on (clip_id, stage, cause)

_UPSERT = """INSERT INTO videos (clip_id, youtube_id, status, reason, message, first_seen, last_checked, attempts)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(clip_id) DO UPDATE SET
                 youtube_id = excluded.youtube_id, status = excluded.status, reason = excluded.reason,
                 message = excluded.message, last_checked = excluded.last_checked,
                 attempts = videos.attempts + excluded.attempts"""

# SQLite primary result codes (the low byte of an extended code) that mean the file itself is damaged.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26
# ... and those a read-only connection meets when even reading a WAL database needs a write it may not do.
_SQLITE_READONLY, _SQLITE_CANTOPEN = 8, 14


class LedgerError(ValueError):
    """A record that breaks the ledger's vocabulary (unknown status or reason), or a write to a read-only ledger."""


class LedgerCorruptError(AvsedError):
    """The ledger file is not a readable SQLite database; the message says how to have it rebuilt."""

    def __init__(self, path: Path, cause: str):
        aside = path.with_name(path.name + ".damaged")
        super().__init__(
            f"{path}: the availability ledger is damaged ({cause}); move it aside (mv {path} {aside}) and run the "
            f"extraction again: it rebuilds the ledger from the store (cached videos are re-checked)")
        self.path = path


@dataclass(frozen=True)
class VideoRecord:
    """One outcome to record (see `Ledger.record_many`)."""

    clip_id: str
    youtube_id: str | None
    status: str
    reason: str | None = None
    message: str = ""


@dataclass(frozen=True)
class LedgerEntry:
    clip_id: str
    youtube_id: str | None
    status: str
    reason: str | None
    message: str
    first_seen: str
    last_checked: str
    attempts: int


@dataclass(frozen=True)
class LedgerProblem:
    clip_id: str
    stage: str
    cause: str
    time: str  # first seen
    last_seen: str = ""


@dataclass(frozen=True)
class LedgerRebuild:
    """What `rebuild_ledger` recreated: entries `available` (re-check pending) and `missing/no_youtube_id`."""

    available: int
    no_youtube_id: int


def utc_now() -> str:
    return _iso(datetime.now(timezone.utc))


def _iso(t: datetime) -> str:
    # One format everywhere: the re-check query compares these strings, which is only right if they agree.
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _check(clip_id: str, status: str, reason: str | None) -> None:
    if status not in VIDEO_STATUSES:
        raise LedgerError(f"clip {clip_id}: video status {status!r} is not one of {VIDEO_STATUSES}")
    if status == "missing" and reason not in PERMANENT_REASONS:
        raise LedgerError(f"clip {clip_id}: a missing video needs a reason from {PERMANENT_REASONS}, got {reason!r}")
    if status == "available" and reason is not None:
        raise LedgerError(f"clip {clip_id}: an available video has no reason, got {reason!r}")


def _result_code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _is_damage(exc: sqlite3.Error) -> bool:
    return _result_code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


class Ledger:
    """One open ledger file. `read_only=True` never writes to the file (no WAL switch, no schema)."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = bool(read_only)
        self.rebuild: LedgerRebuild | None = None  # set when `rebuild_ledger` made this file
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            if self.read_only:
                self._open_read_only()
            else:
                self._open_for_writing()
        except sqlite3.DatabaseError as exc:
            self.close()
            if _is_damage(exc):
                raise LedgerCorruptError(self.path, str(exc)) from None
            raise

    def _open_for_writing(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process crashes
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_TABLES + _INDEXES)
            self._migrate_problems()
        self._problem_columns = "clip_id, stage, cause, time, last_seen"

    def _migrate_problems(self) -> None:
        """Ledgers written before problems were recorded once: add `last_seen`, fold duplicates, add the index."""
        db = self._db
        assert db is not None
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (_PROBLEMS_ONCE,)).fetchone():
            return
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait and then find the index
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(problems)")}
            if "last_seen" not in columns:
                db.execute("ALTER TABLE problems ADD COLUMN last_seen TEXT")
            db.execute("""UPDATE problems SET last_seen = (
                              SELECT MAX(p.time) FROM problems p WHERE p.clip_id = problems.clip_id
                              AND p.stage = problems.stage AND p.cause = problems.cause)
                          WHERE last_seen IS NULL""")
            db.execute("DELETE FROM problems WHERE id NOT IN (SELECT MIN(id) FROM problems GROUP BY clip_id, stage, cause)")
            db.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {_PROBLEMS_ONCE} ON problems (clip_id, stage, cause)")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _open_read_only(self) -> None:
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no ledger file")
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            self._db = self._connect(uri)
        except sqlite3.OperationalError as exc:
            if _result_code(exc) not in (_SQLITE_READONLY, _SQLITE_CANTOPEN):
                raise
            # A WAL database needs its -shm file, which a read-only folder cannot hold: read the file as it is.
            self._db = self._connect(uri + "&immutable=1")
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"videos", "problems"} <= tables:
            # A ledger created but never written (a run killed at once): empty, without writing to it.
            self._db.executescript(_TABLES.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE IF NOT EXISTS"))
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(problems)")}
        self._problem_columns = "clip_id, stage, cause, time, " + ("last_seen" if "last_seen" in columns else "time")

    def _connect(self, uri: str) -> sqlite3.Connection:
        db = sqlite3.connect(uri, uri=True, timeout=30.0, check_same_thread=False, isolation_level=None)
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opening is lazy: this reads the file
        except sqlite3.Error:
            db.close()
            raise
        return db

    @contextmanager
    def _using(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; a damaged file becomes `LedgerCorruptError` wherever it shows."""
        if write and self.read_only:
            raise LedgerError(f"{self.path}: the ledger was opened read-only; open it without read_only to record")
        with self._lock:
            if self._db is None:
                raise LedgerError(f"{self.path}: the ledger is closed")
            try:
                yield self._db
            except sqlite3.DatabaseError as exc:
                if _is_damage(exc):
                    raise LedgerCorruptError(self.path, str(exc)) from None
                raise

    @staticmethod
    def path_for_store(store_path: str | Path) -> Path:
        """`features.zarr` -> `features.zarr.ledger.sqlite`, beside (not inside) the store."""
        store = Path(store_path)
        return store.parent / (store.name.rstrip("/") + LEDGER_SUFFIX)

    # -- videos ---------------------------------------------------------------------------------
    def record(self, clip_id: str, youtube_id: str | None, status: str, reason: str | None = None,
               message: str = "") -> LedgerEntry:
        """Record the outcome of one attempt for `clip_id` (insert or update; commits at once)."""
        _check(clip_id, status, reason)
        now = utc_now()
        with self._using(write=True) as db:
            db.execute(_UPSERT, (clip_id, youtube_id, status, reason, message or "", now, now, 1))
            row = db.execute("SELECT * FROM videos WHERE clip_id = ?", (clip_id,)).fetchone()
        return LedgerEntry(*row)

    def record_many(self, records: Iterable[VideoRecord], checked_at: str | None = None,
                    attempt: bool = True) -> int:
        """Record many outcomes in one transaction (all or none); returns how many.

        `checked_at` (default now) is their last-checked time; `attempt=False` records what is known without
        counting an attempt (e.g. rebuilt from the store). Every record is validated before anything is written.
        """
        records = list(records)
        for r in records:
            _check(r.clip_id, r.status, r.reason)
        now = checked_at or utc_now()
        rows = [(r.clip_id, r.youtube_id, r.status, r.reason, r.message or "", now, now, int(attempt))
                for r in records]
        with self._using(write=True) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_UPSERT, rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return len(rows)

    def get(self, clip_id: str) -> LedgerEntry | None:
        with self._using() as db:
            row = db.execute("SELECT * FROM videos WHERE clip_id = ?", (clip_id,)).fetchone()
        return LedgerEntry(*row) if row else None

    def entries(self) -> dict[str, LedgerEntry]:
        """Every entry, in one query (for planners: never one query per clip)."""
        with self._using() as db:
            rows = db.execute("SELECT * FROM videos ORDER BY clip_id").fetchall()
        return {r[0]: LedgerEntry(*r) for r in rows}

    def should_download(self, clip_id: str, recheck_missing: bool = False) -> bool:
        """Whether to try the clip's video now.

        Never seen or `failed` (transient) -> yes; `missing` (permanent) -> only with `recheck_missing`;
        `available` -> yes (the caller asks only when it still needs the frames, e.g. a new feature).
        """
        entry = self.get(clip_id)
        if entry is None or entry.status in ("failed", "available"):
            return True
        return recheck_missing

    def due_for_recheck(self, clip_ids: Iterable[str] | None = None,
                        older_than_days: float = DEFAULT_RECHECK_AFTER_DAYS,
                        statuses: tuple[str, ...] = ("available",), now: datetime | None = None) -> set[str]:
        """Clips (of `clip_ids`, default all) whose entry has one of `statuses` and was last checked more than
        `older_than_days` ago: the ones a rerun should ask the host about again. One query for any number of clips."""
        if older_than_days < 0:
            raise ValueError(f"older_than_days={older_than_days}: must be >= 0")
        cutoff = _iso((now or datetime.now(timezone.utc)) - timedelta(days=older_than_days))
        marks = ", ".join("?" for _ in statuses)
        with self._using() as db:
            due = {cid for (cid,) in db.execute(
                f"SELECT clip_id FROM videos WHERE status IN ({marks}) AND last_checked < ?", (*statuses, cutoff))}
        return due if clip_ids is None else due.intersection(clip_ids)

    def counts(self) -> dict:
        """{"available": n, "missing": n, "failed": n, "reasons": {reason: n}} over missing videos."""
        out: dict = {s: 0 for s in VIDEO_STATUSES}
        reasons: dict[str, int] = {}
        with self._using() as db:
            for status, n in db.execute("SELECT status, COUNT(*) FROM videos GROUP BY status"):
                out[status] = n
            for reason, n in db.execute(
                    "SELECT reason, COUNT(*) FROM videos WHERE status = 'missing' GROUP BY reason ORDER BY reason"):
                reasons[reason] = n
        out["reasons"] = reasons
        return out

    # -- other per-clip problems ----------------------------------------------------------------
    def record_problem(self, clip_id: str, stage: str, cause: str) -> LedgerProblem:
        """A per-clip problem that is not about the video (e.g. stage "audio", cause "silent audio").

        The same (clip, stage, cause) is one row: a repeat only moves its `last_seen`; `time` stays the first sighting.
        """
        now = utc_now()
        key = (clip_id, stage, str(cause))
        with self._using(write=True) as db:
            db.execute("""INSERT INTO problems (clip_id, stage, cause, time, last_seen) VALUES (?, ?, ?, ?, ?)
                          ON CONFLICT(clip_id, stage, cause) DO UPDATE SET last_seen = excluded.last_seen""",
                       (*key, now, now))
            row = db.execute(f"SELECT {self._problem_columns} FROM problems WHERE clip_id = ? AND stage = ? "
                             f"AND cause = ?", key).fetchone()
        return LedgerProblem(*row)

    def problems(self, clip_id: str | None = None) -> list[LedgerProblem]:
        with self._using() as db:
            if clip_id is None:
                rows = db.execute(f"SELECT {self._problem_columns} FROM problems ORDER BY id").fetchall()
            else:
                rows = db.execute(f"SELECT {self._problem_columns} FROM problems WHERE clip_id = ? ORDER BY id",
                                  (clip_id,)).fetchall()
        return [LedgerProblem(*r) for r in rows]

    def n_problems(self) -> int:
        with self._using() as db:
            return int(db.execute("SELECT COUNT(*) FROM problems").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- a lost ledger -------------------------------------------------------------------------------------

def store_video_features(store: "FeatureStore") -> list[str]:
    """The store's features computed from video frames (by the extractor registry's kind of each feature)."""
    from features.base import FrameExtractor, extractor_class

    out = []
    for name in store.feature_names():
        try:
            cls = extractor_class(store.provenance(name).get("extractor", name))
        except KeyError:  # a feature this code does not know: it cannot say the video was there
            continue
        if issubclass(cls, FrameExtractor):
            out.append(name)
    return out


def rebuild_ledger(ledger_path: str | Path, store: "FeatureStore",
                   video_features: Iterable[str] | None = None) -> Ledger:
    """Recreate a lost ledger from the store and return it open (`ledger.rebuild` says what it holds).

    A clip with any video feature row present was downloaded once: `available`, last checked `NEVER_CHECKED`
    (so the next run's re-check asks about it), message `REBUILT_MESSAGE`. A clip without a YouTube id:
    `missing/no_youtube_id`. Every other clip gets no entry, so the next run tries its video. Written to a
    temporary file and renamed: a crash leaves no half-built ledger that a rerun would take for a real one.
    """
    from pipeline.download import NO_YOUTUBE_ID_MESSAGE

    path = Path(ledger_path)
    names = list(store_video_features(store) if video_features is None else video_features)
    clip_ids = store.clip_ids()
    youtube_ids = store.strings("youtube_id")
    cached = np.zeros(len(clip_ids), dtype=bool)
    for name in names:
        cached |= np.asarray(store.present(name), dtype=bool)
    available = [VideoRecord(str(c), str(y), "available", None, REBUILT_MESSAGE)
                 for c, y, has in zip(clip_ids, youtube_ids, cached) if y and has]
    no_id = [VideoRecord(str(c), None, "missing", "no_youtube_id", NO_YOUTUBE_ID_MESSAGE)
             for c, y in zip(clip_ids, youtube_ids) if not y]
    tmp = path.with_name(f"{path.name}.rebuilding-{os.getpid()}")
    remove_rebuild_leftovers(path)
    try:
        with Ledger(tmp) as fresh:
            fresh.record_many(available, checked_at=NEVER_CHECKED, attempt=False)
            fresh.record_many(no_id, attempt=False)
    except BaseException:  # a full disk, a kill: no half-built ledger stays behind
        remove_rebuild_leftovers(path)
        raise
    # Closing checkpointed the WAL into the file. A WAL left beside the lost file must not be replayed into this one.
    if not path.exists():
        for stale in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            stale.unlink(missing_ok=True)
    os.replace(tmp, path)
    ledger = Ledger(path)
    ledger.rebuild = LedgerRebuild(available=len(available), no_youtube_id=len(no_id))
    return ledger


def remove_rebuild_leftovers(ledger_path: str | Path) -> int:
    """Delete `<ledger>.rebuilding-<pid>` files (and their -wal / -shm) that a rebuild stopped by a full disk or
    a kill left; the caller holds the store's lock, so no other rebuild is under way. Returns how many went."""
    path = Path(ledger_path)
    n = 0
    for leftover in path.parent.glob(f"{glob_escape(path.name)}.rebuilding-*"):
        leftover.unlink(missing_ok=True)
        n += 1
    return n


def open_ledger_for_store(ledger_path: str | Path, store: "FeatureStore") -> Ledger:
    """The ledger of `store`, rebuilt from the store first if its file is gone while the store has clips.

    For the extraction planner: without this, a deleted ledger silently stopped availability tracking (cached
    clips were never re-checked and status said 0 available).
    """
    path = Path(ledger_path)
    remove_rebuild_leftovers(path)
    if not path.exists() and store.n_clips > 0:
        return rebuild_ledger(path, store)
    return Ledger(path)
