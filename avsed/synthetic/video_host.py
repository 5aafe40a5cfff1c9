"""A loopback video host that stands in for YouTube in tests and the demo, with scriptable misbehaviour.

URLs (a video id is letters, digits, `_` and `-`, as YouTube's are):
- `GET /<id>.mp4` (`url_template`): the file `DIRECTORY/<id>.mp4` (HTTP Range requests honoured, as real
  video hosts do and as ffmpeg uses them to seek during partial downloads). A video that is not there answers
  404, like a video that never existed. An id listed in `DIRECTORY/removed.txt` (one id per line, `#` comments
  allowed) answers `removed_status` even if its file is still there (410 plays a video that was taken down; the
  ledger records it as `removed`). A file holding a web page is sent as `text/html`.
- `GET /watch?v=<id>` (`watch_url_template`) is YouTube's shape: yt-dlp's stand-in extractor for it
  (`avsed.synthetic.loopback_youtube`) asks `GET /youtubei/v1/player?videoId=<id>` for a player response like
  YouTube's: `playabilityStatus` `OK` with one format that points at `/<id>.mp4`, or `ERROR` "Video
  unavailable" for an absent or removed video. Use it where YouTube's own messages matter (bot check, age
  gate, ...); the extractor turns them into errors exactly as yt-dlp's YouTube extractor does.

Scripted answers: `DIRECTORY/answers.json` maps a video id to a list of answers, consumed one per request
for that id (player requests and video requests alike, HEAD included); the last one repeats forever:

    {"abc": [{"status": 503}, {"status": 200}],     # fails once, then works (also on the next run)
     "def": [{"status": 429}],                      # rate limited, always
     "ghi": [{"stall_after_bytes": 20000}],         # sends 20000 bytes of the body, then nothing
     "jkl": [{"bot_check": true}]}                  # YouTube's "Sign in to confirm you're not a bot"

Keys of one answer (combine freely):
- `status`: 200 serves as described above; any other code is answered as is (a short text body).
- `stall_after_bytes`: the headers promise the whole body, `N` bytes of it are sent, then the connection stays
  open and silent until the client hangs up or the server stops (at most an hour).
- `close_after_bytes`: the headers promise the whole body, `N` bytes of it are sent, then the connection closes
  (a truncated transfer: fewer bytes than announced).
- `trickle_bytes_per_second`: the body is sent at this rate (an endless download for any patience a client has).
- `bot_check: true`: the player response is YouTube's bot check (`LOGIN_REQUIRED`, "Sign in to confirm
  you’re not a bot"); a direct `/<id>.mp4` request gets 403, as YouTube's video host answers flagged clients.
- `playability`: a `playabilityStatus` object sent verbatim as the player response (YouTube's age gate, "The
  following content is not available on this app.", ...); a direct `/<id>.mp4` request gets 403.
- `delay_seconds`: wait this long before answering.

How many answers of each id were consumed is kept in `DIRECTORY/answers.state.json` (written at every
consumption, read at start), so a script continues across server restarts: "fails once, works on the next
run" holds when the rerun starts a new server. Delete that file to start the scripts over.

Requests per id are counted (`requests(id)`), the last 10000 are logged with their Range and Cookie headers
(`request_log()`), and the most requests in flight at once is kept (`max_in_flight`); the process server
serves the same numbers as JSON at `GET /__avsed__/requests`. Only 127.0.0.1 is served by default; paths
outside the directory are refused.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REMOVED_LIST = "removed.txt"
ANSWERS_FILE = "answers.json"
ANSWERS_STATE_FILE = "answers.state.json"
PLAYER_PATH = "/youtubei/v1/player"
STATS_PATH = "/__avsed__/requests"
ANSWER_KEYS = ("status", "stall_after_bytes", "close_after_bytes", "trickle_bytes_per_second", "bot_check",
               "playability", "delay_seconds")
# YouTube's bot check as its player answers it (note the typographic apostrophe; quoted in yt-dlp issues
# #11950 and #11981, and the subreason is the text yt-dlp strips in extractor/youtube/_video.py).
BOT_CHECK_REASON = "Sign in to confirm you\u2019re not a bot"
BOT_CHECK_SUBREASON = "This helps protect our community. Learn more"
STALL_MAX_SECONDS = 3600.0
REQUEST_LOG_SIZE = 10000  # the log is for tests and diagnosis; counts per id are kept for every id
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


def read_answers(directory: Path) -> dict[str, list[dict]]:
    """The scripted answers of `DIRECTORY/answers.json` ({} without the file); a malformed file is a ValueError
    that names the file, the id and what is wrong."""
    path = Path(directory) / ANSWERS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); write an object mapping video ids to lists of answers")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be an object mapping video ids to lists of answers")
    for vid, script in data.items():
        if not _ID.match(str(vid)):
            raise ValueError(f"{path}: {vid!r} is not a video id (letters, digits, '_' and '-')")
        if not isinstance(script, list) or not script or not all(isinstance(a, dict) for a in script):
            raise ValueError(f"{path}: the answers of {vid} must be a non-empty list of objects, "
                             f'e.g. [{{"status": 503}}, {{"status": 200}}]')
        for answer in script:
            unknown = set(answer) - set(ANSWER_KEYS)
            if unknown:
                raise ValueError(f"{path}: answer {answer} of {vid} has unknown keys {sorted(unknown)}; "
                                 f"known: {', '.join(ANSWER_KEYS)}")
            if "status" in answer and not (isinstance(answer["status"], int) and 100 <= answer["status"] <= 599):
                raise ValueError(f"{path}: answer {answer} of {vid}: status must be an HTTP status code")
            for key in ("stall_after_bytes", "close_after_bytes", "trickle_bytes_per_second"):
                if key in answer and not (isinstance(answer[key], int) and answer[key] >= 0):
                    raise ValueError(f"{path}: answer {answer} of {vid}: {key} must be an integer >= 0")
            if "playability" in answer and not isinstance(answer["playability"], dict):
                raise ValueError(f"{path}: answer {answer} of {vid}: playability must be an object "
                                 "(YouTube's playabilityStatus)")
            if "delay_seconds" in answer and not (isinstance(answer["delay_seconds"], (int, float))
                                                  and answer["delay_seconds"] >= 0):
                raise ValueError(f"{path}: answer {answer} of {vid}: delay_seconds must be a number >= 0")
    return data


class _HostState:
    """What the handler threads of one server share: scripted answers and their consumption, request counts."""

    def __init__(self, root: Path, removed_status: int):
        self.root = root
        self.removed_status = removed_status
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._log: deque[dict] = deque(maxlen=REQUEST_LOG_SIZE)
        self._in_flight = 0
        self._max_in_flight = 0
        # per video: one download may open a second connection (ffmpeg's range request) while the host still
        # finishes the first; a cap on downloads is judged by how many videos are open at once
        self._open: Counter[str] = Counter()
        self._max_videos_in_flight = 0
        self._answers: dict[str, list[dict]] = {}
        self._answers_key: tuple | None = None
        self._reload_answers()  # a malformed answers.json is refused at start, not at the first request
        state = root / ANSWERS_STATE_FILE
        try:
            consumed = json.loads(state.read_text(encoding="utf-8")) if state.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{state}: not valid JSON ({exc}); delete it to start the scripted answers over")
        self._consumed: dict[str, int] = {str(k): int(v) for k, v in consumed.items()}

    def _reload_answers(self) -> None:
        path = self.root / ANSWERS_FILE
        try:
            st = path.stat()
            key = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key != self._answers_key:  # tests may write the script while the server runs
            self._answers = read_answers(self.root) if key else {}
            self._answers_key = key

    def next_answer(self, video_id: str) -> dict:
        """The answer for this request to `video_id` ({} when it has no script), consumed."""
        with self._lock:
            self._reload_answers()
            script = self._answers.get(video_id)
            if not script:
                return {}
            n = self._consumed.get(video_id, 0)
            self._consumed[video_id] = n + 1
            state = self.root / ANSWERS_STATE_FILE
            tmp = state.with_name(f".{state.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._consumed, sort_keys=True), encoding="utf-8")
            os.replace(tmp, state)  # a crash never leaves half a state file
            return script[min(n, len(script) - 1)]

    def begin(self, video_id: str, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self._counts[video_id] += 1
            self._log.append({"id": video_id, "method": handler.command, "path": handler.path,
                              "range": handler.headers.get("Range"), "cookie": handler.headers.get("Cookie")})
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._open[video_id] += 1
            self._max_videos_in_flight = max(self._max_videos_in_flight, len(self._open))

    def end(self, video_id: str) -> None:
        with self._lock:
            self._in_flight -= 1
            self._open[video_id] -= 1
            if not self._open[video_id]:
                del self._open[video_id]

    def snapshot(self) -> dict:
        with self._lock:
            return {"counts": dict(self._counts), "log": list(self._log), "in_flight": self._in_flight,
                    "max_in_flight": self._max_in_flight, "max_videos_in_flight": self._max_videos_in_flight}


def _playability_error(reason: str, subreason: str | dict, status: str = "ERROR") -> dict:
    """A player response refusing playback, shaped as YouTube's (`errorScreen.playerErrorMessageRenderer`)."""
    sub = subreason if isinstance(subreason, dict) else {"simpleText": subreason}
    return {"playabilityStatus": {"status": status, "reason": reason, "errorScreen": {
        "playerErrorMessageRenderer": {"reason": {"simpleText": reason}, "subreason": sub}}}}


BOT_CHECK_RESPONSE = _playability_error(
    BOT_CHECK_REASON, {"runs": [{"text": "This helps protect our community. "}, {"text": "Learn more"}]},
    status="LOGIN_REQUIRED")


def _handler(state: _HostState) -> type[BaseHTTPRequestHandler]:
    root = state.root.resolve()

    class VideoHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "avsed-video-server"
        _counted: str | None = None  # the video this request counts for in the host's in-flight count, while it does
        _hold_headers = False  # the headers wait for the first bytes of the body (see `_write`)

        def log_message(self, format, *args):  # noqa: A002 - quiet: tests and the demo read their own output
            pass

        def _done(self) -> None:
            """The request leaves the in-flight count; called just before its last byte goes out, so that a
            client that has its whole answer never finds the server still counting it."""
            if self._counted is not None:
                state.end(self._counted)
                self._counted = None

        def flush_headers(self) -> None:
            if not self._hold_headers:
                super().flush_headers()

        def _write(self, data: bytes) -> None:
            """Write body bytes, preceded by the held headers. A client that needs only the headers (yt-dlp's
            first GET of a direct link) must not get them before the server has ended the request's in-flight
            count, or it starts its next request while the server, not yet scheduled, still counts this one."""
            if self._hold_headers:
                self._hold_headers = False
                data = b"".join(self._headers_buffer) + data
                self._headers_buffer = []
            self.wfile.write(data)

        def _error(self, status: int, body: str = "") -> None:
            data = (body or HTTPStatus(status).phrase).encode()
            self._done()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
            self._route(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._route(body=True)

        def _route(self, body: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            if path == STATS_PATH:
                self._send(200, "application/json", json.dumps(state.snapshot()).encode(), body)
                return
            if path == PLAYER_PATH:
                video_id = (parse_qs(url.query).get("videoId") or [""])[0]
                player = True
            else:
                name = path.lstrip("/")
                if "/" in name or "\\" in name or not name.endswith(".mp4"):
                    self._error(404)
                    return
                video_id = name[: -len(".mp4")]
                player = False
            if not _ID.match(video_id):  # refuses "..", hidden files, anything outside the folder
                self._error(404)
                return
            try:
                answer = state.next_answer(video_id)
            except ValueError as exc:  # answers.json was broken after the start
                self._error(500, str(exc))
                return
            state.begin(video_id, self)
            self._counted = video_id
            try:
                if answer.get("delay_seconds"):
                    state.stopping.wait(float(answer["delay_seconds"]))
                status = int(answer.get("status", 200))
                if status != 200:
                    self._error(status)
                elif player:
                    self._player(video_id, answer, body)
                elif answer.get("bot_check") or "playability" in answer:
                    self._error(403)
                else:
                    self._video(video_id, answer.get("stall_after_bytes"), body, answer.get("close_after_bytes"),
                                answer.get("trickle_bytes_per_second"))
            finally:
                self._done()

        def _player(self, video_id: str, answer: dict, body: bool) -> None:
            if answer.get("bot_check"):
                response = BOT_CHECK_RESPONSE
            elif "playability" in answer:
                response = {"playabilityStatus": answer["playability"]}
            elif video_id in read_removed(root):
                response = _playability_error("Video unavailable", "This video has been removed by the uploader")
            elif not (root / f"{video_id}.mp4").is_file():
                response = _playability_error("Video unavailable", "This video is unavailable")
            else:
                host, port = self.server.server_address[:2]
                response = {"playabilityStatus": {"status": "OK", "playableInEmbed": True},
                            "videoDetails": {"videoId": video_id, "title": video_id},
                            "streamingData": {"formats": [{"itag": 18, "mimeType": "video/mp4",
                                                           "url": f"http://{host}:{port}/{video_id}.mp4"}]}}
            self._send(200, "application/json", json.dumps(response).encode(), body, answer.get("stall_after_bytes"))

        def _send(self, status: int, kind: str, data: bytes, body: bool, stall_after: int | None = None) -> None:
            stalls = body and stall_after is not None and stall_after < len(data)
            if not stalls:
                self._done()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data[:stall_after] if stalls else data)
                if stalls:
                    self._stall()

        def _video(self, video_id: str, stall_after: int | None, body: bool, close_after: int | None = None,
                   trickle: int | None = None) -> None:
            if video_id in read_removed(root):
                self._error(state.removed_status)
                return
            path = (root / f"{video_id}.mp4").resolve()
            if path.parent != root or not path.is_file():
                self._error(404)
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
                        self._done()
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
            length = end - start + 1
            closes = body and close_after is not None and close_after < length
            if closes:  # the same as a stall on the wire, except that the connection then closes
                stall_after = close_after
            stalls = body and stall_after is not None and stall_after < length
            left = min(length, stall_after) if stalls else length
            if not body:
                self._done()
            self.send_response(206 if partial else 200)
            self.send_header("Content-Type", kind)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            if partial:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self._hold_headers = body
            self.end_headers()
            if not body:
                return
            try:
                with path.open("rb") as fh:
                    fh.seek(start)
                    step = max(1, int(trickle) // 10) if trickle else _CHUNK
                    while left > 0:
                        chunk = fh.read(min(step, left))
                        if not chunk:
                            break
                        if len(chunk) == left and not stalls:
                            self._done()
                        self._write(chunk)
                        left -= len(chunk)
                        if trickle:
                            self.wfile.flush()
                            if state.stopping.wait(0.1):
                                return
                if self._hold_headers:  # no body bytes went out (an empty file, a stall at byte 0)
                    if not stalls:
                        self._done()
                    self._write(b"")
                if closes:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif stalls:
                    self._stall()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client (ffmpeg seeking) closed early: normal

        def _stall(self) -> None:
            """Send nothing more, keep the connection open: until the client hangs up or the server stops."""
            self.close_connection = True
            until = time.monotonic() + STALL_MAX_SECONDS
            while not state.stopping.is_set() and time.monotonic() < until:
                readable, _, _ = select.select([self.connection], [], [], 0.2)
                if readable:
                    try:
                        if not self.connection.recv(4096):
                            return  # the client gave up
                    except OSError:
                        return

    return VideoHandler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hanging up mid-transfer are not errors here
        pass


class _Served:
    """What both servers share: where they serve, their URL templates, request counts, use as a context manager."""

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

    @property
    def watch_url_template(self) -> str:
        """YouTube-shaped URL template (`/watch?v={youtube_id}`), read through `avsed.synthetic.loopback_youtube`
        (give its LOOPBACK_EXTRACTOR in `DownloadConfig.extractors`)."""
        return f"http://{self.host}:{self.port}/watch?v={{youtube_id}}"

    def _stats(self) -> dict:
        raise NotImplementedError

    def requests(self, youtube_id: str | None = None) -> int | dict[str, int]:
        """Requests received for one id (player and video requests), or {id: count} for every id."""
        counts = self._stats()["counts"]
        return counts if youtube_id is None else int(counts.get(youtube_id, 0))

    def request_log(self) -> list[dict]:
        """The last requests: {"id", "method", "path", "range", "cookie"}, oldest first."""
        return self._stats()["log"]

    @property
    def max_in_flight(self) -> int:
        """The most requests for videos or player responses that were open at the same time."""
        return int(self._stats()["max_in_flight"])

    @property
    def max_videos_in_flight(self) -> int:
        """The most distinct videos with a request open at the same time (a download cap's measure: one download
        may overlap its own requests, e.g. ffmpeg's range request while the host finishes the first)."""
        return int(self._stats()["max_videos_in_flight"])

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
        self._state: _HostState | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("VideoServer is not started")
        return self._server.server_address[1]

    def _stats(self) -> dict:
        if self._state is None:
            raise RuntimeError("VideoServer is not started")
        return self._state.snapshot()

    def start(self) -> "VideoServer":
        if self._server is not None:
            return self
        if not self.directory.is_dir():
            raise FileNotFoundError(f"video directory {self.directory} does not exist")
        self._state = _HostState(self.directory, self.removed_status)
        self._server = _QuietServer((self.host, self._requested_port), _handler(self._state))
        # a short poll interval makes stop() quick (shutdown waits for the next poll)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="avsed-video-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        assert self._state is not None
        self._state.stopping.set()  # stalled answers end, so their clients see the connection close
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

    def _stats(self) -> dict:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request("GET", STATS_PATH)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def start(self) -> "VideoServerProcess":
        if self._proc is not None:
            return self
        if not self.directory.is_dir():
            raise FileNotFoundError(f"video directory {self.directory} does not exist")
        port = self._requested_port or _free_port(self.host)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "avsed.synthetic.video_host", str(self.directory), str(port), self.host, str(self.removed_status)],
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


if __name__ == "__main__":  # python -m avsed.synthetic.video_host DIR PORT HOST REMOVED_STATUS, as VideoServerProcess runs it
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    serve_videos(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
