"""The bounded streaming pipeline, structurally: the writer thread writes a shard's rows in one call per feature
once the shard is complete; decoded clips alive never exceed `max_clips_in_flight`; concurrent downloads never
exceed the download cap; every job ends written or given up; the planner reads in bulk."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from pipeline.download import DownloadConfig
from pipeline.extract import ExtractConfig, plan_extraction, run_extraction
from pipeline.ledger import Ledger
from avsed.synthetic.video_host import VideoServer, VideoServerProcess
from avsed.core.store import FeatureStore, ProvenanceMismatch
from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset
from pipeline.writer import ShardWriter, WriterError


class RecordingSink:
    """Stands in for the store's row-writing side: records every call (shards of 4 rows)."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[tuple] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def shard_of(self, row: int) -> int:
        return row // 4

    def write_rows(self, feature, rows, data, masks):
        if feature == self.fail_on:
            raise OSError("disk full")
        with self.lock:
            self.calls.append(("rows", feature, list(map(int, rows)), data.copy(), masks.copy()))

    def set_durations(self, rows, durations):
        with self.lock:
            self.calls.append(("durations", list(map(int, rows)), list(map(float, durations))))


def row(value: float, valid: int = 3):
    mask = np.zeros(3, bool)
    mask[:valid] = True
    return np.full((3, 2), value, np.float32), mask


def test_writer_writes_each_shard_once_per_feature_when_complete():
    sink = RecordingSink()
    written = []
    writer = ShardWriter(sink, on_written=lambda *a: written.append(a))
    video = writer.expect("video", [0, 1, 2, 5, 6])  # shard 0: rows 0, 1, 2; shard 1: rows 5, 6
    audio = writer.expect("audio", [1, 5])
    # out of order and interleaved, as the stream's threads deliver them
    writer.put("video", 5, {"openl3": row(5.0), "tce": row(50.0)})
    writer.put("video", 1, {"openl3": row(1.0), "tce": row(10.0)})
    writer.skip("video", 2)  # the clip's video is gone
    writer.put("audio", 5, {"logmel": row(0.5, 2)}, duration=9.5)
    writer.put("video", 0, {"openl3": row(0.0)})  # only openl3 was still missing for row 0
    assert not video.done
    writer.put("video", 6, {"openl3": row(6.0), "tce": row(60.0)})
    writer.put("audio", 1, {"logmel": row(0.1)}, duration=10.0)
    video.wait(timeout=30)
    audio.wait(timeout=30)
    writer.close()
    assert (video.written, video.skipped, audio.written, audio.skipped) == (4, 1, 2, 0)
    rows_calls = [(c[1], c[2]) for c in sink.calls if c[0] == "rows"]
    # one call per (shard, feature), whole shards, rows sorted; shard 1's video rows were written first (complete
    # first), and nothing was written before its shard was complete
    assert sorted(rows_calls) == sorted([("openl3", [5, 6]), ("tce", [5, 6]), ("openl3", [0, 1]), ("tce", [1]),
                                         ("logmel", [5]), ("logmel", [1])])
    assert len(rows_calls) == 6 and writer.shard_writes == 6
    by = {(c[1], tuple(c[2])): c for c in sink.calls if c[0] == "rows"}
    np.testing.assert_array_equal(by[("tce", (5, 6))][3][:, 0, 0], [50.0, 60.0])
    np.testing.assert_array_equal(by[("logmel", (5,))][4][0], [True, True, False])
    assert ("durations", [5], [9.5]) in sink.calls and ("durations", [1], [10.0]) in sink.calls
    # the durations of a shard go before its feature rows
    assert sink.calls.index(("durations", [5], [9.5])) < sink.calls.index(by[("logmel", (5,))])
    assert ("video", 0, [0, 1], [2], ["openl3", "tce"]) in written


def test_writer_failure_reaches_every_caller():
    writer = ShardWriter(RecordingSink(fail_on="tce"))
    ticket = writer.expect("video", [0])
    writer.put("video", 0, {"tce": row(1.0)})
    with pytest.raises(WriterError, match="disk full"):
        ticket.wait(timeout=30)
    with pytest.raises(WriterError, match="disk full"):
        writer.put("video", 1, {"tce": row(1.0)})
    with pytest.raises(WriterError):
        writer.close()


# --- the whole pipeline on a synthetic set -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth_16(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stream") / "desed"
    make_synthetic_dataset(out, SynthConfig(clips=16, seed=5, missing_fraction=0.2), progress=False)
    return out


def config(data: Path, store: Path, url_template: str, **kw) -> ExtractConfig:
    kw.setdefault("features", ("logmel", "openl3"))
    kw.setdefault("batch_clips", 2)
    return ExtractConfig(metadata=str(data / "metadata"), audio_dir=str(data / "audio"), store=str(store),
                         allow_random_weights=True, frame_size=32, clips_per_shard=4,
                         extractor_configs={"openl3": {"input_size": 32, "batch_size": 16}},
                         download=DownloadConfig(url_template=url_template, concurrency=2), **kw)


@pytest.mark.slow  # end to end: run_extraction on a synthetic set through the loopback host and yt-dlp
def test_decoded_clips_and_downloads_stay_within_their_bounds(synth_16, tmp_path):
    """Every id of the host answers after 0.3 s, so downloads pile up if the cap does not hold; the embedding worker
    stalls for 3 s after its first batch, so decoded clips pile up if the bound does not hold. Decoded frames are
    tracked by weak references: a clip kept alive anywhere (a queue, a future, a list) is counted."""
    videos = synth_16 / "videos"
    ids = [p.stem for p in videos.glob("*.mp4")]
    answers = tmp_path / "videos"
    answers.mkdir()
    for p in videos.glob("*.mp4"):
        os.link(p, answers / p.name)  # the host serves only files inside its folder (a symlink resolves outside)
    (answers / "answers.json").write_text(json.dumps({i: [{"status": 200, "delay_seconds": 0.3}] for i in ids}))
    alive: dict[int, list[weakref.ref]] = {}
    most_alive = [0]
    events: dict[str, int] = {}
    lock = threading.Lock()

    def observe(event, details):
        if event == "embedded" and "embedded" not in events:
            time.sleep(3.0)  # in the embedding thread: downloads and decodes go on meanwhile
        with lock:
            events[event] = events.get(event, 0) + 1
            if event == "decoded":
                alive[details["row"]] = [weakref.ref(details["frames"])] + [weakref.ref(c.frames)
                                                                            for c in details["clips"]]
                now = sum(1 for refs in alive.values() if any(r() is not None for r in refs))
                most_alive[0] = max(most_alive[0], now)

    with VideoServerProcess(answers) as server:
        # one clip per upload batch and no de-duplication: the worker delivers (and stalls) from the third clip on
        cfg = config(synth_16, tmp_path / "f.zarr", server.url_template, max_clips_in_flight=3, decode_workers=2,
                     batch_clips=1)
        cfg = ExtractConfig.from_dict({**cfg.to_dict(), "extractor_configs": {"openl3": {
            "input_size": 32, "batch_size": 16, "dedup_identical_frames": False}}})
        report = run_extraction(cfg, progress=False, observer=observe)
        in_flight = server.max_in_flight
    with_video = report.videos_downloaded
    assert with_video >= 8  # enough clips to break a bound of 3
    assert 1 <= most_alive[0] <= 3
    assert 1 <= in_flight <= 2
    store = FeatureStore.open(cfg.store)
    assert int(store.present("openl3").sum()) == with_video == report.video_computed["openl3"]
    plan_jobs = events["downloaded"]
    assert events["settled"] == plan_jobs  # every job ended exactly once (written or given up)
    assert events["decoded"] == events["released"] == with_video
    assert not list((tmp_path / "f.zarr.videos").glob("*.mp4"))  # videos are deleted once their rows are written


@pytest.mark.slow  # end to end: run_extraction on a synthetic set through the loopback host and yt-dlp
def test_planner_reads_the_ledger_in_bulk_and_rechecks_only_stale_entries(synth_16, tmp_path, monkeypatch):
    with VideoServer(synth_16 / "videos") as server:
        cfg = config(synth_16, tmp_path / "f.zarr", server.url_template, max_clips_in_flight=4, decode_workers=1)
        first = run_extraction(cfg, progress=False)
        assert first.videos_downloaded > 0

        def per_clip(*_a, **_k):
            raise AssertionError("the planner asked the ledger about one clip")

        monkeypatch.setattr(Ledger, "get", per_clip)
        monkeypatch.setattr(Ledger, "should_download", per_clip)
        before = server.requests()
        fresh = plan_extraction(cfg)  # entries checked moments ago: nothing to re-check
        assert fresh.probe_jobs == [] and fresh.video_jobs == [] and fresh.audio_jobs == []
        again = run_extraction(cfg, progress=False)
        assert again.newly_missing_cached == 0 and server.requests() == before  # the host was not asked
        stale = plan_extraction(ExtractConfig.from_dict({**cfg.to_dict(), "recheck_after_days": 0}))
        assert len(stale.probe_jobs) == first.videos_downloaded
        assert {j.clip_id for j in stale.probe_jobs} == {
            cid for cid, e in Ledger(cfg.ledger_path).entries().items() if e.status == "available"}


def test_provenance_records_the_frame_size(synth_16, tmp_path):
    with VideoServer(synth_16 / "videos") as server:
        cfg = config(synth_16, tmp_path / "f.zarr", server.url_template, features=("openl3",))
        plan_extraction(cfg)
        assert FeatureStore.open(cfg.store).provenance("openl3")["frame_size"] == 32
        smaller = ExtractConfig.from_dict({**cfg.to_dict(), "frame_size": 16})
        with pytest.raises(ProvenanceMismatch, match="frame_size: store has 32, now 16"):
            plan_extraction(smaller)
        undeduplicated = ExtractConfig.from_dict({**cfg.to_dict(), "extractor_configs": {
            "openl3": {"input_size": 32, "batch_size": 16, "dedup_identical_frames": False}}})
        with pytest.raises(ProvenanceMismatch, match="dedup_identical_frames: store has True, now False"):
            plan_extraction(undeduplicated)


@pytest.mark.slow  # end to end: run_extraction on a synthetic set through the loopback host and yt-dlp
def test_rechecks_and_downloads_of_one_run_share_its_download_cap(synth_16, tmp_path):
    """The flow re-checks cached videos while the shards download (a task beside them). Through the run's one
    session (`ExtractionRun.downloads()`) the host never sees more than download.concurrency requests; a session of
    the re-checks' own (the positive control) lets it see more."""
    from pipeline.extract import ExtractionRun, probe_cached_videos

    videos = synth_16 / "videos"
    ids = sorted(p.stem for p in videos.glob("*.mp4"))
    answers = tmp_path / "videos"
    answers.mkdir()
    for p in videos.glob("*.mp4"):
        os.link(p, answers / p.name)
    # the first run caches half of the videos; the other half fail transiently (500) and are downloaded again
    retried = ids[::2]
    (answers / "answers.json").write_text(json.dumps({i: [{"status": 500}] for i in retried}))
    with VideoServer(answers) as server:
        first = run_extraction(config(synth_16, tmp_path / "f.zarr", server.url_template, decode_workers=1),
                               progress=False)
    assert first.videos_downloaded == len(ids) - len(retried)
    os.remove(answers / "answers.state.json")
    # every request held 0.15 s: the re-checks' requests and the downloads' overlap unless they share one cap
    (answers / "answers.json").write_text(json.dumps({i: [{"delay_seconds": 0.15}] * 4 for i in ids}))

    for suffix in ("", ".ledger.sqlite"):  # the same starting point for the control
        copy = shutil.copytree if suffix == "" else shutil.copy2
        copy(tmp_path / f"f.zarr{suffix}", tmp_path / f"control.zarr{suffix}")

    def rerun(store: str, shared: bool) -> tuple[int, int, int]:
        # the host in a process of its own: a server thread starved by this process's threads would answer late
        # and be seen with a finished request still open (once, on a loaded machine, max_in_flight 2 here)
        with VideoServerProcess(answers) as server:
            cfg = config(synth_16, tmp_path / store, server.url_template, decode_workers=1, recheck_after_days=0)
            cfg = cfg.model_copy(update={"download": cfg.download.model_copy(update={"concurrency": 1})})
            plan = plan_extraction(cfg)
            with ExtractionRun(cfg) as run:
                probes = threading.Thread(target=probe_cached_videos, args=(cfg, plan.probe_jobs),
                                          kwargs={"downloads": run.downloads() if shared else None})
                probes.start()
                report = run.videos(plan.video_jobs, plan.video_features)
                probes.join()
            return len(plan.probe_jobs), report.videos_downloaded, server.max_in_flight

    assert rerun("f.zarr", shared=True) == (len(ids) - len(retried), len(retried), 1)
    assert rerun("control.zarr", shared=False)[2] == 2
