"""One run's downloads (`DownloadSession`) against the loopback host, with the real yt-dlp, its HTTP stack and ffmpeg.

What stands in for YouTube: the loopback server (`avsed.synthetic.video_host`) with scripted answers (answers.json: 429, 503,
delays, a host that sends part of a file and stalls), counting every request it receives; for the bot check, its
YouTube-shaped player response, read by `avsed.synthetic.loopback_youtube`, which raises yt-dlp's own ExtractorError with
YouTube's message through the YouTube extractor's code. Checked here: one global cap on downloads in flight (counted
by the server, also with 500 clips submitted at once), the circuit breaker (after N refusals no request reaches the
server, the rest come back `not_attempted`), per-clip deadlines and ffmpeg's read timeout against a stalling host,
and `close()` cancelling what has not started.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import wait

import psutil
import pytest

from pipeline.download import DownloadConfig, DownloadSession, download_clips
from avsed.core.manifest import parse_clip_name
from avsed.synthetic.video_host import VideoServer, VideoServerProcess
from avsed.synthetic.loopback_youtube import LOOPBACK_EXTRACTOR
from tests.pipeline import videos

GOOD = ("GoodGood000", "GoodGood001", "GoodGood002")


def _clip(youtube_id: str, start: float = 0.0, end: float = 10.0):
    name = f"Y{youtube_id}_{start:.3f}_{end:.3f}.wav"
    return name, parse_clip_name(name)


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    """One 12 s time-coded video; every served id is a hard link to it."""
    return videos.time_coded_video(tmp_path_factory.mktemp("library") / "v.mp4", 12)


@pytest.fixture()
def served(tmp_path, video_file):
    """A served folder holding GOOD; `script(answers, ids=...)` adds ids (linked to the video) and answers.json."""
    root = tmp_path / "served"
    root.mkdir()

    def add(ids, answers=None):
        for vid in ids:
            if not (root / f"{vid}.mp4").exists():
                os.link(video_file, root / f"{vid}.mp4")
        if answers is not None:
            (root / "answers.json").write_text(json.dumps(answers))
        return root

    add(GOOD)
    return add


def _config(template: str, **kw) -> DownloadConfig:
    base = dict(url_template=template, retries=0, fragment_retries=0, socket_timeout=20.0, concurrency=1,
                extractors=(LOOPBACK_EXTRACTOR,))
    base.update(kw)
    return DownloadConfig(**base)


def test_downloads_in_flight_never_exceed_concurrency_with_500_clips_submitted(served, tmp_path):
    # 100 real downloads and 400 clips whose host answers 503, every request held 20 ms so that downloads overlap
    real = [f"Real{i:07d}" for i in range(5)]
    busy = [f"Busy{i:07d}" for i in range(400)]
    root = served(real, {**{vid: [{"delay_seconds": 0.02}] for vid in real},
                         **{vid: [{"status": 503, "delay_seconds": 0.02}] for vid in busy}})
    items = [_clip(real[i % 5], float(i), float(i) + 10.0) for i in range(100)] + [_clip(vid) for vid in busy]
    with VideoServerProcess(root) as server:  # its own process: its threads do not count as ours
        cfg = _config(server.url_template, concurrency=4, partial=False)
        threads_before = threading.active_count()
        peak = [threads_before]
        with DownloadSession(cfg, tmp_path / "out") as session:
            futures = [session.submit(name, seg) for name, seg in items]
            for f in futures:
                f.add_done_callback(lambda _: peak.__setitem__(0, max(peak[0], threading.active_count())))
            results = [f.result() for f in futures]
        assert server.max_in_flight <= 4
        assert sum(server.requests().values()) == 100 * 2 + 400  # every clip was really tried, once
    assert Counter((r.status, r.reason) for r in results) == {("available", None): 100, ("failed", None): 400}
    assert len({r.path for r in results if r.path}) == 100
    assert peak[0] <= threads_before + 4 + 1  # the workers and one deadline watchdog, never one per clip


def test_breaker_stops_requests_after_n_consecutive_429(served, tmp_path):
    ids = [f"Limited{i:04d}" for i in range(8)]
    root = served(ids, {vid: [{"status": 429}] for vid in ids})
    with VideoServer(root) as server:
        cfg = _config(server.url_template, breaker_threshold=3)
        results = list(download_clips([_clip(vid) for vid in ids], tmp_path / "out", cfg, progress=False))
        assert server.requests() == {vid: 1 for vid in ids[:3]}  # nothing reached the host after the 3rd refusal
    by_id = {r.youtube_id: r for r in results}
    assert [(by_id[v].status, by_id[v].reason) for v in ids] == [("failed", "rate_limited")] * 3 + [
        ("not_attempted", "rate_limited")] * 5
    assert "HTTP Error 429" in by_id[ids[0]].message and "download.cookies_file" in by_id[ids[0]].message
    untried = by_id[ids[-1]]
    assert untried.path is None and "3 consecutive refusals" in untried.message
    assert all(word in untried.message for word in ("wait", "download.cookies_file", "download.proxy"))


def test_a_success_resets_the_count(served, tmp_path):
    ids = [f"Limited{i:04d}" for i in range(4)]
    root = served(ids, {vid: [{"status": 429}] for vid in ids})
    order = [ids[0], ids[1], GOOD[0], ids[2], ids[3], GOOD[1]]  # never 3 refusals in a row
    with VideoServer(root) as server:
        cfg = _config(server.url_template, breaker_threshold=3, partial=False)
        with DownloadSession(cfg, tmp_path / "out") as session:  # one worker: clips run in submission order
            results = [f.result() for f in [session.submit(*_clip(vid)) for vid in order]]
            assert not session.breaker.is_open
    assert [r.status for r in results] == ["failed", "failed", "available", "failed", "failed", "available"]


def test_breaker_on_youtubes_bot_check(served, tmp_path):
    ids = [f"BotCheck{i:03d}" for i in range(5)]
    root = served(ids, {vid: [{"bot_check": True}] for vid in ids})
    with VideoServer(root) as server:
        cfg = _config(server.watch_url_template, breaker_threshold=2)
        with DownloadSession(cfg, tmp_path / "out") as session:
            results = [f.result() for f in [session.submit(*_clip(vid)) for vid in ids]]
            assert session.breaker.tripped_by == "bot_check"
            assert "sign in to confirm it is not a bot" in session.breaker.message
        # each refused clip cost one player request; none was made after the second
        assert server.requests() == {ids[0]: 1, ids[1]: 1}
    assert [(r.status, r.reason) for r in results] == [("failed", "bot_check")] * 2 + [
        ("not_attempted", "bot_check")] * 3
    assert "Sign in to confirm you\u2019re not a bot" in results[0].message  # YouTube's words, through yt-dlp


def test_breaker_with_several_workers_lets_at_most_the_running_ones_finish(served, tmp_path):
    ids = [f"Limited{i:04d}" for i in range(30)]
    root = served(ids, {vid: [{"status": 429, "delay_seconds": 0.05}] for vid in ids})
    with VideoServer(root) as server:
        cfg = _config(server.url_template, breaker_threshold=4, concurrency=3)
        with DownloadSession(cfg, tmp_path / "out") as session:
            results = [f.result() for f in [session.submit(*_clip(vid)) for vid in ids]]
        made = sum(server.requests().values())
    # the 4th refusal opens it; at most the two other workers' clips were already on their way
    assert 4 <= made <= 4 + 3 - 1
    assert Counter(r.status for r in results) == {"failed": made, "not_attempted": 30 - made}


def test_probes_share_the_cap_and_the_breaker(served, tmp_path):
    ids = [f"Limited{i:04d}" for i in range(5)]
    root = served(ids, {vid: [{"status": 429}] for vid in ids})
    with VideoServer(root) as server:
        cfg = _config(server.url_template, breaker_threshold=2)
        with DownloadSession(cfg, tmp_path / "out") as session:
            first = session.probe(*_clip(GOOD[0])).result()
            refused = [session.probe(*_clip(vid)).result() for vid in ids]
            after = session.submit(*_clip(GOOD[1])).result()  # a download after the breaker opened on probes
        assert server.requests(GOOD[1]) == 0 and sum(server.requests(v) for v in ids) == 2
    assert (first.status, first.message) == ("available", "still available")
    assert [r.status for r in refused] == ["failed", "failed", "not_attempted", "not_attempted", "not_attempted"]
    assert after.status == "not_attempted"


def test_a_transient_failure_works_on_the_next_run(served, tmp_path):
    root = served(["Flaky000000"], {"Flaky000000": [{"status": 503}, {"status": 200}]})
    outcomes = []
    for _ in range(2):  # two runs, each with a server of its own, as two `avsed extract` runs would have
        with VideoServerProcess(root) as server:
            with DownloadSession(_config(server.url_template), tmp_path / "out") as session:
                outcomes.append(session.submit(*_clip("Flaky000000")).result())
    assert [(r.status, r.reason) for r in outcomes] == [("failed", None), ("available", None)]
    assert "HTTP Error 503" in outcomes[0].message and outcomes[1].path.is_file()


def test_a_stalling_host_costs_one_clip_its_deadline_and_the_run_goes_on(served, tmp_path):
    """Both paths: ffmpeg's partial download and yt-dlp's own whole-file download. The read timeouts are set far
    beyond the deadline, so only the deadline can end the stalled clip in time; the others must complete."""
    root = served(["StallStall0"], {"StallStall0": [{"stall_after_bytes": 2000}]})
    with VideoServerProcess(root) as server:  # its own process: its threads do not count as ours
        results = {}
        sessions = {}
        threads_before = threading.active_count()
        for partial in (True, False):
            cfg = _config(server.url_template, partial=partial, concurrency=2, socket_timeout=300.0,
                          clip_deadline_seconds=10.0)
            session = sessions[partial] = DownloadSession(cfg, tmp_path / f"out-{partial}")
            results[partial] = [session.submit(*_clip(vid)) for vid in ("StallStall0", *GOOD)]
        for partial, futures in results.items():
            done, _ = wait(futures, timeout=240)  # generous; the deadline resolves the stalled clip after 10 s
            assert len(done) == 4
            stalled, *others = [f.result() for f in futures]
            assert (stalled.status, stalled.reason, stalled.path) == ("failed", "deadline", None)
            assert "stalled" in stalled.message and "clip_deadline_seconds" in stalled.message
            assert [r.status for r in others] == ["available"] * 3
        # the abandoned downloads still hold their workers (one each), and no thread was added for them
        assert threading.active_count() <= threads_before + 2 * (2 + 1)
        for session in sessions.values():
            session.close()  # returns without waiting for the abandoned download
    # the server stopped: the stalled connections closed, so the abandoned workers end soon after


@pytest.mark.parametrize("partial", [True, False], ids=["partial-ffmpeg", "whole"])
def test_read_timeout_ends_a_stall_before_the_deadline(served, tmp_path, partial):
    """Without ffmpeg's read timeout (-rw_timeout) a stall on the partial path would last until the deadline."""
    root = served(["StallStall0"], {"StallStall0": [{"stall_after_bytes": 2000}]})
    with VideoServer(root) as server:
        cfg = _config(server.url_template, partial=partial, fallback_whole=False, socket_timeout=1.0,
                      clip_deadline_seconds=120.0)
        with DownloadSession(cfg, tmp_path / "out") as session:
            result = session.submit(*_clip("StallStall0")).result(timeout=240)
    assert (result.status, result.path) == ("failed", None)
    assert result.reason != "deadline"  # ended by the read timeout, not by the deadline
    assert ("ffmpeg exited with code" if partial else "timed out") in result.message


def test_a_session_that_closes_leaves_another_sessions_ffmpeg_alone(served, tmp_path):
    """Two sessions of one process on one download folder (the shard tasks of a Dask worker or a Prefect task
    runner): the first closing while the second's partial download is being cut must not kill that ffmpeg. It
    did (`close` killed every ffmpeg writing into the folder), and the second clip came back `failed` (`ffmpeg
    exited with code -9`) or, with the whole-video fallback, was taken from another download than the reference
    run's (its embeddings off by a few percent)."""
    # the video is 14 kB: its cut takes seconds at 8 kB/s
    root = served(["SlowSlow000"], {"SlowSlow000": [{"trickle_bytes_per_second": 8_000}] * 20})
    with VideoServer(root) as server:
        cfg = _config(server.url_template, partial=True, fallback_whole=False)
        with DownloadSession(cfg, tmp_path / "out") as slow:
            cut = slow.submit(*_clip("SlowSlow000", 1.0, 9.0))
            until = time.monotonic() + 60
            while not _ffmpeg_cutting("SlowSlow000") and not cut.done() and time.monotonic() < until:
                time.sleep(0.05)
            assert _ffmpeg_cutting("SlowSlow000"), cut.result() if cut.done() else "no ffmpeg within 60 s"
            with DownloadSession(cfg, tmp_path / "out") as quick:
                assert quick.submit(*_clip(GOOD[0])).result(timeout=60).status == "available"
            assert _ffmpeg_cutting("SlowSlow000") and not cut.done()  # `quick` closed while `slow`'s ffmpeg runs
            result = cut.result(timeout=120)
    assert (result.status, result.message) == ("available", ""), result


def _ffmpeg_cutting(youtube_id: str) -> bool:
    """Whether an ffmpeg of this process is writing the clip of `youtube_id`."""
    for proc in psutil.Process().children(recursive=True):
        try:
            if "ffmpeg" in proc.name() and any(youtube_id in a for a in proc.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


def test_close_cancels_what_has_not_started(served, tmp_path):
    ids = [f"Slow{i:07d}" for i in range(10)]
    root = served(ids, {vid: [{"status": 503, "delay_seconds": 1.0}] for vid in ids})
    with VideoServer(root) as server:
        session = DownloadSession(_config(server.url_template), tmp_path / "out")
        futures = [session.submit(*_clip(vid)) for vid in ids]
        futures[0].result()
        session.close()
        assert all(f.done() for f in futures)
        cancelled = sum(f.cancelled() for f in futures)
        # one worker: the first clip, perhaps the second (started before close), and no request for the rest
        assert cancelled >= 6 and sum(server.requests().values()) == 10 - cancelled
        with pytest.raises(RuntimeError, match="closed"):
            session.submit(*_clip(ids[0]))


def test_clips_that_need_no_request_and_errors_never_raise(served, tmp_path):
    root = served([])
    with VideoServer(root) as server:
        with DownloadSession(_config(server.url_template), tmp_path / "out") as session:
            no_id = session.submit("123.wav", None)
            assert no_id.done() and (no_id.result().status, no_id.result().reason) == ("missing", "no_youtube_id")
            first = session.submit(*_clip(GOOD[0])).result()
            # page + media (more if a loaded machine made yt-dlp retry one): whatever it took, reuse takes none
            downloaded = server.requests(GOOD[0])
            again = session.submit(*_clip(GOOD[0]))  # the complete file is reused without a request
            assert again.done() and again.result().message == "reused existing file"
            absent = session.submit(*_clip("NotThereXYZ")).result()
        assert downloaded >= 2 and server.requests(GOOD[0]) == downloaded
        assert (first.status, absent.status) == ("available", "missing")
    with pytest.raises(ValueError, match="needs out_dir"):
        DownloadSession(_config("http://127.0.0.1:9/{youtube_id}.mp4")).submit(*_clip(GOOD[0]))
    cfg = _config("http://127.0.0.1:9/{youtube_id}.mp4")
    with DownloadSession(cfg, tmp_path / "out2") as session:  # nobody listens: a transient failure, not a raise
        refused = session.submit(*_clip(GOOD[1])).result()
    assert (refused.status, refused.reason) == ("failed", None) and "Connection refused" in refused.message
