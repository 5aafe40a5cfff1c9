"""detect_recording with a hand-built detector (untrained tiny model): window availability and weights, the
audio-only path past a video's end, TSV / JSON / PNG shapes, and one line per bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detection.detect import detect_recording
from detection.media import InputError, collect_sources
from detection.outputs import plot_timeline, write_recording_json, write_tsv
from tests.detection.toy import moving_frames, noise, toy_detector
from tests.detection.trained import write_recording


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    audio = noise(24.0)
    return {"wav": write_recording(root / "rec.wav", audio, 16000),
            # the same sound, with a picture for its first 8 s only (PCM sound: the samples of the WAV)
            "mkv": write_recording(root / "rec.mkv", audio, 16000, moving_frames(8.0)),
            "short": write_recording(root / "short.wav", noise(3.0, seed=2), 16000),
            "empty": _write(root / "empty.wav", b""), "junk": _write(root / "junk.mp4", b"not a video at all" * 50),
            "root": root}


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_windows_past_the_videos_end_take_the_audio_only_path(media, tmp_path):
    det = toy_detector(tmp_path, video=True)
    with_video = detect_recording(det, media["mkv"], "rec.mkv")
    without = detect_recording(det, media["wav"], "rec.wav")
    grid = with_video.grid
    assert grid.n_windows == without.grid.n_windows == 4  # 24 s: starts 0, 5, 10, 15 s
    # windows starting before 8 s see the picture; later ones have none: availability 0, audio weight 1
    assert with_video.window_video.tolist() == [True, True, False, False]
    np.testing.assert_allclose(with_video.window_weights, [[0.75, 0.25], [0.75, 0.25], [1, 0], [1, 0]])
    assert not without.window_video.any() and (without.window_weights[:, 0] == 1).all()
    assert with_video.video_seconds == pytest.approx(8.0, abs=0.2) and without.video_seconds == 0.0
    # frames covered only by audio-only windows are the audio-only run's exactly; the others differ
    covered_by_video = np.arange(grid.n_frames) < grid.starts[1] + grid.window_frames
    np.testing.assert_array_equal(with_video.frame_probs[~covered_by_video], without.frame_probs[~covered_by_video])
    assert np.abs(with_video.frame_probs[covered_by_video] - without.frame_probs[covered_by_video]).max() > 1e-4


def test_a_learned_gate_reports_its_weight_per_window(media, tmp_path):
    det = toy_detector(tmp_path, video=True, gate="clip")
    torch_gen = __import__("torch").Generator().manual_seed(3)
    w = det.model.gate.logits.weight
    w.data = __import__("torch").randn(w.shape, generator=torch_gen)
    rec = detect_recording(det, media["mkv"], "rec.mkv")
    weights = rec.window_weights
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
    assert (weights[2:] == [1.0, 0.0]).all()  # no video: exactly the audio-only path
    assert 0 < weights[0, 1] < 1 and weights[0, 1] != pytest.approx(0.5)  # chosen by the gate, not the prior


def test_tsv_json_and_png_of_a_short_recording(media, tmp_path):
    det = toy_detector(tmp_path)
    det.thresholds[:] = 0.0  # every class everywhere: events must end at the recording's end
    rec = detect_recording(det, media["short"], "short.wav")
    assert rec.grid.n_windows == 1 and rec.frame_probs.shape == (20, 10) and rec.duration == pytest.approx(3.0)
    assert len(rec.events) == 10 and all(e.onset == 0.0 and e.offset == pytest.approx(3.0) for e in rec.events)
    tsv = write_tsv([rec], tmp_path / "d.tsv").read_text().splitlines()
    assert tsv[0] == "filename\tonset\toffset\tevent_label" and len(tsv) == 11
    name, onset, offset, label = tsv[1].split("\t")
    assert name == "short.wav" and float(onset) == 0.0 and float(offset) == 3.0 and label in det.classes
    doc = json.loads(write_recording_json(rec, det, tmp_path / "d.json").read_text())
    assert doc["filename"] == "short.wav" and doc["duration"] == 3.0 and len(doc["events"]) == 10
    assert doc["windows"] == [{"start": 0.0, "end": 10.0, "video": False, "weights": {"logmel": 1.0}}]
    assert set(doc["events"][0]) == {"onset", "offset", "event_label"}
    assert plot_timeline(rec, det, tmp_path / "d.png").stat().st_size > 5000


def test_bad_inputs_are_one_line_each(media, tmp_path):
    det = toy_detector(tmp_path)
    for key, pattern in (("empty", "the file is empty"), ("junk", "not a readable audio or video file")):
        with pytest.raises(InputError, match=pattern) as info:
            detect_recording(det, media[key], key)
        assert "\n" not in str(info.value) and str(media[key]) in str(info.value)
    silent_video = write_recording(tmp_path / "picture_only.mp4", None, 16000, moving_frames(2.0))
    with pytest.raises(InputError, match="picture but no sound.*give the recording with its sound"):
        detect_recording(det, silent_video, "picture_only.mp4")
    sources, problems = collect_sources([str(media["root"]), str(tmp_path / "nothing.wav"), "dQw4w9WgXcQ",
                                         "https://www.youtube.com/watch?v=abcdefghijk&t=3"])
    assert [s.youtube_id for s in sources if s.youtube_id] == ["dQw4w9WgXcQ", "abcdefghijk"]
    assert {s.name for s in sources if s.path} >= {"rec.wav", "rec.mkv", "short.wav"}
    assert problems == [f"{tmp_path / 'nothing.wav'}: no such file or folder, and not a YouTube URL or id"]
