"""`avsed detect` with a model trained on a small synthetic set (tests/detection/trained.py, once per session):
long recordings made of eval clips with known events are found about as well as the same clips one by one; the
video track changes the output only where there is video; odd formats give a result or one clear line; a run
never evaluated, visual weights that are not available and YouTube ids (loopback host) each behave as documented.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sed_eval
import torch

from avsed.cli import main
from detection.detect import detect_recording
from detection.detector import load_detector
from avsed.core.labels import Event
from avsed.demo import eval_plans, render_pieces
from tests.detection.trained import write_recording
from tests.flows.conftest import prefect_home, prefect_home_template  # noqa: F401 - the session fixture, shared

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def read_tsv(path: Path) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for line in path.read_text().splitlines()[1:]:
        name, onset, offset, label = line.split("\t")
        out.setdefault(name, []).append(Event(float(onset), float(offset), label))
    return out


def event_f1(truth: dict[str, list[Event]], found: dict[str, list[Event]], classes) -> tuple[float, float]:
    """Event-based F1 with DESED's collars (onset 200 ms, offset 20% of the length), by sed_eval: the macro
    average over classes (DESED's) and the micro one over all events (steadier on a few dozen events)."""
    metric = sed_eval.sound_event.EventBasedMetrics(event_label_list=list(classes), t_collar=0.2,
                                                    percentage_of_length=0.2)

    def rows(name, events):
        return [{"filename": name, "onset": e.onset, "offset": e.offset, "event_label": e.label} for e in events]

    for name, events in truth.items():
        metric.evaluate(rows(name, events), rows(name, found.get(name, [])))
    return (float(metric.results_class_wise_average_metrics()["f_measure"]["f_measure"]),
            float(metric.results_overall_metrics()["f_measure"]["f_measure"]))


def whole_eval_plans(synth, n: int) -> list:
    """The first `n` eval clips that are 10 s long (the set has shorter ones, as DESED does): the recordings
    below are 3 whole clips and 7 s of a fourth, 37 s."""
    plans = [p for p in eval_plans(synth, 10 ** 6) if p.duration == synth.clip_seconds][:n]
    assert len(plans) == n
    return plans


def run_cli(*args) -> int:
    return main(["detect", "--no-progress", *[str(a) for a in args]])


# Long recordings of four clips each. Eight, not two: on 8 clips the long recordings' F1 minus the clips' ranged
# from -0.33 to +0.25 over the models of four seeds (64 px), on 32 clips from -0.08 to +0.04 (micro; macro -0.09 to
# +0.05; at 32 px +0.02 to +0.04).
LONG_RECORDINGS = 8


@pytest.fixture(scope="module")
def recordings(trained, tmp_path_factory):
    """37-s recordings of four eval clips each (the last cut to 7 s) with a video track (mkv, PCM sound), the first
    two also as WAV; and the same clips one file each, with their video."""
    root = tmp_path_factory.mktemp("recordings")
    plans = whole_eval_plans(trained.synth, 4 * LONG_RECORDINGS)
    truth_long, truth_clips, files = {}, {}, {"long_video": [], "long_audio": [], "clips": []}
    rate, fps = trained.synth.sample_rate, trained.synth.video_fps
    for k in range(LONG_RECORDINGS):
        audio, frames, pieces = render_pieces(trained.synth, plans[4 * k: 4 * k + 4], last_seconds=7.0)
        files["long_video"].append(write_recording(root / f"long{k}.mkv", np.concatenate(audio), rate,
                                                   np.concatenate(frames), fps))
        if k < 2:
            files["long_audio"].append(write_recording(root / f"long{k}.wav", np.concatenate(audio), rate))
        truth_long[f"long{k}.mkv"] = [e for p in pieces for e in p.events]
        for j, (a, v, p) in enumerate(zip(audio, frames, pieces)):
            name = f"clip{k}{j}.mkv"
            files["clips"].append(write_recording(root / name, a, rate, v, fps))
            truth_clips[name] = [Event(e.onset - p.offset, e.offset - p.offset, e.label) for e in p.events]
    return root, files, truth_long, truth_clips


def test_long_recordings_are_found_as_well_as_their_clips_one_by_one(trained, recordings, tmp_path, capsys):
    root, files, truth_long, truth_clips = recordings
    out = tmp_path / "out"
    assert run_cli("--model", trained.run, "--out", out, *files["long_video"], *files["clips"]) == 0
    printed = capsys.readouterr().out
    assert "long0.mkv: 37.0 s, 7 window(s) (7 with video)" in printed
    found = read_tsv(out / "detections.tsv")
    classes = json.loads((trained.run / "evaluation/result.json").read_text())["classes"]
    (long_macro, long_f1), (clips_macro, clips_f1) = event_f1(truth_long, found, classes), event_f1(truth_clips, found, classes)
    store_f1 = json.loads((trained.run / "evaluation/result.json").read_text())["sets"]["all"]["metrics"]["ebf1"]
    print(f"event F1 micro / macro: long recordings {long_f1:.3f} / {long_macro:.3f}, the same clips one by one "
          f"{clips_f1:.3f} / {clips_macro:.3f}; the run's eval partition (store, macro) {store_f1:.3f}")
    # Measured 2026-12-07 (micro, long vs clips), models of seeds 0, 1, 3, 4 at 32 px: 0.50 vs 0.49, 0.44 vs 0.40,
    # 0.25 vs 0.22, 0.46 vs 0.42 (at 64 px: 0.46 vs 0.53, 0.40 vs 0.35, 0.35 vs 0.34, 0.45 vs 0.51). Broken
    # detectors with seed 0's model: windows put back in reverse order 0.06, features not standardised 0.06,
    # untrained weights 0.0.
    assert long_f1 > 0.15  # it finds the events
    assert long_f1 >= clips_f1 - 0.12  # and about as well as in the clips one by one
    for name in ("long0", "long1"):
        doc = json.loads((out / f"{name}.json").read_text())
        assert len(doc["windows"]) == 7 and all(w["video"] for w in doc["windows"])
        assert max(e["offset"] for e in doc["events"]) <= 37.0
        assert (out / f"{name}.png").stat().st_size > 10000


def test_the_video_track_changes_the_output_only_where_there_is_video(trained, recordings, tmp_path):
    root, files, truth_long, _ = recordings
    det = load_detector(trained.run)
    audio, frames, _ = render_pieces(trained.synth, whole_eval_plans(trained.synth, 4), last_seconds=7.0)
    # the picture of the first two clips only (20 s of 37)
    part = write_recording(tmp_path / "part.mkv", np.concatenate(audio), trained.synth.sample_rate,
                           np.concatenate(frames[:2]), trained.synth.video_fps)
    torch.set_num_threads(1)
    with_video = detect_recording(det, part, "part.mkv")
    without = detect_recording(det, files["long_audio"][0], "long0.wav")
    grid = with_video.grid
    starts = grid.start_seconds()
    assert with_video.window_video.tolist() == (starts < 20.0).tolist() and not without.window_video.any()
    audio_weight = det.postprocessing["audio_weight"]
    for has, w in zip(with_video.window_video, with_video.window_weights):
        assert w[0] == pytest.approx(audio_weight if has else 1.0)
    last_video = int(np.flatnonzero(with_video.window_video)[-1])
    touched = np.arange(grid.n_frames) < grid.starts[last_video] + grid.window_frames
    np.testing.assert_array_equal(with_video.frame_probs[~touched], without.frame_probs[~touched])
    assert np.abs(with_video.frame_probs[touched] - without.frame_probs[touched]).max() > 1e-3
    end = grid.starts[last_video] + grid.window_frames
    tail = [e for e in with_video.events if e.onset >= end * grid.frame_seconds]
    assert tail == [e for e in without.events if e.onset >= end * grid.frame_seconds]


def _ffmpeg(*args) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *map(str, args)], check=True)


def test_odd_formats_give_a_result_or_one_clear_line(trained, recordings, tmp_path, capsys):
    root, files, _, _ = recordings
    src = files["long_audio"][0]
    d = tmp_path / "in"
    d.mkdir()
    _ffmpeg("-i", src, "-ar", 8000, "-ac", 2, "-c:a", "pcm_s24le", d / "stereo8k24.wav")
    _ffmpeg("-i", src, "-c:a", "libmp3lame", "-b:a", "96k", d / "song.mp3")
    _ffmpeg("-i", files["clips"][0], "-c:v", "libvpx-vp9", "-deadline", "realtime", "-b:v", "200k", "-c:a", "libopus",
            d / "clip.webm")
    _ffmpeg("-i", files["clips"][1], "-an", "-c:v", "libx264", "-preset", "ultrafast", d / "silent.mp4")
    _ffmpeg("-i", src, "-t", 3, d / "three.wav")
    (d / "empty.flac").write_bytes(b"")
    out = tmp_path / "out"
    assert run_cli("--model", trained.run, "--out", out, d) == 0
    lines = capsys.readouterr().out.splitlines()
    by_file = {name: [ln for ln in lines if name in ln] for name in
               ("stereo8k24.wav", "song.mp3", "clip.webm", "silent.mp4", "three.wav", "empty.flac")}
    assert all(len(v) == 1 for v in by_file.values()), by_file
    assert by_file["stereo8k24.wav"][0].startswith("stereo8k24.wav: 37.0 s, 7 window(s) (0 with video)")
    assert by_file["song.mp3"][0].startswith("song.mp3: 37.")
    assert by_file["clip.webm"][0].startswith("clip.webm: 10.0 s, 1 window(s) (1 with video)")
    assert by_file["three.wav"][0].startswith("three.wav: 3.0 s, 1 window(s)")
    assert "picture but no sound" in by_file["silent.mp4"][0] and by_file["silent.mp4"][0].startswith("skipped:")
    assert "the file is empty" in by_file["empty.flac"][0]
    assert "4 recording(s) processed, 2 skipped" in lines[-1]
    found = read_tsv(out / "detections.tsv")
    assert set(found) <= {"stereo8k24.wav", "song.mp3", "clip.webm", "three.wav"} and found
    assert all(e.offset <= 3.0 for e in found.get("three.wav", []))
    assert sorted(p.name for p in out.glob("*.json")) == ["clip.json", "song.json", "stereo8k24.json", "three.json"]


def test_a_run_never_evaluated_and_unavailable_visual_weights(trained, recordings, tmp_path, capsys):
    _, files, _, _ = recordings
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(trained.run / "checkpoint.pt", bare / "checkpoint.pt")
    assert run_cli("--model", bare, "--out", tmp_path / "o1", files["clips"][0]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never evaluated" in err[0] and "avsed evaluate" in err[0] and "--threshold" in err[0]
    assert run_cli("--model", bare, "--out", tmp_path / "o2", "--threshold", "0.5", files["clips"][0]) == 0
    assert (tmp_path / "o2/clip00.json").is_file()
    # the OpenL3 weights the store recorded are a file this machine does not have
    other = tmp_path / "other"
    shutil.copytree(trained.run, other)
    ckpt = torch.load(other / "checkpoint.pt", weights_only=False)
    ckpt["provenance"]["openl3"]["weights"] = "sha256:" + "0" * 64
    torch.save(ckpt, other / "checkpoint.pt")
    capsys.readouterr()
    assert run_cli("--model", other, "--out", tmp_path / "o3", files["clips"][0]) == 0
    printed = capsys.readouterr().out.splitlines()
    notes = [ln for ln in printed if ln.startswith("note:")]
    assert len(notes) == 1 and "openl3_image_mel256_env.h5" in notes[0] and "audio-only path" in notes[0]
    doc = json.loads((tmp_path / "o3/clip00.json").read_text())
    assert not any(w["video"] for w in doc["windows"]) and all(w["weights"]["logmel"] == 1 for w in doc["windows"])


def test_youtube_ids_through_the_download_session(trained, recordings, tmp_path, capsys):
    from avsed.synthetic.video_host import VideoServer

    _, files, _, _ = recordings
    served = tmp_path / "served"
    served.mkdir()
    _ffmpeg("-i", files["clips"][2], "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", served / "abcdefghijk.mp4")
    with VideoServer(served) as server:
        code = run_cli("--model", trained.run, "--out", tmp_path / "out", "--url-template", server.url_template,
                       "abcdefghijk", "https://www.youtube.com/watch?v=zzzzzzzzzzz")
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.startswith("abcdefghijk: 10.0 s, 1 window(s) (1 with video)") for ln in lines)
    missing = [ln for ln in lines if "zzzzzzzzzzz" in ln]
    assert len(missing) == 1 and "not downloaded (not_found" in missing[0]
    assert (tmp_path / "out/downloads").is_dir() and (tmp_path / "out/abcdefghijk.png").is_file()


FLOW = """
import json, sys
from flows import in_process_defaults
in_process_defaults()
from flows.detect import detect_flow
print("RESULT " + json.dumps(detect_flow(**json.loads(sys.argv[1]))))
"""


def test_the_prefect_flow_detect(trained, recordings, prefect_home_template, tmp_path):  # noqa: F811
    _, files, _, _ = recordings
    home = prefect_home(prefect_home_template, tmp_path / "prefect")  # migrated already: half a start saved
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    args = {"model": str(trained.run), "inputs": [str(files["long_audio"][1]), str(tmp_path / "absent.wav")],
            "out_dir": str(tmp_path / "out"), "hop": 2.5, "plots": False}
    proc = subprocess.run([sys.executable, "-c", FLOW, json.dumps(args)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["exit_code"] == 0 and len(result["recordings"]) == 1 and len(result["failures"]) == 1
    assert "long1.wav: 37.0 s, 12 window(s)" in result["recordings"][0]  # hop 2.5 s
    assert (tmp_path / "out/detections.tsv").is_file() and not list((tmp_path / "out").glob("*.png"))


def test_a_clip_detected_from_its_files_is_the_clip_predicted_from_the_store(trained, tmp_path):
    """Conversion as training expects: an eval clip's WAV and served video, muxed into one file and run through
    detect, give the frame probabilities the store's features give (training.predict), up to the embeddings'
    float16 rounding."""
    import csv

    from training.predict import predict

    det = load_detector(trained.run)
    store = predict(trained.run, trained.store, ["eval"], audio_weight=det.postprocessing["audio_weight"], device="cpu")
    with open(trained.data / "truth/videos.tsv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["partition"] == "eval" and r["kind"] == "content"
                and float(r["start"]) == 0.0 and float(r["end"]) == 10.0]
    row = rows[0]
    wav = next((trained.data / "audio").rglob(row["clip_id"]))
    both = tmp_path / "clip.mkv"
    _ffmpeg("-i", trained.data / "videos" / f"{row['youtube_id']}.mp4", "-i", wav, "-map", "0:v", "-map", "1:a",
            "-c:v", "copy", "-c:a", "pcm_s16le", both)
    torch.set_num_threads(1)
    rec = detect_recording(det, both, both.name)
    i = list(store.clip_ids).index(row["clip_id"])
    assert rec.window_video.tolist() == [True] and rec.frame_probs.shape == store.frame_probs[i].shape
    np.testing.assert_allclose(rec.window_weights[0], store.weights[i], rtol=1e-6)
    assert np.abs(rec.frame_probs - store.frame_probs[i]).max() < 0.03  # measured 0.003 and 0.009 on two clips
