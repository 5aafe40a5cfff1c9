"""The writer thread: the one place in a process that writes feature rows to the store, a shard at a time.

The store is sharded (`clips_per_shard` rows per shard file) and a partial shard write rewrites the whole shard
file, so no two writers may touch one shard at once and per-row writes would rewrite a shard once per clip.
Producers (the audio stage, the embedding workers) hand rows to this thread; it buffers them per shard and writes
a shard's rows of each feature in one `write_rows` call (data first, then masks: a row is present only once its
mask is written) as soon as every row expected from that shard has arrived, or been skipped.

Rows are expected through a `Ticket` (`expect(stage, rows)`); `Ticket.wait()` returns the counts once each of its
rows has been written or skipped, so a caller (a Prefect task, a Dask task, the plain engine) knows its work is
durable. Buffered rows are bounded by the rows in flight upstream: the stages bound those.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import numpy as np


class RowSink(Protocol):
    """What the writer needs from a store (`avsed.core.store.FeatureStore` is one)."""

    def shard_of(self, row: int) -> int: ...

    def write_rows(self, feature: str, rows: np.ndarray, data: np.ndarray, masks: np.ndarray) -> None: ...

    def set_durations(self, rows: np.ndarray, durations: np.ndarray) -> None: ...


class WriterError(RuntimeError):
    """The writer thread failed; the cause is chained."""


@dataclass(eq=False)  # identity semantics: tickets are kept in sets and dicts
class Ticket:
    """Rows one caller waits for; counts what became of them."""

    expected: int
    written: int = 0
    skipped: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _error: BaseException | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self.written + self.skipped >= self.expected

    def _settle(self, written: int, skipped: int) -> None:
        with self._cond:
            self.written += written
            self.skipped += skipped
            self._cond.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> "Ticket":
        with self._cond:
            if not self._cond.wait_for(lambda: self.done or self._error is not None, timeout):
                raise TimeoutError(f"{self.expected - self.written - self.skipped} of {self.expected} rows not written")
        if self._error is not None:
            raise WriterError(f"the store writer failed: {self._error}") from self._error
        return self


@dataclass
class _Row:
    features: dict[str, tuple[np.ndarray, np.ndarray]]  # feature -> (data (T, D), mask (T,))
    duration: float | None


_STOP = object()


class ShardWriter:
    """Buffers rows per (stage, shard) and writes each shard's rows of a feature in one call; one thread."""

    def __init__(self, sink: RowSink, max_queued: int = 256,
                 on_written: Callable[[str, int, list[int], list[int], list[str]], None] | None = None):
        self.sink = sink
        # (stage, shard, rows written, rows skipped, features) once a shard's rows of a stage are settled
        self.on_written = on_written
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(max_queued)))
        self._pending: dict[tuple[str, int], set[int]] = defaultdict(set)  # rows still expected, per (stage, shard)
        self._rows: dict[tuple[str, int], dict[int, _Row]] = defaultdict(dict)  # rows arrived, not yet written
        self._skipped: dict[tuple[str, int], list[int]] = defaultdict(list)
        self._tickets: dict[tuple[str, int], Ticket] = {}
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self.shard_writes = 0  # write_rows calls made
        self.rows_written = 0
        self.busy_seconds = 0.0  # time spent writing
        self._thread = threading.Thread(target=self._run, name="avsed-writer", daemon=True)
        self._thread.start()

    # --- producers ---------------------------------------------------------------------------------------------
    def expect(self, stage: str, rows: Iterable[int]) -> Ticket:
        """Announce rows that will arrive (`put`) or be given up (`skip`) for `stage` ("audio", "video")."""
        rows = [int(r) for r in rows]
        ticket = Ticket(len(rows))
        if rows:
            self._send(("expect", stage, rows, ticket))
        return ticket

    def put(self, stage: str, row: int, features: dict[str, tuple[np.ndarray, np.ndarray]],
            duration: float | None = None) -> None:
        """A row's data and frame mask for each of `features` (and its audio duration, from the audio stage)."""
        self._send(("put", stage, int(row), _Row(features, duration)))

    def skip(self, stage: str, row: int, duration: float | None = None) -> None:
        """A row that yields no feature this run (missing video, unreadable audio); a duration may still be known."""
        self._send(("skip", stage, int(row), duration))

    def close(self) -> None:
        """Write what is left and stop; raises if the thread failed."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, item) -> None:
        self._raise()
        while True:  # bounded queue: a slow store slows the producers instead of filling memory
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise WriterError(f"the store writer failed: {self._error}") from self._error

    # --- the thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if self._error is not None:
                continue  # drain, so producers blocked on a full queue are released and see the error
            try:
                self._handle(item)
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                self._error = exc
                for ticket in set(self._tickets.values()):
                    ticket._fail(exc)
        if self._error is None:
            try:
                leftovers = [key for key, rows in self._rows.items() if rows]
                for key in leftovers:  # rows whose shard still expected more (a caller gave up): keep what arrived
                    self._flush(key)
            except BaseException as exc:  # noqa: BLE001
                self._error = exc

    def _handle(self, item) -> None:
        kind, stage = item[0], item[1]
        if kind == "expect":
            rows, ticket = item[2], item[3]
            for row in rows:
                key = (stage, self.sink.shard_of(row))
                self._pending[key].add(row)
                self._tickets[(stage, row)] = ticket
            return
        row = item[2]
        key = (stage, self.sink.shard_of(row))
        if kind == "put":
            self._rows[key][row] = item[3]
        else:
            if item[3] is not None:
                self._rows[key][row] = _Row({}, item[3])
            else:
                self._skipped[key].append(row)
        self._pending[key].discard(row)
        if not self._pending[key]:
            self._flush(key)

    def _flush(self, key: tuple[str, int]) -> None:
        t0 = time.perf_counter()
        try:
            self._write(key)
        finally:
            self.busy_seconds += time.perf_counter() - t0

    def _write(self, key: tuple[str, int]) -> None:
        stage, shard = key
        rows = self._rows.pop(key, {})
        skipped = self._skipped.pop(key, [])
        self._pending.pop(key, None)
        order = sorted(rows)
        durations = [(r, rows[r].duration) for r in order if rows[r].duration is not None]
        if durations:
            self.sink.set_durations(np.array([r for r, _ in durations]), np.array([d for _, d in durations]))
        features = sorted({f for r in order for f in rows[r].features})
        written: dict[int, bool] = {}
        for feature in features:
            with_f = [r for r in order if feature in rows[r].features]
            data = np.stack([rows[r].features[feature][0] for r in with_f])
            masks = np.stack([np.asarray(rows[r].features[feature][1], dtype=bool) for r in with_f])
            self.sink.write_rows(feature, np.asarray(with_f), data, masks)
            self.shard_writes += 1
            for r in with_f:
                written[r] = True
        self.rows_written += len(written)
        # What each caller learns: a row counts as written if any feature of it was, else as skipped.
        done_rows = order + skipped
        per_ticket: dict[int, tuple[Ticket, list[int], list[int]]] = {}
        for r in done_rows:
            ticket = self._tickets.pop((stage, r), None)
            if ticket is None:
                continue
            entry = per_ticket.setdefault(id(ticket), (ticket, [], []))
            (entry[1] if written.get(r) else entry[2]).append(r)
        if self.on_written is not None:
            self.on_written(stage, shard, sorted(written), [r for r in done_rows if not written.get(r)], features)
        for ticket, w, s in per_ticket.values():
            ticket._settle(len(w), len(s))


def shard_groups(rows: Iterable[int], shard_of: Callable[[int], int]) -> dict[int, list[int]]:
    """Rows grouped by shard, shards in ascending order (the unit of work of the flows' tasks)."""
    out: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        out[shard_of(int(r))].append(int(r))
    return dict(sorted(out.items()))

