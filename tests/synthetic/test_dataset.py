"""The synthetic DESED-shaped data set: layout, manifest, audio/label agreement, video content, availability, determinism,
and the failure cases with their expected outcomes."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf

from avsed.core.classes import DESED_CLASSES
from pipeline.audio import AudioError, load_clip_audio
from avsed.core.manifest import DESED_2020_PARTITIONS, parse_clip_name, read_manifest
from avsed.synthetic.video_host import read_removed
from avsed.synthetic.dataset import (
    CLASS_BANDS, CLASS_COLOURS, SynthConfig, SynthConfigError, make_synthetic_dataset, patch_box, plan_dataset,
)
from avsed.synthetic.failures import ALL_FAILURE_CASES, FAILURE_CASES

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
CONFIG = SynthConfig(clips=12, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = make_synthetic_dataset(out, CONFIG, progress=False)
    return out, summary


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _frame(video: Path, t: float, size: int) -> np.ndarray:
    """The picture shown at time t (decoded with output seeking, i.e. frame-exact)."""
    out = subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(video), "-ss", f"{t:.3f}", "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(size, size, 3)


def _all_frames(video: Path, size: int) -> np.ndarray:
    out = subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(video), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, size, size, 3)


def _shows(frame: np.ndarray, label: str) -> bool:
    y0, y1, x0, x1 = patch_box(label, frame.shape[0])
    inner = frame[y0 + 2:y1 - 2, x0 + 2:x1 - 2].reshape(-1, 3).astype(float)
    return bool(np.abs(inner.mean(axis=0) - CLASS_COLOURS[label]).max() < 40)


def test_layout_headers_and_manifest(dataset):
    out, summary = dataset
    headers = {"strong": ["filename", "onset", "offset", "event_label"], "weak": ["filename", "event_labels"],
               "unlabelled": ["filename"]}
    for spec in DESED_2020_PARTITIONS:
        with (out / "metadata" / spec.metadata).open() as fh:
            assert fh.readline().rstrip("\n").split("\t") == headers[spec.supervision]
        assert summary.n_clips[spec.name] >= 1
    assert sum(summary.n_clips.values()) == CONFIG.clips

    manifest = read_manifest(out / "metadata", out / "audio")
    assert manifest.problems == []
    assert len(manifest.clips) == CONFIG.clips
    truth_events = _rows(summary.events_path)
    for clip in manifest.clips:
        assert clip.audio_path.is_file()
        info = sf.info(str(clip.audio_path))
        assert info.samplerate == 44100 and info.channels == 1
        if clip.partition == "synthetic":
            assert clip.segment is None and clip.clip_id[:-4].isdigit()
            assert info.duration == pytest.approx(10.0, abs=1e-3)
        else:
            assert clip.segment is not None
            assert info.duration == pytest.approx(clip.segment.end - clip.segment.start, abs=1e-3)
        truth = {(r["onset"], r["offset"], r["event_label"]) for r in truth_events if r["clip_id"] == clip.clip_id}
        assert set(clip.weak_labels) == (set() if clip.supervision == "unlabelled" else {label for _, _, label in truth})
        if clip.supervision == "strong":
            assert {(f"{e.onset:.3f}", f"{e.offset:.3f}", e.label) for e in clip.events} == truth
    ids = [c.youtube_id for c in manifest.clips if c.youtube_id]
    assert len(set(ids)) == len(ids) and all(len(i) == 11 for i in ids)
    assert any(i.startswith("-") for i in ids) and any("_" in i for i in ids)


def test_clip_without_events_is_a_row_with_empty_fields(tmp_path):
    cfg = SynthConfig(clips=8, empty_clip_fraction=1.0, missing_fraction=0.0, still_fraction=0.0, black_fraction=0.0)
    make_synthetic_dataset(tmp_path, cfg, progress=False)
    rows = _rows(tmp_path / "metadata/eval/public.tsv")
    assert rows and all(r["onset"] == r["offset"] == r["event_label"] == "" for r in rows)
    clips = read_manifest(tmp_path / "metadata", tmp_path / "audio").clips
    assert all(not c.events and not c.weak_labels for c in clips if c.partition in ("validation", "eval", "unlabelled"))
    assert all(c.weak_labels for c in clips if c.partition == "weak")  # DESED's weak clips always have labels


def test_video_kinds_and_missing_fraction(dataset):
    out, summary = dataset
    truth = _rows(summary.truth_path)
    recorded = CONFIG.clips - summary.n_clips["synthetic"]
    assert len(truth) == recorded
    kinds = [r["kind"] for r in truth]
    assert kinds.count("absent") == summary.n_videos_missing == round(CONFIG.missing_fraction * recorded)
    assert {"content", "still", "black", "absent"} <= set(kinds)  # even 12 clips exercise every kind
    served = {p.name for p in (out / "videos").glob("*.mp4")}
    assert served == {f"{r['youtube_id']}.mp4" for r in truth if r["kind"] != "absent"}
    assert summary.n_videos_available == len(served)

    # larger sets: exact totals, and both evaluation partitions get clips with and without video
    for f in (0.155, 0.3):
        plans = plan_dataset(SynthConfig(clips=250, missing_fraction=f))
        rec = [p for p in plans if p.youtube_id]
        absent = [p for p in rec if p.video_kind == "absent"]
        assert len(absent) == round(f * len(rec))
        for part in ("validation", "eval"):
            assert any(p.partition.name == part for p in absent)
            assert any(p.partition.name == part and p.video_kind == "content" for p in rec)
        assert sum(p.video_kind == "still" for p in rec) == round(0.05 * len(rec))
        assert all(p.video_kind == "absent" and not any(p.quiet) for p in plans if p.youtube_id is None)


def _band_db(wave: np.ndarray, sr: int, lo: float, hi: float, t0: float, t1: float) -> float:
    seg = wave[int(t0 * sr):int(t1 * sr)]
    n = 2048
    frames = np.lib.stride_tricks.sliding_window_view(seg, n)[:: n // 4] * np.hanning(n)
    spec = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    f = np.fft.rfftfreq(n, 1 / sr)
    return 10 * np.log10(spec[:, (f >= lo) & (f <= hi)].sum(axis=1).mean() + 1e-20)


def test_event_times_match_audio_energy(dataset):
    out, summary = dataset
    manifest = read_manifest(out / "metadata", out / "audio").by_id()
    loud, quiet = [], []
    for r in _rows(summary.events_path):
        onset, offset = float(r["onset"]), float(r["offset"])
        if onset < 0.6 or offset - onset < 0.5:
            continue
        wave, sr = sf.read(str(manifest[r["clip_id"]].audio_path))
        lo, hi = CLASS_BANDS[r["event_label"]]
        rise = (_band_db(wave, sr, lo, hi, onset + 0.03, min(offset, onset + 0.5) - 0.03)
                - _band_db(wave, sr, lo, hi, onset - 0.55, onset - 0.08))
        (quiet if r["audible"] == "quiet" else loud).append(rise)
    assert len(loud) >= 5 and len(quiet) >= 1
    assert min(loud) > 4.0, loud  # a loud event raises its band's energy at its onset
    assert max(quiet) < 3.0, quiet  # a quiet event hides under the background noise of its band


def test_video_shows_active_classes(dataset):
    out, summary = dataset
    size = CONFIG.video_size
    events = _rows(summary.events_path)
    checked = offset_checked = 0
    for r in _rows(summary.truth_path):
        video = out / "videos" / f"{r['youtube_id']}.mp4"
        start = float(r["start"])
        if r["kind"] == "content":
            n_frames = len(_all_frames(video, size))
            assert n_frames == math.ceil(float(r["duration"]) * CONFIG.video_fps - 1e-9)
            if start > 0:
                assert float(r["duration"]) > float(r["end"])  # the served video runs past the clip
            for e in (e for e in events if e["clip_id"] == r["clip_id"]):  # quiet events are visible too
                onset, offset = float(e["onset"]), float(e["offset"])
                assert _shows(_frame(video, start + onset + 0.3, size), e["event_label"]), (r["clip_id"], e)
                if onset >= 0.3:
                    # same-class events never overlap in a clip, so just before the onset the patch is off
                    assert not _shows(_frame(video, start + onset - 0.3, size), e["event_label"]), (r["clip_id"], e)
                checked += 1
                offset_checked += start > 0
        elif r["kind"] == "still":
            frames = _all_frames(video, size).astype(int)  # one picture, up to H.264 noise
            assert np.abs(frames - frames[0]).mean() < 2 and np.abs(frames - frames[0]).max() < 24
        elif r["kind"] == "black":
            assert _all_frames(video, size).max() <= 3
        else:
            assert not video.exists()
    assert checked >= 4 and offset_checked >= 1


def test_deterministic_in_seed(tmp_path, dataset):
    out, _ = dataset
    again = make_synthetic_dataset(tmp_path / "again", CONFIG, progress=False)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.out_dir) for p in again.out_dir.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again.out_dir / rel).read_bytes(), rel
    other = plan_dataset(SynthConfig(clips=12, seed=4))
    assert [p.clip_id for p in other] != [p.clip_id for p in plan_dataset(CONFIG)]


def test_rerun_removes_stale_videos(tmp_path):
    cfg = SynthConfig(clips=5, missing_fraction=0.0, still_fraction=0.0, black_fraction=0.0)  # one per partition
    make_synthetic_dataset(tmp_path, cfg, progress=False)
    (tmp_path / "videos" / "stale_video.mp4").write_bytes(b"x")
    summary = make_synthetic_dataset(tmp_path, cfg, progress=False)
    assert not (tmp_path / "videos" / "stale_video.mp4").exists()
    assert len(list(summary.video_dir.glob("*.mp4"))) == summary.n_videos_available == 5 - summary.n_clips["synthetic"]


def test_config_errors():
    with pytest.raises(SynthConfigError, match="clips=3"):
        plan_dataset(SynthConfig(clips=3))
    with pytest.raises(SynthConfigError, match="missing_fraction"):
        plan_dataset(SynthConfig(missing_fraction=1.5))
    with pytest.raises(SynthConfigError, match="video_size"):
        plan_dataset(SynthConfig(video_size=63))


def test_class_tables_cover_desed_classes():
    assert set(CLASS_BANDS) == set(DESED_CLASSES) == set(CLASS_COLOURS)
    bands = sorted(CLASS_BANDS.values())
    assert all(a[1] < b[0] for a, b in zip(bands, bands[1:]))  # disjoint bands
    boxes = [patch_box(c, 64) for c in DESED_CLASSES]
    assert len(set(boxes)) == len(boxes)
    assert all(parse_clip_name(p.clip_id) is not None for p in plan_dataset(CONFIG) if p.youtube_id)


def test_strong_video_fraction_turns_soundscapes_into_recordings_and_zero_changes_nothing():
    base = SynthConfig(clips=60, seed=4)
    plans = plan_dataset(base)
    # The option's own random stream: fraction 0 is the data set as it was without the option.
    assert plan_dataset(SynthConfig(clips=60, seed=4, strong_video_fraction=0.0)) == plans
    assert all(p.youtube_id is None and p.video_kind == "absent" and not any(p.quiet)
               for p in plans if p.partition.name == "synthetic")

    mixed = plan_dataset(SynthConfig(clips=60, seed=4, strong_video_fraction=0.5, quiet_event_fraction=0.5))
    strong = [p for p in mixed if p.partition.name == "synthetic"]
    recorded = [p for p in strong if p.youtube_id]
    assert len(recorded) == round(0.5 * len(strong))
    for p in recorded:  # named, parsed and served like any YouTube clip
        segment = parse_clip_name(p.clip_id)
        assert segment is not None and segment.youtube_id == p.youtube_id
    assert any(p.video_kind == "content" for p in recorded)
    assert any(any(p.quiet) for p in recorded)
    assert all(p.clip_id.endswith(".wav") and not p.youtube_id for p in strong if p not in recorded)
    assert len({p.youtube_id for p in mixed if p.youtube_id}) == sum(1 for p in mixed if p.youtube_id)
    with pytest.raises(SynthConfigError, match="strong_video_fraction"):
        SynthConfig(strong_video_fraction=1.5).validate()


# --- failure cases (issue 17: the extraction's failure paths) -------------------------------------------------------

@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth-failing")
    config = SynthConfig(clips=CONFIG.clips, seed=CONFIG.seed, failure_cases=ALL_FAILURE_CASES)
    return out, make_synthetic_dataset(out, config, progress=False)


def test_failure_cases_add_clips_and_change_no_other_clip(dataset, failing):
    (out, summary), (fout, fsummary) = dataset, failing
    plain = plan_dataset(CONFIG)
    plans = plan_dataset(SynthConfig(clips=CONFIG.clips, seed=CONFIG.seed, failure_cases=ALL_FAILURE_CASES))
    assert plans[: len(plain)] == plain and [p.failure for p in plans[len(plain):]] == list(ALL_FAILURE_CASES)
    assert fsummary.n_failure_cases == len(ALL_FAILURE_CASES) and summary.n_failure_cases == 0
    assert fsummary.n_clips["weak"] == summary.n_clips["weak"] + len(ALL_FAILURE_CASES)
    # every file of the plain set is in the failing set, byte for byte; metadata lines only gain the new clips
    for path in (p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out)
        if rel.parts[0] == "metadata" or rel.parts[0] == "truth":
            assert set(path.read_text().splitlines()) <= set((fout / rel).read_text().splitlines()), rel
        else:
            assert (fout / rel).read_bytes() == path.read_bytes(), rel
    assert summary.failures_path is None and not (out / "truth/failures.tsv").exists()
    assert not (out / "videos/answers.json").exists() and not (out / "videos/removed.txt").exists()


def test_failure_case_files_do_what_the_truth_says(failing):
    out, summary = failing
    truth = {r["case"]: r for r in _rows(summary.failures_path)}
    assert list(truth) == list(ALL_FAILURE_CASES)
    manifest = read_manifest(out / "metadata", out / "audio")
    assert manifest.problems == []
    clips = manifest.by_id()
    for name, row in truth.items():
        case = FAILURE_CASES[name]
        clip = clips[row["clip_id"]]
        assert clip.partition == "weak" and clip.weak_labels and clip.youtube_id == row["youtube_id"]
        assert (row["video_first_run"], row["video_next_run"], row["audio_problem"]) == (
            case.video_first_run, case.video_next_run, case.audio_problem)
        # the audio problem the truth promises is what the audio reader says about the file
        if case.audio_file in ("unreadable", "missing"):
            with pytest.raises(AudioError, match=case.audio_problem):
                load_clip_audio(clip.audio_path, clip.clip_id)
            assert row["audio_features"] == "no"
        else:
            warnings = load_clip_audio(clip.audio_path, clip.clip_id).warnings
            assert (["warning: " + w for w in warnings][:1] == [case.audio_problem] if case.audio_problem
                    else warnings == []), (name, warnings)
            assert row["audio_features"] == "yes"
    video = {name: out / "videos" / f"{truth[name]['youtube_id']}.mp4" for name in truth}
    assert not video["corrupt_video"].read_bytes().startswith(b"\x00\x00\x00") and len(video["corrupt_video"].read_bytes()) == 40000
    with pytest.raises(subprocess.CalledProcessError):
        _all_frames(video["corrupt_video"], CONFIG.video_size)
    ends = clips[truth["video_ends_before_start"]["clip_id"]].segment
    assert ends.start == 20.0 and len(_all_frames(video["video_ends_before_start"], CONFIG.video_size)) == round(6.0 * CONFIG.video_fps)
    assert len(_all_frames(video["transient_503"], CONFIG.video_size)) == round(10.0 * CONFIG.video_fps)
    answers = json.loads((out / "videos/answers.json").read_text())
    assert answers == {truth["transient_503"]["youtube_id"]: [{"status": 503}, {"status": 200}],
                       truth["rate_limited_429"]["youtube_id"]: [{"status": 429}, {"status": 200}]}
    assert read_removed(out / "videos") == {truth["removed_video"]["youtube_id"]} and video["removed_video"].is_file()


def test_a_set_made_again_without_failure_cases_drops_the_host_script(tmp_path):
    cfg = SynthConfig(clips=5, seed=1, missing_fraction=0.0, still_fraction=0.0, black_fraction=0.0)
    failing_cfg = SynthConfig(**{**cfg.__dict__, "failure_cases": ("transient_503", "removed_video")})
    make_synthetic_dataset(tmp_path, failing_cfg, progress=False)
    (tmp_path / "videos/answers.state.json").write_text('{"x": 1}')  # a host's consumption of the old script
    summary = make_synthetic_dataset(tmp_path, cfg, progress=False)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == sorted(
        f"{p.youtube_id}.mp4" for p in plan_dataset(cfg) if p.youtube_id)
    assert summary.failures_path is None and not (tmp_path / "truth/failures.tsv").exists()
    # and made again with them, the script starts over (no consumption state carried over)
    make_synthetic_dataset(tmp_path, failing_cfg, progress=False)
    (tmp_path / "videos/answers.state.json").write_text('{"x": 1}')
    make_synthetic_dataset(tmp_path, failing_cfg, progress=False)
    assert not (tmp_path / "videos/answers.state.json").exists() and (tmp_path / "videos/answers.json").exists()


def test_failure_case_names_are_checked():
    with pytest.raises(SynthConfigError, match="failure_cases"):
        SynthConfig(failure_cases=("corrupt_video", "exploding_video")).validate()
    with pytest.raises(SynthConfigError, match="failure_cases"):
        SynthConfig(failure_cases="corrupt_video").validate()
    with pytest.raises(SynthConfigError, match="named twice"):
        SynthConfig(failure_cases=("corrupt_video", "corrupt_video")).validate()
