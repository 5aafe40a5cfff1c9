"""One cap on a run's downloads across a Dask cluster.

In a process, one `DownloadSession` has `download.concurrency` workers: the run's cap. On Dask every shard task
opens its own session, so without more the run would have `concurrency` x shards in flight. A
`distributed.Semaphore` on the scheduler, named after the flow run, holds `concurrency` leases; each download of
every shard task takes one before it is handed to its session and gives it back when the clip's download ends.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["ClusterDownloadCap", "LeasedDownloads"]


@dataclass(frozen=True)
class ClusterDownloadCap:
    """The name and size of a run's download semaphore (picklable: it travels to the shard tasks)."""

    name: str
    max_leases: int

    def semaphore(self):
        from distributed import Semaphore

        # The same name on every worker is the same semaphore (the scheduler keeps one per name).
        return Semaphore(max_leases=int(self.max_leases), name=self.name)

    def apply(self, run, video_features: Sequence[str]) -> None:
        """Make `run`'s video stream (an `ExtractionRun`'s) take a lease per download."""
        stream = run.stream(video_features)
        if not isinstance(stream.downloads, LeasedDownloads):
            stream.downloads = LeasedDownloads(stream.downloads, self.semaphore())


class LeasedDownloads:
    """A download session whose `submit` / `probe` first take a lease of `semaphore` (blocking while the run has
    its cap in flight) and give it back when the clip's future is done, whatever its outcome."""

    def __init__(self, session, semaphore):
        self.session, self.semaphore = session, semaphore

    def submit(self, clip_id: str, segment) -> Future:
        return self._leased(self.session.submit, clip_id, segment)

    def probe(self, clip_id: str, segment) -> Future:
        return self._leased(self.session.probe, clip_id, segment)

    def _leased(self, call, clip_id: str, segment) -> Future:
        self.semaphore.acquire()
        try:
            future = call(clip_id, segment)
        except BaseException:
            self.semaphore.release()
            raise
        future.add_done_callback(lambda _: self.semaphore.release())
        return future

    def __getattr__(self, name: str) -> Any:  # close(), breaker, config: the session's own
        return getattr(self.session, name)
