"""A Prefect API server for the flow runs of this process, that ends when this process ends, even when it is
killed outright (SIGKILL, an OOM kill).

Without a `PREFECT_API_URL`, Prefect starts a temporary API server as a child process at the first flow run and
stops it at exit; a process killed outright never gets there, and its server (~220 MB) lives on with parent 1.
This one is the same server (the same uvicorn command and settings as Prefect's temporary one) started with a
parent-death signal: the kernel sends it SIGTERM when its parent dies, however it dies.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

__all__ = ["LocalApiServer", "start_local_api"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind


def _parent_death_signal():
    """preexec_fn for the server: SIGTERM when the parent dies (Linux; elsewhere nothing is done).

    The libc function is looked up here, before the fork: the child only makes the call. The signal follows the
    thread that forked, so start the server from the main thread (as the CLI does)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call: nobody would ever stop this process
            os._exit(0)

    return preexec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalApiServer:
    """The temporary Prefect API server of this process (see the module docstring). `start()` returns once
    `/api/health` answers; `stop()` (also run at exit) ends it."""

    def __init__(self, startup_timeout: float | None = None):
        self.startup_timeout = float(startup_timeout if startup_timeout is not None else
                                     os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _launch(self) -> subprocess.Popen:
        self.port = _free_port()
        # Prefect's own temporary server: no UI, ephemeral mode (its services as Prefect runs them then).
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        return subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host",
             "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            # A session of its own: the Ctrl-C meant for the run (its process group) must not take the API server
            # down under the flow's own shutdown; it ends with this process (the death signal, `stop` at exit).
            env=env, stdin=subprocess.DEVNULL, preexec_fn=_parent_death_signal(), start_new_session=True)

    def start(self) -> "LocalApiServer":
        if self.process is not None:
            return self
        self.process = self._launch()
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code == _PORT_IN_USE:  # another process took the free port first
                self.process = self._launch()
                continue
            if code is not None:
                self.process = None
                raise RuntimeError(f"the local Prefect API server exited at start-up with status {code} (its "
                                   f"messages are above); PREFECT_HOME={os.environ.get('PREFECT_HOME', '~/.prefect')}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the local Prefect API server did not answer within {self.startup_timeout:.0f} s; set "
                           f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher on a busy machine")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_local_api() -> LocalApiServer | None:
    """Start the local API server and point this process's Prefect at it (`PREFECT_API_URL`), unless an API is
    configured (environment or the active Prefect profile) or Prefect is already imported (it has read its
    settings then, and runs its own temporary server)."""
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules or _profile_api_url():
        return None
    server = LocalApiServer().start()
    os.environ["PREFECT_API_URL"] = server.api_url
    return server


def _profile_api_url() -> str | None:
    """PREFECT_API_URL of the active Prefect profile (`prefect config set PREFECT_API_URL=...`), read without
    importing Prefect."""
    import tomllib
    from pathlib import Path

    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    return (profiles.get("profiles", {}).get(active, {}) or {}).get("PREFECT_API_URL")
