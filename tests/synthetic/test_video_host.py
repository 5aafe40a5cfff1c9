"""The loopback video server: files, 404 / removed, Range requests, HTML sniffing, no path traversal, scripted
answers (answers.json) that persist across restarts, YouTube-like player responses, request counts."""

from __future__ import annotations

import http.client
import json
import select
import socket

import pytest

from avsed.synthetic.video_host import VideoServer, VideoServerProcess


@pytest.fixture(params=[VideoServer, VideoServerProcess], ids=["thread", "process"])
def served(tmp_path, request):
    root = tmp_path / "videos"
    root.mkdir()
    data = bytes(range(256)) * 40  # 10240 bytes
    (root / "abcdefghijk.mp4").write_bytes(data)
    (root / "-startsdash.mp4").write_bytes(b"dash" * 10)
    (root / "gonegonegon.mp4").write_bytes(b"still on disk")
    (root / "removed.txt").write_text("# taken down\ngonegonegon\n")
    (root / "pagepagepag.mp4").write_text("<!DOCTYPE html><html><body>hi</body></html>")
    (tmp_path / "secret.mp4").write_bytes(b"SECRET")
    with request.param(root, removed_status=410) as server:
        yield server, data


def _get(server, path, headers=None, method="GET"):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_serves_file_and_url_template(served):
    server, data = served
    assert server.url_template == f"http://127.0.0.1:{server.port}/{{youtube_id}}.mp4"
    resp, body = _get(server, "/abcdefghijk.mp4")
    assert resp.status == 200 and body == data
    assert resp.getheader("Content-Type") == "video/mp4"
    assert resp.getheader("Accept-Ranges") == "bytes"
    resp, body = _get(server, "/-startsdash.mp4")
    assert resp.status == 200 and body == b"dash" * 10
    resp, body = _get(server, "/abcdefghijk.mp4", method="HEAD")
    assert resp.status == 200 and body == b"" and resp.getheader("Content-Length") == str(len(data))


def test_absent_is_404_and_removed_list_answers_removed_status(served):
    server, _ = served
    assert _get(server, "/nonexistent.mp4")[0].status == 404
    resp, body = _get(server, "/gonegonegon.mp4")
    assert resp.status == 410 and b"still on disk" not in body


def test_range_requests(served):
    server, data = served
    resp, body = _get(server, "/abcdefghijk.mp4", {"Range": "bytes=10-19"})
    assert resp.status == 206 and body == data[10:20]
    assert resp.getheader("Content-Range") == f"bytes 10-19/{len(data)}"
    resp, body = _get(server, "/abcdefghijk.mp4", {"Range": "bytes=10000-"})
    assert resp.status == 206 and body == data[10000:]
    resp, body = _get(server, "/abcdefghijk.mp4", {"Range": "bytes=-5"})
    assert resp.status == 206 and body == data[-5:]
    resp, body = _get(server, "/abcdefghijk.mp4", {"Range": "bytes=10240-"})
    assert resp.status == 416 and resp.getheader("Content-Range") == f"bytes */{len(data)}"
    resp, body = _get(server, "/abcdefghijk.mp4", {"Range": "bytes=0-1,5-6"})  # multi-range: whole file
    assert resp.status == 200 and body == data


def test_html_page_is_sent_as_html(served):
    server, _ = served
    resp, body = _get(server, "/pagepagepag.mp4")
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/html") and b"<html>" in body


@pytest.mark.parametrize("path", ["/../secret.mp4", "/%2e%2e/secret.mp4", "/..%2fsecret.mp4", "/sub/../../secret.mp4",
                                  "/removed.txt", "/.mp4", "/abcdefghijk.mp4/../../secret.mp4"])
def test_refuses_path_traversal_and_other_files(served, path):
    server, _ = served
    resp, body = _get(server, path)
    assert resp.status == 404 and b"SECRET" not in body


def test_binds_loopback_and_stops(tmp_path):
    server = VideoServer(tmp_path).start()
    port = server.port
    assert server._server.server_address[0] == "127.0.0.1"
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(RuntimeError):
        _ = server.port


def test_process_server_stops_and_reports_a_failed_start(tmp_path):
    server = VideoServerProcess(tmp_path).start()
    port = server.port
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(RuntimeError):
        _ = server.port
    with pytest.raises(FileNotFoundError):
        VideoServerProcess(tmp_path / "absent").start()
    # a port already taken: the child exits and its error comes back
    with VideoServer(tmp_path) as taken:
        with pytest.raises(RuntimeError, match="exited at start-up.*Address already in use"):
            VideoServerProcess(tmp_path, port=taken.port).start()


def test_process_server_stops_itself_when_its_parent_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    # a parent that starts the server, prints its port and then is killed with SIGKILL (no clean-up runs)
    code = ("import sys, time; from avsed.synthetic.video_host import VideoServerProcess; "
            "s = VideoServerProcess(sys.argv[1]).start(); print(s.port, s._proc.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    port, child = (int(x) for x in parent.stdout.readline().split())
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        try:  # reaped by init; while it lingers as a zombie, os.kill still succeeds: check the port instead
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the server process outlived its killed parent by 15 s")


# -- scripted answers (answers.json) and request counts -----------------------------------------------
def _script(root, answers: dict) -> None:
    (root / "answers.json").write_text(json.dumps(answers))


def _player(server, video_id):
    resp, body = _get(server, f"/youtubei/v1/player?videoId={video_id}")
    return resp, (json.loads(body) if resp.status == 200 else None)


def test_scripted_answers_are_consumed_one_per_request_and_the_last_repeats(served):
    server, data = served
    _script(server.directory, {"abcdefghijk": [{"status": 503}, {"status": 429}, {"status": 200}],
                               "gonegonegon": [{"status": 200}]})
    statuses = [_get(server, "/abcdefghijk.mp4")[0].status for _ in range(5)]
    assert statuses == [503, 429, 200, 200, 200]
    assert _get(server, "/abcdefghijk.mp4")[1] == data
    # {"status": 200} means "as usual": a video on the removed list still answers the removed status
    assert _get(server, "/gonegonegon.mp4")[0].status == 410
    # ids without a script are untouched, and requests are counted per id
    assert _get(server, "/-startsdash.mp4")[0].status == 200
    assert server.requests("abcdefghijk") == 6 and server.requests("gonegonegon") == 1
    assert server.requests() == {"abcdefghijk": 6, "gonegonegon": 1, "-startsdash": 1}
    assert json.loads((server.directory / "answers.state.json").read_text()) == {"abcdefghijk": 6, "gonegonegon": 1}


@pytest.mark.parametrize("kind", [VideoServer, VideoServerProcess], ids=["thread", "process"])
def test_consumption_continues_after_a_restart(tmp_path, kind):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "abcdefghijk.mp4").write_bytes(b"x" * 100)
    _script(root, {"abcdefghijk": [{"status": 503}, {"status": 500}, {"status": 200}]})
    with kind(root) as first:
        assert _get(first, "/abcdefghijk.mp4")[0].status == 503
    with kind(root) as second:  # "fails once, works on the next run" holds across servers
        assert [_get(second, "/abcdefghijk.mp4")[0].status for _ in range(2)] == [500, 200]
        assert second.requests("abcdefghijk") == 2  # counts are per server; consumption is per directory
    (root / "answers.state.json").unlink()  # starts the scripts over
    with kind(root) as third:
        assert _get(third, "/abcdefghijk.mp4")[0].status == 503


def test_stall_after_bytes_sends_that_many_bytes_then_nothing(served):
    server, data = served
    _script(server.directory, {"abcdefghijk": [{"stall_after_bytes": 1000}]})

    def first_bytes(request: bytes) -> tuple[socket.socket, bytes, bytes]:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < 1000:
            received += sock.recv(65536)
        return (sock, *received.split(b"\r\n\r\n", 1))

    whole, head, body = first_bytes(b"GET /abcdefghijk.mp4 HTTP/1.1\r\nHost: x\r\n\r\n")
    # a Range request stalls the same way, counted from the range's start
    ranged, _, ranged_body = first_bytes(b"GET /abcdefghijk.mp4 HTTP/1.1\r\nHost: x\r\nRange: bytes=5000-\r\n\r\n")
    with whole, ranged:
        assert b"200 OK" in head and f"Content-Length: {len(data)}".encode() in head  # it promises everything
        assert body == data[:1000] and ranged_body == data[5000:6000]
        # ... and then sends nothing, with both connections open (waited for once, on both at the same time)
        readable, _, _ = select.select([whole, ranged], [], [], 1.5)
        assert readable == []


def test_stopping_the_server_ends_a_stalled_answer(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "abcdefghijk.mp4").write_bytes(b"x" * 5000)
    _script(root, {"abcdefghijk": [{"stall_after_bytes": 10}]})
    server = VideoServer(root).start()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET /abcdefghijk.mp4 HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while not received.endswith(b"x" * 10):
        received += sock.recv(65536)
    server.stop()
    sock.settimeout(30)  # generous: the handler notices the stop within a fraction of a second
    assert sock.recv(1) == b""  # closed by the server, not left hanging
    sock.close()


def test_player_responses_like_youtube(served):
    server, _ = served
    resp, ok = _player(server, "abcdefghijk")
    assert resp.getheader("Content-Type") == "application/json"
    assert ok["playabilityStatus"]["status"] == "OK"
    assert ok["streamingData"]["formats"][0]["url"] == f"http://127.0.0.1:{server.port}/abcdefghijk.mp4"
    assert _player(server, "nonexistent")[1]["playabilityStatus"]["reason"] == "Video unavailable"
    removed = _player(server, "gonegonegon")[1]["playabilityStatus"]["errorScreen"]["playerErrorMessageRenderer"]
    assert removed["subreason"]["simpleText"] == "This video has been removed by the uploader"
    age = {"status": "LOGIN_REQUIRED", "reason": "Sign in to confirm your age"}
    _script(server.directory, {"abcdefghijk": [{"bot_check": True}, {"playability": age}, {"status": 429}],
                               "-startsdash": [{"bot_check": True}]})
    bot = _player(server, "abcdefghijk")[1]["playabilityStatus"]
    assert (bot["status"], bot["reason"]) == ("LOGIN_REQUIRED", "Sign in to confirm you\u2019re not a bot")
    assert _player(server, "abcdefghijk")[1] == {"playabilityStatus": age}  # verbatim
    assert _player(server, "abcdefghijk")[0].status == 429
    # a direct video request under a bot check is refused as YouTube's video host refuses flagged clients
    assert _get(server, "/-startsdash.mp4")[0].status == 403
    assert server.requests("abcdefghijk") == 4 and server.requests("-startsdash") == 1


def test_request_log_keeps_cookies_and_ranges_and_max_in_flight(served):
    server, _ = served
    _get(server, "/abcdefghijk.mp4", {"Cookie": "session=abc", "Range": "bytes=0-9"})
    _get(server, "/abcdefghijk.mp4", method="HEAD")
    log = server.request_log()
    assert [(e["id"], e["method"], e["range"], e["cookie"]) for e in log] == [
        ("abcdefghijk", "GET", "bytes=0-9", "session=abc"), ("abcdefghijk", "HEAD", None, None)]
    assert server.max_in_flight == 1
    # three requests held open at once by a delay: the server saw three in flight
    _script(server.directory, {"-startsdash": [{"delay_seconds": 1.0}]})
    import threading

    threads = [threading.Thread(target=_get, args=(server, "/-startsdash.mp4")) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.max_in_flight == 3


def test_a_client_that_has_the_headers_is_no_longer_counted_in_flight(served):
    """yt-dlp reads only the headers of its first GET of a direct link, then starts the download on a new
    connection: the server ends the first request's count before its headers go out, so a slow server thread never
    counts both at once (a client within its cap once seemed to have 5 requests in flight of 4)."""
    server, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/abcdefghijk.mp4")
    resp = conn.getresponse()  # the headers only: the body is left unread and the connection open
    assert resp.status == 200 and server._stats()["in_flight"] == 0
    assert _get(server, "/abcdefghijk.mp4")[0].status == 200
    conn.close()
    assert server.max_in_flight == 1


def test_malformed_answers_are_refused_at_start_with_the_file_and_the_cause(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "answers.json").write_text(json.dumps({"abcdefghijk": [{"stauts": 503}]}))
    with pytest.raises(ValueError, match=r"answers\.json: answer .* of abcdefghijk has unknown keys \['stauts'\]"):
        VideoServer(root).start()
    with pytest.raises(RuntimeError, match="exited at start-up.*unknown keys"):
        VideoServerProcess(root).start()
    (root / "answers.json").write_text(json.dumps({"abcdefghijk": []}))
    with pytest.raises(ValueError, match="non-empty list"):
        VideoServer(root).start()
