"""Downloads with the real yt-dlp against the loopback server (never leaves 127.0.0.1): range cuts,
ledger outcomes for 404 / 410 / refused / HTML, reuse of complete files, concurrency, and the
classification of yt-dlp's exception types (YouTube's messages: test_download_classify.py)."""

from __future__ import annotations

import io
import os
import shutil

import pytest
from yt_dlp.networking import Response
from yt_dlp.networking.exceptions import HTTPError, IncompleteRead, TransportError
from yt_dlp.utils import DownloadError, ExtractorError, GeoRestrictedError, UnsupportedError

from pipeline.download import DownloadConfig, classify_download_error, download_clip, download_clips
from pipeline.ffmpeg_bin import ensure_ffmpeg_on_path
from pipeline.frames import VideoError, decode_frames
from avsed.core.labels import ClipTiming
from avsed.core.manifest import parse_clip_name
from avsed.synthetic.video_host import VideoServer
from avsed.synthetic.processes import free_port
from tests.pipeline import videos

TIMING = ClipTiming()
LONG = "LongLongLon"  # 15 s time-coded video
DASH = "-dashdashda"  # ids may start with '-'
SHORT = "ShortShortS"  # 6 s video
PAGE = "HtmlPageXYZ"
GONE = "GoneGoneGon"  # listed in removed.txt
DAMAGED = "RandomBytes"  # served with video/mp4 but random bytes
TRUNCATED = "TruncatedMp"  # half an mp4 (no index)


def _clip(youtube_id: str, start: float, end: float) -> tuple[str, object]:
    name = f"Y{youtube_id}_{start:.3f}_{end:.3f}.wav"
    seg = parse_clip_name(name)
    assert seg is not None and seg.youtube_id == youtube_id
    return name, seg


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    videos.time_coded_video(root / f"{LONG}.mp4", 15)
    videos.time_coded_video(root / f"{DASH}.mp4", 10)
    videos.time_coded_video(root / f"{SHORT}.mp4", 6)
    videos.time_coded_video(root / f"{GONE}.mp4", 10)
    videos.html_page(root / f"{PAGE}.mp4")
    videos.corrupt_file(root / f"{DAMAGED}.mp4")
    videos.truncated_video(root / f"{TRUNCATED}.mp4")
    (root / "removed.txt").write_text(f"{GONE}\n")
    with VideoServer(root, removed_status=410) as srv:
        yield srv


@pytest.fixture()
def config(server):
    return DownloadConfig(url_template=server.url_template, retries=0, fragment_retries=0, socket_timeout=5.0)


def _seconds_shown(frames, seconds):
    return [videos.nearest_second(f, seconds) for f in frames]


def test_range_download_cuts_the_clip_out_of_a_longer_video(config, tmp_path):
    name, seg = _clip(LONG, 5.0, 15.0)
    result = download_clip(name, seg, tmp_path, config)
    assert (result.status, result.reason, result.youtube_id, result.clip_start) == ("available", None, LONG, 0.0)
    assert result.path == tmp_path / f"Y{LONG}_5.000_15.000.mp4" and result.path.is_file()
    clip = decode_frames(result.path, name, TIMING)
    # the file holds 10 s, and its first frames show second 5 of the served video, not second 0
    assert clip.duration == pytest.approx(10.0, abs=0.05) and clip.valid.all()
    assert _seconds_shown(clip.frames, 15) == [5 + int(t) for t in TIMING.video_frame_times()]


def test_whole_download_records_where_the_clip_starts(config, tmp_path):
    name, seg = _clip(LONG, 5.0, 15.0)
    result = download_clip(name, seg, tmp_path, DownloadConfig(**{**config.__dict__, "partial": False}))
    assert result.status == "available" and result.clip_start == 5.0
    assert result.path.name == f"Y{LONG}_5.000_15.000.whole.mp4"
    clip = decode_frames(result.path, name, TIMING, start=result.clip_start)
    assert _seconds_shown(clip.frames, 15) == [5 + int(t) for t in TIMING.video_frame_times()]
    # a later run (partial by default) reuses the whole file and still knows where the clip starts
    again = download_clip(name, seg, tmp_path, config)
    assert (again.path, again.clip_start, again.message) == (result.path, 5.0, "reused existing file")


def test_damaged_video_falls_back_to_whole_download_and_fails_decoding(config, tmp_path):
    for youtube_id in (DAMAGED, TRUNCATED):
        name, seg = _clip(youtube_id, 0.0, 10.0)
        result = download_clip(name, seg, tmp_path, config)
        # ffmpeg cannot cut it; the whole file is fetched and the decoder calls it corrupt
        assert result.status == "available" and "partial download failed" in result.message
        assert result.path.name.endswith(".whole.mp4")
        with pytest.raises(VideoError, match="corrupt"):
            decode_frames(result.path, name, TIMING, start=result.clip_start)
    no_fallback = download_clip(*_clip(DAMAGED, 0.0, 10.0), tmp_path / "b",
                                DownloadConfig(**{**config.__dict__, "fallback_whole": False}))
    assert (no_fallback.status, no_fallback.path) == ("failed", None) and "ffmpeg" in no_fallback.message


def test_short_video_downloads_and_pads(config, tmp_path):
    name, seg = _clip(SHORT, 0.0, 10.0)  # DESED names say 10 s, the video has 6
    result = download_clip(name, seg, tmp_path, config)
    assert result.status == "available"
    clip = decode_frames(result.path, name, TIMING)
    assert clip.valid.sum() == TIMING.valid_video_frames(6.0)


def test_complete_file_is_reused_without_a_request(config, tmp_path):
    name, seg = _clip(DASH, 0.0, 10.0)
    first = download_clip(name, seg, tmp_path, config)
    assert first.status == "available" and first.path.name == f"Y{DASH}_0.000_10.000.mp4"
    stamp = first.path.stat().st_mtime_ns
    # a URL nobody answers: the result can only come from the file already there
    offline = DownloadConfig(url_template="http://127.0.0.1:9/{youtube_id}.mp4", retries=0)
    again = download_clip(name, seg, tmp_path, offline)
    assert again.status == "available" and again.path == first.path and first.path.stat().st_mtime_ns == stamp
    # a leftover partial file is not a complete one
    other, oseg = _clip(LONG, 0.0, 10.0)
    (tmp_path / f"Y{LONG}_0.000_10.000.mp4.part").write_bytes(b"half")
    assert download_clip(other, oseg, tmp_path, offline).status == "failed"


@pytest.mark.parametrize("youtube_id,status,reason,fragment", [
    ("NotThereXYZ", "missing", "not_found", "HTTP Error 404"),
    (GONE, "missing", "removed", "HTTP Error 410"),
    (PAGE, "failed", "not_media", "Unsupported URL"),  # a web page: transient (captive portal, consent page)
])
def test_unavailable_videos_are_classified(config, tmp_path, youtube_id, status, reason, fragment):
    name, seg = _clip(youtube_id, 0.0, 10.0)
    result = download_clip(name, seg, tmp_path, config)
    assert (result.status, result.reason, result.path) == (status, reason, None)
    assert fragment in result.message  # yt-dlp's own message is kept for the ledger
    assert not any(p.suffix == ".mp4" for p in tmp_path.iterdir())


def test_connection_refused_is_transient(tmp_path):
    port = free_port()  # free a moment ago, no listener now
    name, seg = _clip(LONG, 0.0, 10.0)
    cfg = DownloadConfig(url_template=f"http://127.0.0.1:{port}/{{youtube_id}}.mp4", retries=0)
    result = download_clip(name, seg, tmp_path, cfg)
    assert (result.status, result.reason, result.path) == ("failed", None, None)
    assert "Connection refused" in result.message


def test_clip_without_youtube_id(tmp_path):
    result = download_clip("123.wav", None, tmp_path)
    assert (result.status, result.reason, result.path) == ("missing", "no_youtube_id", None)


def test_download_clips_concurrently(config, tmp_path):
    items = [_clip(LONG, 0.0, 10.0), _clip(LONG, 2.5, 12.5), _clip(DASH, 0.0, 10.0), _clip("NotThereXYZ", 0.0, 10.0),
             ("99.wav", None)]
    results = list(download_clips(items, tmp_path, DownloadConfig(**{**config.__dict__, "concurrency": 3}), progress=False))
    by_id = {r.clip_id: r for r in results}
    assert set(by_id) == {name for name, _ in items}
    assert [by_id[n].status for n, _ in items] == ["available", "available", "available", "missing", "missing"]
    paths = [by_id[n].path for n, _ in items[:3]]
    assert len(set(paths)) == 3  # one file per clip, even for two clips of the same video
    clip = decode_frames(by_id[items[1][0]].path, items[1][0], TIMING)
    assert _seconds_shown(clip.frames[:1], 15) == [2]  # 2.5 s + 0.078 s


def test_ffmpeg_on_path_is_the_projects():
    folder = ensure_ffmpeg_on_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == folder
    assert os.path.realpath(shutil.which("ffmpeg")) == os.path.realpath(os.path.join(folder, "ffmpeg"))
    assert ensure_ffmpeg_on_path() == folder and os.environ["PATH"].count(folder) == 1


# -- classification of errors yt-dlp raises -----------------------------------------------------------
def _wrapped(cause: BaseException) -> DownloadError:
    """As YoutubeDL raises it: a DownloadError whose exc_info holds the cause."""
    return DownloadError(f"ERROR: {cause}", exc_info=(type(cause), cause, None))


def _http(status: int) -> HTTPError:
    return HTTPError(Response(io.BytesIO(b""), "http://127.0.0.1/x.mp4", {}, status=status))


@pytest.mark.parametrize("status,expected", [(404, ("missing", "not_found")), (410, ("missing", "removed")),
                                             (451, ("missing", "copyright")), (403, ("failed", None)),
                                             (429, ("failed", "rate_limited")), (500, ("failed", None)),
                                             (503, ("failed", None))])
def test_http_status_classes(status, expected):
    got = classify_download_error(_wrapped(ExtractorError("Unable to download webpage", cause=_http(status))))
    assert got[:2] == expected and "Unable to download webpage" in got[2] and not got[2].startswith("ERROR")


def test_exception_types():
    assert classify_download_error(_wrapped(TransportError("timed out")))[:2] == ("failed", "stalled")
    assert classify_download_error(_wrapped(TransportError("Connection refused")))[:2] == ("failed", None)
    assert classify_download_error(_wrapped(IncompleteRead(4096, 575)))[:2] == ("failed", "truncated")
    assert classify_download_error(_wrapped(UnsupportedError("http://x/")))[:2] == ("failed", "not_media")
    assert classify_download_error(_wrapped(GeoRestrictedError("blocked", countries=["BE"])))[:2] == ("missing", "geo")
    assert classify_download_error(RuntimeError("something odd"))[:2] == ("failed", None)


# YouTube's own messages are classified in test_download_classify.py (real strings, through yt-dlp).


def _fmt(fid, height, vcodec, acodec):
    return {"format_id": fid, "url": f"http://127.0.0.1/{fid}", "ext": "webm" if vcodec == "vp9" else "mp4",
            "height": height, "width": height * 16 // 9 if height else None, "vcodec": vcodec, "acodec": acodec,
            "protocol": "https"}


@pytest.mark.parametrize("offered,chosen", [
    # a YouTube-like list: the smallest video at or above 224 px, h264 before vp9, no audio needed
    (["audio", "144", "240-vp9", "240", "360", "18-muxed", "720"], "240"),
    # nothing video-only at or above 224 px: the muxed 360p file
    (["audio", "144", "18-muxed"], "18-muxed"),
    # nothing at or above 224 px at all: the best there is
    (["audio", "144"], "144"),
])
def test_default_format_choice(offered, chosen):
    import yt_dlp

    formats = {"audio": _fmt("audio", None, "none", "mp4a.40.2"), "144": _fmt("144", 144, "avc1.4d400c", "none"),
               "240-vp9": _fmt("240-vp9", 240, "vp9", "none"), "240": _fmt("240", 240, "avc1.4d4015", "none"),
               "360": _fmt("360", 360, "avc1.4d401e", "none"), "18-muxed": _fmt("18-muxed", 360, "avc1.42001E", "mp4a.40.2"),
               "720": _fmt("720", 720, "avc1.4d401f", "none")}
    cfg = DownloadConfig()
    info = {"id": "abcdefghijk", "title": "t", "extractor": "youtube", "extractor_key": "Youtube",
            "webpage_url": "https://www.youtube.com/watch?v=abcdefghijk", "formats": [dict(formats[f]) for f in offered]}
    with yt_dlp.YoutubeDL({"format": cfg.format, "format_sort": list(cfg.format_sort), "quiet": True}) as ydl:
        assert ydl.process_video_result(info, download=False)["format_id"] == chosen


@pytest.mark.parametrize("youtube_id,status,reason", [
    (LONG, "available", None), ("NotThereXYZ", "missing", "not_found"), (GONE, "missing", "removed"),
])
def test_probe_tells_whether_a_cached_clip_still_exists_without_downloading(config, tmp_path, youtube_id,
                                                                             status, reason, monkeypatch):
    from pipeline.download import probe_clip

    monkeypatch.chdir(tmp_path)
    name, seg = _clip(youtube_id, 0.0, 10.0)
    result = probe_clip(name, seg, config)
    assert (result.status, result.reason, result.path) == (status, reason, None)
    assert list(tmp_path.iterdir()) == []


def test_probe_clips_reuses_one_youtubedl_per_thread_and_answers_like_probe_clip(config, tmp_path, monkeypatch):
    import yt_dlp

    from pipeline.download import probe_clip, probe_clips

    monkeypatch.chdir(tmp_path)
    made, closed = [], []

    class Counting(yt_dlp.YoutubeDL):
        def __init__(self, *a, **k):
            made.append(self)
            super().__init__(*a, **k)

        def close(self):
            closed.append(self)
            super().close()

    ids = [LONG, "NotThereXYZ", GONE] * 4
    clips = [_clip(y, 0.0, 10.0) for y in ids] + [("Ynoid.wav", None)]
    expected = [probe_clip(name, seg, config) for name, seg in clips]
    monkeypatch.setattr(yt_dlp, "YoutubeDL", Counting)
    cfg = config.model_copy(update={"concurrency": 2})
    got = probe_clips(clips, cfg)
    assert [(r.clip_id, r.status, r.reason) for r in got] == [(r.clip_id, r.status, r.reason) for r in expected]
    assert 1 <= len(made) <= 2 and sorted(map(id, closed)) == sorted(map(id, made))
    assert list(tmp_path.iterdir()) == []
