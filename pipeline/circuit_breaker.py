"""The download run's circuit breaker: stop asking a host that has started refusing every request.

When YouTube rate-limits (HTTP 429, "try again later") or bot-checks ("Sign in to confirm you're not a bot")
a client, it refuses every clip for an hour or more; a run that keeps going burns through thousands of clips,
each recorded as a failure, and prolongs the block. After `threshold` consecutive refusals of one kind the
breaker opens: the session starts no further download or probe, and the clips not yet tried come back as
`not_attempted` (the ledger is left untouched for them, so the next run tries them). A success closes the
count again; other outcomes (a removed video, a network error) leave it as it is.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

# Ledger reasons of transient `failed` outcomes that mean "the host refuses us", not "this clip is bad".
REFUSAL_REASONS = ("rate_limited", "bot_check")

REFUSAL_ADVICE = {
    "rate_limited": "the host is rate-limiting this client (HTTP 429 / \"try again later\")",
    "bot_check": "YouTube asks this client to sign in to confirm it is not a bot",
}

# What a user can do about a refusing host, in the config's words.
WHAT_TO_DO = ("wait an hour or more and rerun; or set download.cookies_file to a cookies.txt exported from a "
              "signed-in browser, download.proxy to another address, or download.sleep_interval to slow down")


@dataclass
class CircuitBreaker:
    """Counts consecutive refusals per kind; opens at `threshold` of one kind (0 or less: never opens)."""

    threshold: int = 20
    _streaks: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _tripped_by: str | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def record(self, status: str, reason: str | None) -> None:
        """One finished download or probe: a refusal adds to its kind's streak, a success resets all streaks."""
        with self._lock:
            if status == "available":
                self._streaks.clear()
            elif status == "failed" and reason in REFUSAL_REASONS:
                n = self._streaks.get(reason, 0) + 1
                self._streaks[reason] = n
                if self.threshold > 0 and n >= self.threshold and self._tripped_by is None:
                    self._tripped_by = reason

    @property
    def is_open(self) -> bool:
        """True once tripped: no further request should be made in this run."""
        return self._tripped_by is not None

    @property
    def tripped_by(self) -> str | None:
        """The refusal kind that opened the breaker (`rate_limited` / `bot_check`), None while closed."""
        return self._tripped_by

    @property
    def message(self) -> str:
        """One line for the run's report: what happened, what it means for the untried clips, what to do."""
        if self._tripped_by is None:
            return ""
        return (f"downloads stopped after {self.threshold} consecutive refusals: "
                f"{REFUSAL_ADVICE[self._tripped_by]}; the clips not yet tried are left for the next run. "
                f"To go on: {WHAT_TO_DO}")
