"""Processes that tests and benchmarks start around a loopback Prefect server (the server, workers): a free port,
waiting for a condition while watching the process, and stopping a process group for sure."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent  # this environment's executables (prefect, avsed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None,
             interval: float = 0.1) -> None:
    """Poll `predicate()` (exceptions count as not yet) until true; fail naming `what` on timeout or when `proc`
    exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def stop_group(process: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM a process group started with start_new_session; SIGKILL what is left after `grace` seconds (a
    Prefect worker shutting down on a loaded machine took longer than a minute once)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    except ProcessLookupError:
        process.wait(timeout=30)
