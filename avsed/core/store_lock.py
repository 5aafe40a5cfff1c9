"""One writer per store: the lock every run that writes a feature store takes (`<store>.lock`, an OS lock the
kernel releases when its holder dies), and the store's base error. Readers never take it. See avsed/core/store.py
for the growth protocol the lock is step 1 of."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from avsed.core.errors import AvsedError

LOCK_SUFFIX = ".lock"


class StoreError(AvsedError, RuntimeError):
    pass


class StoreLockedError(StoreError):
    """Another run is writing this store."""


def lock_path(store_path: str | Path) -> Path:
    p = Path(store_path)
    return p.parent / (p.name.rstrip("/") + LOCK_SUFFIX)



# --- the writer lock ----------------------------------------------------------------------------------------

class StoreLock:
    """One writer per store: `with StoreLock(path, purpose="extract"): ...`.

    An exclusive `flock` on `<store>.lock`: the kernel releases it when the holder exits or is killed, so a
    crashed run never leaves a stale lock on a local disk. The file also names the holder (host, pid, purpose,
    start time) for the message a second run gets. If a holder on another machine died without the network file
    system noticing, deleting the lock file frees the store: the next run locks a new file.

    Re-entrant within a process (the extraction's tasks run in threads of the run that holds it): flock belongs
    to one open file, so a second acquisition in the same process must share the first one's.
    """

    _held: dict[str, tuple[int, int]] = {}  # resolved lock path -> (fd, depth): mirrors the OS's per-process state
    _guard = threading.Lock()

    def __init__(self, store_path: str | Path, purpose: str = "write"):
        self.store_path = Path(store_path)
        self.path = lock_path(store_path)
        self.purpose = purpose
        self._key = str(self.path.resolve())

    @classmethod
    def held(cls, store_path: str | Path) -> bool:
        with cls._guard:
            return str(lock_path(store_path).resolve()) in cls._held

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def _written_holder(self, wait: float = 1.0) -> dict[str, Any]:
        """The holder's record, waited for: a holder writes it just after taking the lock (truncate, then write),
        so a run refused in between read an empty file and named "another run" (seen on a loaded machine). An
        empty record after `wait` seconds (a lock file of a run that never wrote one) is what it is."""
        deadline = time.monotonic() + wait
        while not (h := self.holder()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return h

    def acquire(self) -> "StoreLock":
        import fcntl

        with self._guard:
            if self._key in self._held:
                fd, depth = self._held[self._key]
                self._held[self._key] = (fd, depth + 1)
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                h = self._written_holder()
                who = (f"{h.get('purpose', 'a run')} (pid {h.get('pid', '?')} on {h.get('host', '?')}, since "
                       f"{h.get('since', '?')})") if h else "another run"
                raise StoreLockedError(
                    f"{self.store_path}: the store is being written by {who}; wait for that run to finish (readers such "
                    f"as training and `avsed status` need no lock). If that process is gone on another machine, "
                    f"delete {self.path}") from None
            info = {"host": socket.gethostname(), "pid": os.getpid(), "purpose": self.purpose,
                    "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._held[self._key] = (fd, 1)
        return self

    def release(self) -> None:
        import fcntl

        with self._guard:
            fd, depth = self._held[self._key]
            if depth > 1:
                self._held[self._key] = (fd, depth - 1)
                return
            del self._held[self._key]
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
