"""The loopback video server: files, 404 / removed, Range requests, HTML sniffing, no path traversal."""

from __future__ import annotations

import http.client
import socket

import pytest

from pipeline.serve import VideoServer, VideoServerProcess


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
    code = ("import sys, time; from pipeline.serve import VideoServerProcess; "
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
