"""The local Prefect API server's messages: what it prints while a run goes on reaches the user, but for the
connection pool's records (a cancelled rollback logged as a traceback, which a loaded CI machine printed after a
finished run) and what it prints while it is stopped at the end, which go to a log in PREFECT_HOME; a server that
dies at start-up has its messages printed before the error that points at them. A small HTTP server that prints
what Prefect's printed stands in for it: the relay is what is tested."""

from __future__ import annotations

import sys

import pytest

from flows.local_api import LocalApiServer

FAKE_SERVER = r"""
import signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"true")
    def log_message(self, *args):
        pass

def shutdown(signum, frame):
    sys.stderr.write("ERROR | sqlalchemy.pool - Exception during reset or similar\n"
                     "Traceback (most recent call last):\nasyncio.exceptions.CancelledError\n")
    sys.stderr.flush()
    sys.exit(0)

signal.signal(signal.SIGTERM, shutdown)
server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Health)
sys.stderr.write("21:01:57.036 | WARNING | prefect.server - a message of the running server\n"
                 "21:01:59.093 | ERROR   | sqlalchemy.pool.impl.AsyncAdaptedQueuePool - Exception during reset or "
                 "similar\nTraceback (most recent call last):\n  File \"aiosqlite/core.py\", line 160\n"
                 "asyncio.exceptions.CancelledError\n"
                 "21:01:59.200 | ERROR   | prefect.server - a later error of the server\n")
sys.stderr.flush()
server.serve_forever()
"""


class FakeServer(LocalApiServer):
    def __init__(self, script: str, startup_timeout: float = 30):
        super().__init__(startup_timeout=startup_timeout)
        self.script = script

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-c", self.script, str(port)]


def test_shutdown_noise_goes_to_the_log_and_the_running_servers_messages_to_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    server = FakeServer(FAKE_SERVER).start()
    try:
        import urllib.request

        with urllib.request.urlopen(f"{server.api_url}/health", timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()
    err = capsys.readouterr().err
    assert "a message of the running server" in err and "a later error of the server" in err
    assert "Traceback" not in err and "CancelledError" not in err and "sqlalchemy" not in err
    log = (tmp_path / "local-api.log").read_text()
    assert log.count("Exception during reset or similar") == 2  # the pool's record and the shutdown's
    assert log.count("CancelledError") == 2 and "aiosqlite/core.py" in log
    assert "a message of the running server" not in log and "a later error" not in log


def test_a_server_that_dies_at_start_up_shows_its_messages_before_the_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    server = FakeServer("import sys; sys.stderr.write('alembic: the database cannot be migrated\\n'); sys.exit(1)")
    with pytest.raises(RuntimeError, match="exited at start-up with status 1"):
        server.start()
    assert "the database cannot be migrated" in capsys.readouterr().err
    assert not (tmp_path / "local-api.log").exists()


def test_a_log_that_cannot_be_written_neither_blocks_the_server_nor_prints_a_traceback(tmp_path, monkeypatch, capsys):
    """The log on a full disk (/dev/full: every write ENOSPC) while the server prints 200 kB of pool records before
    it answers, more than a pipe holds: the relay goes on reading, or the server would block and never answer."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    (tmp_path / "local-api.log").symlink_to("/dev/full")
    record = ("21:01:59.093 | ERROR   | sqlalchemy.pool.impl.AsyncAdaptedQueuePool - Exception during reset or "
              "similar\nasyncio.exceptions.CancelledError\n")
    noisy = FAKE_SERVER.replace("server.serve_forever()", f"sys.stderr.write({record!r} * 2000); sys.stderr.write("
                                "'21:02:00.000 | WARNING | prefect.server - after the noise\\n'); sys.stderr.flush()\n"
                                "server.serve_forever()")
    server = FakeServer(noisy, startup_timeout=20).start()
    server.stop()
    err = capsys.readouterr().err
    assert "a message of the running server" in err and "after the noise" in err
    assert "Traceback" not in err and "Exception in thread" not in err and "CancelledError" not in err


def test_a_server_started_again_after_stop_is_heard_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    server = FakeServer(FAKE_SERVER)
    server.start().stop()
    capsys.readouterr()
    server.start().stop()
    assert "a message of the running server" in capsys.readouterr().err
