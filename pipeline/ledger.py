"""The availability ledger: for every clip, whether its video could be had, and if not, why.

A SQLite file beside the store (`features.zarr.ledger.sqlite`: foreign files inside a zarr group make
zarr warn). One row per clip in `videos`: status `available`, `missing` (a permanent reason such as
removed / private / terminated / copyright / geo / age / not_found / corrupt / unsupported /
no_youtube_id; not retried unless asked) or `failed` (a transient error: network, timeout, 5xx;
retried on every run), the raw message (yt-dlp's or ffmpeg's), first-seen and last-checked times (UTC,
ISO-8601) and the number of attempts. Per-clip problems that are not about the video (missing audio
file, silent audio, ...) go to a second table, `problems`, with their time.

Every record commits at once and the database runs in WAL mode, so a crash loses at most the record
being written; one connection guarded by a lock serves all threads of a process, and SQLite's own
locking (with a busy timeout) serves several processes.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

VIDEO_STATUSES = ("available", "missing", "failed")
PERMANENT_REASONS = ("removed", "private", "terminated", "copyright", "geo", "age", "not_found", "corrupt",
                     "unsupported", "no_youtube_id")
LEDGER_SUFFIX = ".ledger.sqlite"

_SCHEMA = """
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
    time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS problems_clip ON problems (clip_id);
"""


class LedgerError(ValueError):
    """A record that breaks the ledger's vocabulary (unknown status or reason)."""


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
    time: str


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _check(clip_id: str, status: str, reason: str | None) -> None:
    if status not in VIDEO_STATUSES:
        raise LedgerError(f"clip {clip_id}: video status {status!r} is not one of {VIDEO_STATUSES}")
    if status == "missing" and reason not in PERMANENT_REASONS:
        raise LedgerError(f"clip {clip_id}: a missing video needs a reason from {PERMANENT_REASONS}, got {reason!r}")
    if status == "available" and reason is not None:
        raise LedgerError(f"clip {clip_id}: an available video has no reason, got {reason!r}")


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process crashes
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)

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
        with self._lock:
            self._db.execute(
                """INSERT INTO videos (clip_id, youtube_id, status, reason, message, first_seen, last_checked, attempts)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 1)
                   ON CONFLICT(clip_id) DO UPDATE SET
                       youtube_id = excluded.youtube_id, status = excluded.status, reason = excluded.reason,
                       message = excluded.message, last_checked = excluded.last_checked,
                       attempts = videos.attempts + 1""",
                (clip_id, youtube_id, status, reason, message or "", now, now),
            )
            row = self._db.execute("SELECT * FROM videos WHERE clip_id = ?", (clip_id,)).fetchone()
        return LedgerEntry(*row)

    def get(self, clip_id: str) -> LedgerEntry | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM videos WHERE clip_id = ?", (clip_id,)).fetchone()
        return LedgerEntry(*row) if row else None

    def entries(self) -> dict[str, LedgerEntry]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM videos ORDER BY clip_id").fetchall()
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

    def counts(self) -> dict:
        """{"available": n, "missing": n, "failed": n, "reasons": {reason: n}} over missing videos."""
        out: dict = {s: 0 for s in VIDEO_STATUSES}
        reasons: dict[str, int] = {}
        with self._lock:
            for status, n in self._db.execute("SELECT status, COUNT(*) FROM videos GROUP BY status"):
                out[status] = n
            for reason, n in self._db.execute(
                    "SELECT reason, COUNT(*) FROM videos WHERE status = 'missing' GROUP BY reason ORDER BY reason"):
                reasons[reason] = n
        out["reasons"] = reasons
        return out

    # -- other per-clip problems ----------------------------------------------------------------
    def record_problem(self, clip_id: str, stage: str, cause: str) -> LedgerProblem:
        """A per-clip problem that is not about the video (e.g. stage "audio", cause "silent audio")."""
        now = utc_now()
        with self._lock:
            self._db.execute("INSERT INTO problems (clip_id, stage, cause, time) VALUES (?, ?, ?, ?)",
                             (clip_id, stage, str(cause), now))
        return LedgerProblem(clip_id, stage, str(cause), now)

    def problems(self, clip_id: str | None = None) -> list[LedgerProblem]:
        with self._lock:
            if clip_id is None:
                rows = self._db.execute("SELECT clip_id, stage, cause, time FROM problems ORDER BY id").fetchall()
            else:
                rows = self._db.execute("SELECT clip_id, stage, cause, time FROM problems WHERE clip_id = ? ORDER BY id",
                                        (clip_id,)).fetchall()
        return [LedgerProblem(*r) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None  # type: ignore[assignment]

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
