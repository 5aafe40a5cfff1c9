"""End to end through the failure paths: the synthetic set's failure cases, extracted by `run_extraction` with real
yt-dlp downloads from the loopback host, three runs in a row.

Run 1 meets every failure and goes on: a corrupt video and a video ending before its clip are `missing/corrupt`
with their files removed and no feature row; the host's scripted 503 and 429 are `failed`; a removed video is
`missing/removed`; unreadable and missing audio are recorded problems without log-mel while their videos are
still extracted; truncated and short audio are recorded with both durations and still extracted; every other
clip is complete. Run 2 (a plain rerun) retries the transient failures, which now succeed, and leaves the
permanent ones alone. Run 3, with the removed video back on the host and `recheck_missing`, retries the
permanent ones: the removed video is extracted, the corrupt ones stay corrupt.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipeline.extract import run_extraction
from pipeline.ledger import Ledger
from avsed.synthetic.video_host import VideoServer
from avsed.core.store import FeatureStore
from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset
from avsed.synthetic.failures import ALL_FAILURE_CASES, REMOVED_LIST, REMOVED_STATUS
from tests.pipeline.extracted_store import small_extract_config

# end to end (three extractions with yt-dlp downloads): the full suite's, not the fast tier's
pytestmark = pytest.mark.slow

# Five ordinary clips (one per partition) beside the failure cases keep three runs short.
SYNTH = SynthConfig(clips=5, seed=2, missing_fraction=0.0, still_fraction=0.0, black_fraction=0.0,
                    short_clip_fraction=0.0, offset_fraction=0.0, failure_cases=ALL_FAILURE_CASES)
VIDEO = "openl3"


def _truth(data: Path) -> dict[str, dict[str, str]]:
    with (data / "truth/failures.tsv").open(newline="", encoding="utf-8") as fh:
        return {r["case"]: r for r in csv.DictReader(fh, delimiter="\t")}


def _outcome(entry) -> str:
    return entry.status + (f"/{entry.reason}" if entry.reason else "")


class Runs:
    """The three runs' reports, and what the store and ledger held after each."""

    def __init__(self, root: Path):
        self.data = root / "data"
        make_synthetic_dataset(self.data, SYNTH, progress=False)
        self.truth = _truth(self.data)
        self.store = root / "features.zarr"
        self.reports, self.entries, self.present, self.problems, self.videos_left = [], [], [], [], []

    def run(self, **overrides) -> None:
        with VideoServer(self.data / "videos", removed_status=REMOVED_STATUS) as server:
            cfg = small_extract_config(self.data, self.store, server.url_template, **overrides)
            self.reports.append(run_extraction(cfg, progress=False))
        self.config = cfg
        store = FeatureStore.open(self.store)
        ids = list(store.clip_ids())
        self.present.append({f: dict(zip(ids, store.present(f))) for f in ("logmel", VIDEO)})
        self.durations = dict(zip(ids, store.column("duration")))
        with Ledger(cfg.ledger_path, read_only=True) as ledger:
            self.entries.append(ledger.entries())
            self.problems.append(ledger.problems())
        self.videos_left.append(sorted(p.name for p in cfg.video_path.glob("*")) if cfg.video_path.exists() else [])

    def clip(self, case: str) -> str:
        return self.truth[case]["clip_id"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    runs = Runs(tmp_path_factory.mktemp("failure-paths"))
    runs.run()
    runs.run()
    removed = runs.data / "videos" / REMOVED_LIST
    removed.write_text("# the video is back\n")
    runs.run(recheck_missing=True)
    return runs


def test_first_run_records_every_failure_and_completes_the_other_clips(runs):
    entries, present, problems = runs.entries[0], runs.present[0], runs.problems[0]
    failing = {runs.clip(c) for c in runs.truth}
    for case, row in runs.truth.items():
        cid = row["clip_id"]
        assert _outcome(entries[cid]) == row["video_first_run"], (case, entries[cid])
        assert present[VIDEO][cid] == (row["video_first_run"] == "available"), case
        assert present["logmel"][cid] == (row["audio_features"] == "yes"), case
        causes = [p.cause for p in problems if p.clip_id == cid and p.stage == "audio"]
        if row["audio_problem"]:
            assert any(row["audio_problem"] in c for c in causes), (case, causes)
        else:
            assert causes == [], (case, causes)
    assert "ends before the clip's start" in entries[runs.clip("video_ends_before_start")].message
    assert "503" in entries[runs.clip("transient_503")].message
    # the undecodable downloads are deleted, not kept for a rerun to trip over again
    assert runs.videos_left[0] == []
    # the truncated clip is stored as the 3 s it holds, masked accordingly
    assert runs.durations[runs.clip("truncated_audio")] == pytest.approx(3.0)
    # every ordinary clip is complete: the failures cost nothing but themselves
    ordinary = [cid for cid in entries if cid not in failing]
    assert len(ordinary) == SYNTH.clips
    assert all(present["logmel"][cid] for cid in ordinary)
    assert all(present[VIDEO][cid] == (entries[cid].status == "available") for cid in ordinary)
    assert sum(entries[cid].status == "available" for cid in ordinary) == SYNTH.clips - 1  # one soundscape
    report = runs.reports[0]
    assert (report.audio_failed, report.videos_corrupt, report.videos_failed) == (2, 2, 2)
    assert report.video_computed[VIDEO] == sum(present[VIDEO].values())


def test_a_rerun_retries_transient_failures_and_leaves_permanent_ones(runs):
    before, after, present = runs.entries[0], runs.entries[1], runs.present[1]
    for case, row in runs.truth.items():
        cid = row["clip_id"]
        assert _outcome(after[cid]) == row["video_next_run"], (case, after[cid])
        assert present[VIDEO][cid] == (row["video_next_run"] == "available"), case
    for case in ("transient_503", "rate_limited_429"):
        cid = runs.clip(case)
        assert after[cid].attempts == 2 and present[VIDEO][cid]
    for case in ("corrupt_video", "video_ends_before_start", "removed_video"):  # not asked again
        assert after[runs.clip(case)] == before[runs.clip(case)], case
    report = runs.reports[1]
    assert report.new_clips == 0 and report.video_computed == {VIDEO: 2}
    # audio that failed is tried again (log-mel is still missing), and its problem is still recorded once
    assert report.audio_failed == 2
    for case in ("unreadable_audio", "missing_audio"):
        assert len([p for p in runs.problems[1] if p.clip_id == runs.clip(case)]) == 1, case
    assert len(runs.problems[1]) == len(runs.problems[0])


def test_recheck_missing_retries_permanent_failures(runs):
    before, after, present = runs.entries[1], runs.entries[2], runs.present[2]
    removed = runs.clip("removed_video")
    assert _outcome(after[removed]) == "available" and after[removed].attempts == 2 and present[VIDEO][removed]
    for case in ("corrupt_video", "video_ends_before_start"):
        cid = runs.clip(case)
        # tried again (the extraction records a download and then its decoding: attempts may grow by two)
        assert _outcome(after[cid]) == "missing/corrupt" and after[cid].attempts > before[cid].attempts
        assert after[cid].last_checked > before[cid].last_checked
        assert not present[VIDEO][cid]
    assert runs.reports[2].video_computed == {VIDEO: 1}
    assert runs.videos_left[2] == []
    # nothing cached was rewritten or lost along the way
    for run in (0, 1):
        assert all(present[f][cid] for f in ("logmel", VIDEO) for cid, p in runs.present[run][f].items() if p)
