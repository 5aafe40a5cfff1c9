"""A loopback video server that stands in for YouTube in tests and the demo.

`GET /<youtube_id>.mp4` answers with `DIRECTORY/<youtube_id>.mp4` (HTTP Range requests honoured, as
real video hosts do and as ffmpeg uses them to seek during partial downloads). A video that is not
there answers 404, like a video that never existed. An id listed in `DIRECTORY/removed.txt` (one id
per line, `#` comments allowed) answers `removed_status` even if its file is still there (use 410 to
play a video that was taken down; yt-dlp reports it as HTTP 410, which the ledger records as
`removed`). Only 127.0.0.1 is served by default; paths outside the directory are refused.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

REMOVED_LIST = "removed.txt"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # YouTube ids (and test ids); nothing else is a file name here
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 16


def read_removed(directory: Path) -> set[str]:
    path = Path(directory) / REMOVED_LIST
    if not path.is_file():
        return set()
    ids = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.add(line)
    return ids


def _handler(directory: Path, removed_status: int) -> type[BaseHTTPRequestHandler]:
    root = Path(directory).resolve()

    class VideoHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "avsed-video-server"

        def log_message(self, format, *args):  # noqa: A002 - quiet: tests and the demo read their own output
            pass

        def _error(self, status: int, body: str = "") -> None:
            data = (body or HTTPStatus(status).phrase).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _resolve(self) -> tuple[Path | None, int]:
            name = unquote(urlsplit(self.path).path).lstrip("/")
            if "/" in name or "\\" in name or not name.endswith(".mp4"):
                return None, 404
            video_id = name[: -len(".mp4")]
            if not _ID.match(video_id):  # refuses "..", hidden files, anything outside the folder
                return None, 404
            if video_id in read_removed(root):
                return None, removed_status
            path = (root / name).resolve()
            if path.parent != root or not path.is_file():
                return None, 404
            return path, 200

        def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
            self._serve(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path, status = self._resolve()
            if path is None:
                self._error(status)
                return
            size = path.stat().st_size
            start, end = 0, size - 1
            header = self.headers.get("Range")
            partial = False
            if header:
                m = _RANGE.match(header.strip())
                if m and (m[1] or m[2]):
                    if m[1]:
                        start = int(m[1])
                        end = min(int(m[2]), size - 1) if m[2] else size - 1
                    else:  # suffix range: the last N bytes
                        start = max(size - int(m[2]), 0)
                    if start >= size or start > end:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    partial = True
                # a malformed or multi-range header is ignored: the whole file, as RFC 9110 allows
            with path.open("rb") as fh:
                head = fh.read(64).lstrip().lower()
            # a file holding a web page is sent as one, like a host that answers a page instead of a video
            kind = "text/html; charset=utf-8" if head.startswith((b"<!doctype html", b"<html")) else "video/mp4"
            self.send_response(206 if partial else 200)
            self.send_header("Content-Type", kind)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if partial:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not body:
                return
            try:
                with path.open("rb") as fh:
                    fh.seek(start)
                    left = end - start + 1
                    while left > 0:
                        chunk = fh.read(min(_CHUNK, left))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client (ffmpeg seeking) closed early: normal

    return VideoHandler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hanging up mid-transfer are not errors here
        pass


class _Served:
    """What both servers share: where they serve, their URL template and use as a context manager."""

    def __init__(self, directory: str | Path, host: str, port: int, removed_status: int):
        self.directory = Path(directory)
        self.host = host
        self.removed_status = int(removed_status)
        self._requested_port = int(port)

    @property
    def port(self) -> int:
        raise NotImplementedError

    @property
    def url_template(self) -> str:
        """URL template for `DownloadConfig.url_template`: the `{youtube_id}` field is left in."""
        return f"http://{self.host}:{self.port}/{{youtube_id}}.mp4"

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class VideoServer(_Served):
    """Serves `directory` on `host:port` (port 0: a free port) in a background thread."""

    def __init__(self, directory: str | Path, host: str = "127.0.0.1", port: int = 0, removed_status: int = 404):
        super().__init__(directory, host, port, removed_status)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("VideoServer is not started")
        return self._server.server_address[1]

    def start(self) -> "VideoServer":
        if self._server is not None:
            return self
        if not self.directory.is_dir():
            raise FileNotFoundError(f"video directory {self.directory} does not exist")
        self._server = _QuietServer((self.host, self._requested_port), _handler(self.directory, self.removed_status))
        # a short poll interval makes stop() quick (shutdown waits for the next poll)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="avsed-video-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


def serve_videos(directory: str | Path, port: int, host: str = "127.0.0.1", removed_status: int = 404) -> None:
    """Serve `directory` until interrupted (for `avsed serve-videos DIR --port P`)."""
    server = VideoServer(directory, host=host, port=port, removed_status=removed_status)
    server.start()
    print(f"serving {Path(directory).resolve()} at {server.url_template} (Ctrl-C or SIGTERM to stop)", flush=True)
    try:
        assert server._thread is not None
        while server._thread.is_alive():
            server._thread.join(timeout=1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


class VideoServerProcess(_Served):
    """The same server in a process of its own, with VideoServer's interface (start / stop / url_template).

    A thread of a process that is busy extracting (decoding and embedding threads, a Prefect API server beside
    them) gets the GIL too rarely to answer in time, and downloads then time out as if YouTube were slow:
    the demo lost 22 of 470 downloads that way on 2 cores, 91 with training running beside it. A real host
    is a different machine; a process of its own is the closest stand-in.
    """

    def __init__(self, directory: str | Path, host: str = "127.0.0.1", port: int = 0, removed_status: int = 404,
                 startup_timeout: float = 60.0):
        super().__init__(directory, host, port, removed_status)
        self.startup_timeout = float(startup_timeout)
        self._port: int | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("VideoServerProcess is not started")
        return self._port

    def start(self) -> "VideoServerProcess":
        if self._proc is not None:
            return self
        if not self.directory.is_dir():
            raise FileNotFoundError(f"video directory {self.directory} does not exist")
        port = self._requested_port or _free_port(self.host)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serve", str(self.directory), str(port), self.host, str(self.removed_status)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Ready when the child says it is serving (after its bind): a connection test could be answered by
        # another server already on that port.
        ready, _, _ = select.select([self._proc.stdout], [], [], self.startup_timeout)
        if not (ready and self._proc.stdout.readline()):
            proc, self._proc = self._proc, None
            if not ready:
                proc.kill()
            err = proc.communicate()[1]  # reaps the child (killed or exited) and closes its pipes
            if not ready:
                raise TimeoutError(f"video server process on {self.host}:{port} did not start within "
                                   f"{self.startup_timeout:.0f} s")
            cause = (err.strip().splitlines() or ["no message"])[-1]  # the exception line of its traceback
            raise RuntimeError(f"video server process for {self.directory} on {self.host}:{port} exited at "
                               f"start-up: {cause}")
        self._port = port
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream:
                stream.close()
        self._proc = None
        self._port = None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _exit_with_parent(parent: int) -> None:
    """A parent killed outright (SIGKILL) cannot stop its server process: it stops itself once orphaned."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


if __name__ == "__main__":  # python -m pipeline.serve DIR PORT HOST REMOVED_STATUS, as VideoServerProcess runs it
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    serve_videos(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
