"""The options for the real host reach yt-dlp and its ffmpeg for real, for downloads and probes, seen by the loopback
host (and a loopback proxy) rather than read back from a dict we built: cookies_file, proxy, sleep intervals,
extractor_args; plus their checks and `retry_missing_reasons`."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.download import DownloadConfig, DownloadSession, download_clip, probe_clip
from avsed.core.errors import AvsedError
from avsed.core.manifest import parse_clip_name
from avsed.synthetic.video_host import VideoServer
from avsed.synthetic.loopback_youtube import LOOPBACK_EXTRACTOR
from tests.pipeline import videos

VID = "OptionsVid0"


def _clip(youtube_id: str = VID, start: float = 2.0, end: float = 7.0):
    name = f"Y{youtube_id}_{start:.3f}_{end:.3f}.wav"
    return name, parse_clip_name(name)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    videos.time_coded_video(root / f"{VID}.mp4", 8)
    os.link(root / f"{VID}.mp4", root / "OptionsVid1.mp4")
    with VideoServer(root) as srv:
        yield srv


def _config(template: str, **kw) -> DownloadConfig:
    return DownloadConfig(url_template=template, retries=0, fragment_retries=0, socket_timeout=20.0, concurrency=1,
                          extractors=(LOOPBACK_EXTRACTOR,), **kw)


def _new_requests(server, since: int) -> list[dict]:
    return server.request_log()[since:]


def test_cookies_file_reaches_yt_dlp(server, tmp_path):
    """yt-dlp sends the cookies with its own requests (extractor, player, whole-file download). It also hands them
    to the ffmpeg that cuts partial downloads (`-cookies`), but ffmpeg matches a cookie's domain against
    host:port, so on a loopback port it never sends them (on YouTube's default port it does): checked here only
    for yt-dlp's requests."""
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tavsed_session\ts3cr3t\n")
    for template in (server.url_template, server.watch_url_template):
        cfg = _config(template, cookies_file=str(cookies), partial=False)
        before = len(server.request_log())
        result = download_clip(*_clip(), tmp_path / f"out-{len(template)}", cfg)
        assert result.status == "available"
        with DownloadSession(cfg) as session:
            assert session.probe(*_clip()).result().status == "available"
        seen = _new_requests(server, before)
        assert len(seen) >= 3 and all(r["cookie"] == "avsed_session=s3cr3t" for r in seen), seen
    # the partial path: the requests yt-dlp makes itself carry them too
    before = len(server.request_log())
    assert download_clip(*_clip("OptionsVid1"), tmp_path / "partial",
                         _config(server.url_template, cookies_file=str(cookies))).status == "available"
    own = [r for r in _new_requests(server, before) if not r["range"]]
    assert own and all(r["cookie"] == "avsed_session=s3cr3t" for r in own)


class _Proxy(ThreadingHTTPServer):
    """A forward HTTP proxy on 127.0.0.1 that records what it forwards (absolute-form request lines)."""

    daemon_threads = True

    def __init__(self):
        self.seen: list[tuple[str, str, str | None]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                url = urlsplit(self.path)
                proxy.seen.append((self.command, self.path, self.headers.get("Range")))
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("proxy-connection", "connection", "keep-alive", "host")}
                conn.request(self.command, url.path + (f"?{url.query}" if url.query else ""), headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                conn.close()

            do_HEAD = do_GET

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


def test_proxy_carries_every_request_of_yt_dlp_and_ffmpeg(server, tmp_path):
    proxy = _Proxy()
    try:
        cfg = _config(server.url_template, proxy=f"http://127.0.0.1:{proxy.server_address[1]}")
        before = len(server.request_log())
        result = download_clip(*_clip(), tmp_path / "out", cfg)
        assert result.status == "available"
        assert probe_clip(*_clip("OptionsVid1"), cfg).status == "available"
    finally:
        proxy.shutdown()
        proxy.server_close()
    reached = _new_requests(server, before)
    # everything the host received came through the proxy: as many requests, for the same paths
    assert sorted(p for _, p, _ in proxy.seen) == sorted(f"http://127.0.0.1:{server.port}{r['path']}" for r in reached)
    assert {r["id"] for r in reached} == {VID, "OptionsVid1"}
    # ffmpeg's own range read (the partial download) went through it too: ffmpeg gets the proxy from yt-dlp
    assert any(rng == "bytes=0-" and path.endswith(f"/{VID}.mp4") for _, path, rng in proxy.seen)


class _SleepRecorder(types.ModuleType):
    """Stands in for the `time` module inside one yt-dlp module: records sleep() calls, then really sleeps."""

    def __init__(self):
        super().__init__("time")
        self.sleeps: list[float] = []

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds):
        self.sleeps.append(float(seconds))
        time.sleep(seconds)


def test_sleep_intervals_reach_yt_dlp(server, tmp_path, monkeypatch):
    import yt_dlp.downloader.common as downloader_common
    import yt_dlp.extractor.common as extractor_common

    before_download, between_requests = _SleepRecorder(), _SleepRecorder()
    monkeypatch.setattr(downloader_common, "time", before_download)
    monkeypatch.setattr(extractor_common, "time", between_requests)
    cfg = _config(server.watch_url_template, sleep_interval=0.2, max_sleep_interval=0.4, sleep_interval_requests=0.3,
                  partial=False)
    with DownloadSession(cfg, tmp_path / "out") as session:  # one worker: one YoutubeDL for both clips
        results = [f.result() for f in [session.submit(*_clip(v)) for v in (VID, "OptionsVid1")]]
    assert [r.status for r in results] == ["available", "available"]
    # yt-dlp's downloader waited a random 0.2-0.4 s before each of the two downloads
    assert len(before_download.sleeps) == 2 and all(0.2 <= s <= 0.4 for s in before_download.sleeps)
    # and its extractor 0.3 s before every metadata request but the first
    assert between_requests.sleeps == [0.3]


def test_extractor_args_reach_the_extractor(server, tmp_path):
    cfg = _config(server.watch_url_template, extractor_args={"YouTube": {"player_client": ["web", "mweb"]}})
    assert cfg.extractor_args == {"youtube": {"player_client": ["web", "mweb"]}}  # as yt-dlp keys them
    before = len(server.request_log())
    assert probe_clip(*_clip(), cfg).status == "available"
    player = [r for r in _new_requests(server, before) if "/youtubei/v1/player" in r["path"]]
    assert [parse_qs(urlsplit(r["path"]).query)["client"] for r in player] == [["web,mweb"]]
    # a single string is taken as a one-element list, as yt-dlp's command line does
    assert _config(server.url_template, extractor_args={"youtube": {"player_client": "web"}}).extractor_args == {
        "youtube": {"player_client": ["web"]}}


@pytest.mark.parametrize("bad,fragment", [
    ({"youtube": ["web"]}, "download.extractor_args.youtube must map argument names to values"),
    ({"youtube": {"player_client": [1]}}, "download.extractor_args.youtube.player_client must be a string or a list"),
    ("youtube:player_client=web", "download.extractor_args must map extractor names"),
])
def test_malformed_extractor_args_are_refused_with_the_setting(bad, fragment):
    with pytest.raises(AvsedError, match=fragment.replace(".", r"\.")):
        DownloadConfig(extractor_args=bad)


def test_a_missing_cookies_file_is_one_clear_error(tmp_path):
    cfg = DownloadConfig(cookies_file=str(tmp_path / "nope.txt"))
    with pytest.raises(AvsedError, match=r"download\.cookies_file .*nope\.txt does not exist: export cookies\.txt"):
        DownloadSession(cfg, tmp_path)
    with pytest.raises(AvsedError, match="nope.txt"):
        download_clip(*_clip(), tmp_path, cfg)


def test_settings_are_checked():
    with pytest.raises(AvsedError, match="download.concurrency must be at least 1"):
        DownloadConfig(concurrency=0)
    with pytest.raises(AvsedError, match="clip_deadline_seconds must be positive"):
        DownloadConfig(clip_deadline_seconds=0)
    with pytest.raises(AvsedError, match="breaker_threshold"):
        DownloadConfig(breaker_threshold=-1)


def test_age_restricted_videos_are_retried_once_cookies_are_given(tmp_path):
    assert DownloadConfig().retry_missing_reasons == ()
    assert DownloadConfig(cookies_file=str(tmp_path / "cookies.txt")).retry_missing_reasons == ("age",)


def test_config_round_trips_through_json():
    cfg = DownloadConfig(cookies_file="c.txt", proxy="socks5://127.0.0.1:1080", sleep_interval=1.5,
                         extractor_args={"youtube": {"player_client": ["web"]}}, breaker_threshold=5,
                         clip_deadline_seconds=60)
    again = DownloadConfig(**json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert again.model_dump() == cfg.model_dump() and again == cfg
