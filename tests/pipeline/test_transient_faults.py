"""Issue 24: what a hostile host or machine does to a run, and what the ledger, the store and the videos folder hold
afterwards. Transient faults (a stalled or truncated transfer, a web page instead of a video, a decoder killed by
a signal) are `failed` with their own reason, keep what is worth keeping, and a rerun with the real video back
records it available; a URL template that cannot be right is refused before any work; a host that serves one video
for every id stops the run; an endless response ends at the clip's deadline with its ffmpeg gone.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import psutil
import pytest

from pipeline.download import DownloadConfig, DownloadSession
from pipeline.download_reasons import retry_due
from avsed.core.errors import AvsedError
from pipeline.extract import run_extraction
from pipeline.ffmpeg_bin import ffmpeg_exe
from pipeline.ledger import Ledger
from avsed.core.manifest import parse_clip_name
from avsed.synthetic.video_host import ANSWERS_FILE, ANSWERS_STATE_FILE, VideoServer
from avsed.core.store import FeatureStore
from pipeline.streaming import SuspectRunError
from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset
from avsed.synthetic.loopback_youtube import LOOPBACK_EXTRACTOR
from tests.pipeline import videos
from tests.pipeline.extracted_store import small_extract_config

SYNTH = SynthConfig(clips=5, seed=5, missing_fraction=0.0, still_fraction=0.0, black_fraction=0.0,
                    short_clip_fraction=0.0, offset_fraction=0.0)
VIDEO = "openl3"


def _clips_with_video(data: Path) -> list[tuple[str, str]]:
    """(clip_id, youtube_id) of the set's clips whose video is served, in file order."""
    with (data / "truth/videos.tsv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["kind"] != "absent"]
    return [(r["clip_id"], r["youtube_id"]) for r in rows if (data / "videos" / f"{r['youtube_id']}.mp4").is_file()]


def _state(cfg) -> tuple[dict, dict]:
    with Ledger(cfg.ledger_path, read_only=True) as ledger:
        entries = ledger.entries()
    store = FeatureStore.open(cfg.store)
    return entries, dict(zip(store.clip_ids(), store.present(VIDEO)))


def _run(data: Path, store: Path, **download):
    with VideoServer(data / "videos") as server:
        cfg = small_extract_config(data, store, server.url_template, decode_workers=1, download=DownloadConfig(
            url_template=server.url_template, retries=0, fragment_retries=0, socket_timeout=1.0, **download))
        report = run_extraction(cfg, progress=False)
    return cfg, report


# -- item 3: configuration that cannot be right ----------------------------------------------------------------
@pytest.mark.parametrize("template,words", [
    ("http://127.0.0.1:8000/video.mp4", ["download.url_template", "no {youtube_id}", "{youtube_id}"]),
    ("http://127.0.0.1:8000/{id}.mp4", ["download.url_template", "unknown placeholder {id}", "{youtube_id}"]),
    ("http://127.0.0.1:8000/{youtube_id.mp4", ["download.url_template", "not a valid template"]),
])
def test_a_url_template_that_cannot_be_right_is_refused_in_one_line(template, words):
    with pytest.raises(AvsedError) as info:
        DownloadConfig(url_template=template)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message


def test_a_bad_template_is_refused_before_the_store_is_made(tmp_path):
    from avsed.cli import main

    data = tmp_path / "data"
    (data / "metadata").mkdir(parents=True)
    rc = main(["extract", "--engine", "plain", "--metadata", str(data / "metadata"), "--audio-dir", str(data),
               "--store", str(tmp_path / "features.zarr"), "--url-template", "http://127.0.0.1:9/{id}.mp4"])
    assert rc == 2 and not (tmp_path / "features.zarr").exists()


@pytest.mark.slow
def test_one_video_for_every_id_stops_the_run_before_filling_the_store(tmp_path):
    data = tmp_path / "data"
    make_synthetic_dataset(data, SYNTH, progress=False)
    clips = _clips_with_video(data)
    one = data / "videos" / f"{clips[0][1]}.mp4"
    for _, vid in clips[1:]:  # the host ignores the id: every id gets the first video
        shutil.copyfile(one, data / "videos" / f"{vid}.mp4")
    with pytest.raises(Exception) as info:
        _run(data, tmp_path / "features.zarr")
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__
    assert any(isinstance(e, SuspectRunError) for e in chain), chain
    cfg = small_extract_config(data, tmp_path / "features.zarr", "http://127.0.0.1:9/{youtube_id}.mp4")
    entries, present = _state(cfg)
    available = [cid for cid, _ in clips if cid in entries and entries[cid].status == "available"]
    assert len(available) <= 1, available  # at most the first of the identical ones: nothing wrong is recorded
    assert sum(bool(present[cid]) for cid, _ in clips) <= 1
    assert all(bool(present[cid]) <= (cid in available) for cid, _ in clips)


# -- item 2: transient faults are failed, with their own reason, and retried ----------------------------------------
def _killing_ffmpeg(tmp_path: Path, youtube_id: str) -> Path:
    """An ffmpeg that is killed (SIGKILL, as the out-of-memory killer does) when it decodes this id's file."""
    script = tmp_path / "ffmpeg-oom"
    script.write_text(f'#!/bin/sh\ncase "$*" in *{youtube_id}*rawvideo*) kill -9 $$ ;; esac\n'
                      f'exec "{ffmpeg_exe()}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.slow
def test_transient_faults_are_failed_with_their_reason_and_a_rerun_records_the_video(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_synthetic_dataset(data, SYNTH, progress=False)
    clips = _clips_with_video(data)
    assert len(clips) >= 4
    (stall, stall_id), (page, page_id), (cut, cut_id), (killed, killed_id) = clips[:4]
    served = data / "videos"
    (served / ANSWERS_FILE).write_text(json.dumps({stall_id: [{"stall_after_bytes": 4096}],
                                                   cut_id: [{"close_after_bytes": 4096}]}))
    shutil.move(served / f"{page_id}.mp4", tmp_path / "real.mp4")  # a captive portal answers a page, status 200
    videos.html_page(served / f"{page_id}.mp4")
    monkeypatch.setenv("AVSED_FFMPEG", str(_killing_ffmpeg(tmp_path, killed_id)))  # read by the decode workers

    cfg, report = _run(data, tmp_path / "features.zarr")
    entries, present = _state(cfg)
    got = {cid: (entries[cid].status, entries[cid].reason) for cid in (stall, page, cut, killed)}
    assert got == {stall: ("failed", "stalled"), page: ("failed", "not_media"), cut: ("failed", "truncated"),
                   killed: ("failed", "decoder_killed")}, {c: entries[c].message for c in got}
    assert not any(present[c] for c in got)
    # the decoder's death is not the file's fault: the file is kept for the rerun; nothing else is left behind
    left = sorted(p.name for p in cfg.video_path.iterdir())
    assert left == [f"{Path(killed).stem}.mp4"] or left == [f"{Path(killed).stem}.whole.mp4"], left
    assert report.videos_failed == 4 and report.videos_corrupt == 0 and report.videos_missing == 0

    # the host and the machine are well again: a plain rerun (no recheck_missing) records every video available
    (served / ANSWERS_FILE).unlink()
    (served / ANSWERS_STATE_FILE).unlink(missing_ok=True)
    shutil.move(tmp_path / "real.mp4", served / f"{page_id}.mp4")
    monkeypatch.delenv("AVSED_FFMPEG")
    cfg, report = _run(data, tmp_path / "features.zarr")
    entries, present = _state(cfg)
    for cid in got:
        assert (entries[cid].status, entries[cid].reason) == ("available", None), (cid, entries[cid])
        assert present[cid] and entries[cid].attempts == 2, cid
    assert report.video_computed == {VIDEO: 4}


def test_a_web_page_served_as_the_video_file_is_not_media(tmp_path):
    """Through the YouTube-shaped player (`/watch?v=`) the page arrives as the video's file: sniffed, not decoded."""
    root = tmp_path / "served"
    root.mkdir()
    videos.html_page(root / "PortalPage0.mp4")
    name = "YPortalPage0_0.000_10.000.wav"
    with VideoServer(root) as server:
        cfg = DownloadConfig(url_template=server.watch_url_template, retries=0, fragment_retries=0,
                             socket_timeout=2.0, partial=False, extractors=(LOOPBACK_EXTRACTOR,))
        with DownloadSession(cfg, tmp_path / "out") as session:
            result = session.submit(name, parse_clip_name(name)).result(timeout=60)
    assert (result.status, result.reason, result.path) == ("failed", "not_media", None)
    assert list((tmp_path / "out").glob("*.mp4")) == []


# -- item 6: an endless response ends at the deadline, and so does its ffmpeg --------------------------------------
def _ffmpegs_writing_into(folder: Path) -> list[int]:
    out = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if "ffmpeg" in (proc.info["name"] or "") and any(str(folder) in a for a in proc.info["cmdline"] or ()):
                out.append(proc.pid)
        except psutil.Error:
            continue
    return out


@pytest.mark.slow
def test_an_endless_response_ends_at_the_deadline_and_its_ffmpeg_with_it(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    videos.time_coded_video(root / "EndlessEnd0.mp4", 10)
    (root / ANSWERS_FILE).write_text(json.dumps({"EndlessEnd0": [{"trickle_bytes_per_second": 300}]}))
    name = "YEndlessEnd0_0.000_10.000.wav"
    out = tmp_path / "out"
    with VideoServer(root) as server:
        cfg = DownloadConfig(url_template=server.url_template, retries=0, fragment_retries=0, socket_timeout=20.0,
                             clip_deadline_seconds=2.0, fallback_whole=False)
        with DownloadSession(cfg, out) as session:
            result = session.submit(name, parse_clip_name(name)).result(timeout=60)
            assert (result.status, result.reason) == ("failed", "deadline")
        # the session is closed and the host still trickles (for 40 s): its abandoned worker ends (yt-dlp may start
        # the ffmpeg after the deadline: it is killed then), and no ffmpeg of this run is still cutting
        for _ in range(150):
            if not any(t.name.startswith("avsed-download-") and t.is_alive() for t in threading.enumerate()):
                break
            time.sleep(0.1)
        assert _ffmpegs_writing_into(out) == []
        assert not any(t.name.startswith("avsed-download-") and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("attempts,hours,due", [(1, 0.0, True), (4, 0.0, True), (5, 0.5, False), (5, 1.0, True),
                                                (8, 7.9, False), (8, 8.0, True), (40, 24.0 * 7, True)])
def test_a_clip_that_keeps_failing_is_retried_with_backoff(attempts, hours, due):
    assert retry_due(attempts, hours) is due
