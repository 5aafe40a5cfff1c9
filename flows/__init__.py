"""Prefect flows: thin wrappers whose tasks call the plain functions of pipeline/, features/ and training/.

Also what every flow shares: the in-process defaults, and the handling of expected errors (`AvsedError`: a
refusal the user can act on) as one line that is never retried.
"""

import logging
import os

# Prefect's loggers of task and flow runs (the engine logs a failure there, with its traceback).
_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


def in_process_defaults(local_api: bool = True) -> None:
    """Environment for flows run in this process (an explicit setting wins); call before Prefect is imported, as
    its settings are read then.

    Such a run needs a Prefect API. Without one configured, `local_api` starts Prefect's temporary API server
    ourselves, with a parent-death signal (flows.local_api): Prefect's own would outlive this process when it is
    killed outright. The server gets 120 s to start (20 s by default; a busy machine, torch and dask loading beside
    it on 2 cores, can need more). Its telemetry service's heartbeat logs a `database is locked` traceback on most
    runs (STACK.md): it is turned off.
    """
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if local_api:
        from flows.local_api import start_local_api

        start_local_api()


def is_expected_error(exc: BaseException | None) -> bool:
    from avsed.core.errors import AvsedError

    return isinstance(exc, AvsedError)


def retry_unless_expected(task, task_run, state) -> bool:
    """`retry_condition_fn` of the flows' tasks: an expected error (bad config, missing weights, a store made with
    other settings, a store another run writes) cannot succeed on a retry; anything else may (a busy disk)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - the state holds no readable result: retry as Prefect would
        return True
    return not is_expected_error(exc)


class _OneLineExpectedErrors(logging.Filter):
    """Drops the traceback of an expected error from Prefect's failure logs: its message is the whole story."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and is_expected_error(record.exc_info[1]):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_expected_errors() -> None:
    """Make Prefect log an expected error as its one line (idempotent)."""
    for name in _RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLineExpectedErrors) for f in logger.filters):
            logger.addFilter(_OneLineExpectedErrors())
