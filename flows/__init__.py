"""Prefect flows: thin wrappers whose tasks call the plain functions of pipeline/, features/ and training/."""

import os


def in_process_defaults() -> None:
    """Environment defaults for flows run in this process without a Prefect server (an explicit setting
    wins); call before Prefect is imported, as its settings are read then. Such a run starts a temporary
    Prefect API server that gets 20 s by default; a busy machine (torch and dask loading beside it, 2 cores)
    can need more."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
