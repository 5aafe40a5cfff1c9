"""A Prefect API server for the flow runs of this process, that ends when this process ends, even when it is
killed outright (SIGKILL, an OOM kill).

Without a `PREFECT_API_URL`, Prefect starts a temporary API server as a child process at the first flow run and
stops it at exit; a process killed outright never gets there, and its server (~220 MB) lives on with parent 1.
This one is the same server (the same uvicorn command and settings as Prefect's temporary one) started with a
parent-death signal: the kernel sends it SIGTERM when its parent dies, however it dies.

What the server prints while the run goes on reaches this process's stderr, as with Prefect's own, but for two
kinds of noise, which go to `local-api.log` in PREFECT_HOME instead: what it prints once this process stops it,
and the records of SQLAlchemy's connection pool. On a loaded machine a request or a service cancelled mid-call
(a client that hung up, the server's own shutdown) leaves a connection whose rollback is cancelled too; the pool
logs that as a traceback ("Exception during reset or similar ... CancelledError") and discards the connection.
Nothing of the run is lost (the CI saw one after the flow run had finished and recorded everything), and a
traceback on the user's terminal says there is a bug to report.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

__all__ = ["LocalApiServer", "start_local_api"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind
# The head of a record in Prefect's log format ("21:01:59.093 | ERROR   | logger.name - message"); what follows it
# up to the next head (a traceback) belongs to it. Group 1: the logger's name.
_RECORD_HEAD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| \w+\s*\| (\S+) - ")
_DIVERTED_LOGGERS = ("sqlalchemy.pool",)


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
        self._stopping = threading.Event()
        self._relay: threading.Thread | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def command(self, port: int) -> list[str]:
        """The server's command line: Prefect's own temporary server (no UI, ephemeral mode: its services as
        Prefect runs them then)."""
        return [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host",
                "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]

    @property
    def log_path(self) -> Path:
        return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser() / "local-api.log"

    def _launch(self) -> subprocess.Popen:
        self.port = _free_port()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        process = subprocess.Popen(
            self.command(self.port),
            # A session of its own: the Ctrl-C meant for the run (its process group) must not take the API server
            # down under the flow's own shutdown; it ends with this process (the death signal, `stop` at exit).
            env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_parent_death_signal(),
            start_new_session=True)
        self._relay = threading.Thread(target=self._relay_stderr, args=(process.stderr,), daemon=True,
                                       name="local-api-stderr")
        self._relay.start()
        return process

    def _relay_stderr(self, pipe) -> None:
        """Copy the server's stderr to ours line by line, but for the noise of the module docstring, which is
        appended to `log_path` (opened at its first line: a run without noise writes nothing).

        The pipe is read to its end whatever happens to the writes: a server whose stderr is not read blocks on
        its next message, and the run with it. A log that cannot be written (a full disk) is given up."""
        log = None
        opened = diverting = False
        try:
            for raw in iter(pipe.readline, b""):
                line = raw.decode(errors="replace")
                head = _RECORD_HEAD.match(line)
                if head:
                    diverting = head.group(1).startswith(_DIVERTED_LOGGERS)
                if not (diverting or self._stopping.is_set()):
                    try:
                        sys.stderr.write(line)
                        sys.stderr.flush()
                    except (OSError, ValueError):  # our stderr closed or gone (a closed pipe)
                        pass
                    continue
                if not opened:
                    log, opened = self._open_log(), True
                if log is not None:
                    try:
                        log.write(line)
                        log.flush()
                    except OSError:
                        log = _close_quietly(log)
        finally:
            pipe.close()
            _close_quietly(log)

    def _open_log(self):
        try:
            log = self.log_path.open("a")
        except OSError:
            return None  # a home that cannot be written: the lines are noise, nothing of the run
        try:
            log.write(f"--- Prefect API server on port {self.port} of process {os.getpid()}, "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        except OSError:
            return _close_quietly(log)
        return log

    def _join_relay(self) -> None:
        if self._relay is not None:
            self._relay.join(timeout=5)

    def start(self) -> "LocalApiServer":
        if self.process is not None:
            return self
        self._stopping.clear()  # a server started again after `stop`: its messages reach the terminal again
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
                self._join_relay()  # its last messages are printed before the error that points at them
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
        self._stopping.set()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._join_relay()


def _close_quietly(log) -> None:
    if log is not None:
        try:
            log.close()
        except OSError:
            pass


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
