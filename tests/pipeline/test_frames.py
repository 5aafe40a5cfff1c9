"""Frame decoding: which picture lands at which index, padding of short videos, still images, black
screens, resizing, and undecodable files -> VideoError."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.frames import VideoError, decode_frames, parse_duration
from avsed.core.labels import ClipTiming
from tests.pipeline import videos

TIMING = ClipTiming()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    still, image = videos.still_image_video(d / "still.mp4", seconds=10, fps=1.0)
    return {
        "tc15": videos.time_coded_video(d / "tc15.mp4", 15),
        "tc6": videos.time_coded_video(d / "tc6.mp4", 6),
        "still": still, "image": image,
        "black": videos.black_video(d / "black.mp4", 10),
        "testsrc": videos.testsrc_video(d / "testsrc.mp4", 3, size="320x240"),
        "random": videos.corrupt_file(d / "random.mp4"),
        "truncated": videos.truncated_video(d / "truncated.mp4"),
        "audio": videos.audio_only_file(d / "audio.mp4"),
        "empty": _empty(d / "empty.mp4"),
    }


def _empty(path):
    path.write_bytes(b"")
    return path


def _seconds_shown(frames: np.ndarray, seconds: int) -> list[int]:
    return [videos.nearest_second(f, seconds) for f in frames]


def test_frame_k_shows_the_picture_at_the_centre_of_slice_k(made):
    clip = decode_frames(made["tc15"], "Ytc15", TIMING)
    assert clip.frames.shape == (64, 224, 224, 3) and clip.frames.dtype == np.uint8
    assert clip.valid.all() and clip.duration == pytest.approx(10.0)
    expected = np.floor(TIMING.video_frame_times()).astype(int).tolist()  # 0.078, 0.234, ... -> second shown
    assert _seconds_shown(clip.frames, 15) == expected
    # the colour is flat and right, not just nearest: within h264/yuv rounding
    for k in (0, 6, 31, 63):
        err = np.abs(clip.frames[k].astype(int) - videos.second_colour(expected[k]).astype(int)).max()
        assert err < 20


def test_start_offset_inside_a_whole_video(made):
    clip = decode_frames(made["tc15"], "Ytc15", TIMING, start=5.0)
    assert clip.valid.all() and clip.duration == pytest.approx(10.0)
    assert _seconds_shown(clip.frames, 15) == (5 + np.floor(TIMING.video_frame_times())).astype(int).tolist()


def test_short_video_is_padded_and_masked(made):
    clip = decode_frames(made["tc6"], "Ytc6", TIMING)
    n_valid = TIMING.valid_video_frames(6.0)
    assert n_valid == 38  # centres 0.078 ... 5.86 s lie inside 6 s
    assert clip.duration == pytest.approx(6.0, abs=0.05)
    assert clip.valid.tolist() == [True] * n_valid + [False] * (64 - n_valid)
    assert _seconds_shown(clip.frames[:n_valid], 6) == np.floor(TIMING.video_frame_times()[:n_valid]).astype(int).tolist()
    assert not clip.frames[n_valid:].any()  # padding is zeros


def test_still_image_decodes_to_64_valid_equal_frames(made):
    clip = decode_frames(made["still"], "Ystill", TIMING, size=80)
    assert clip.valid.all() and clip.duration == pytest.approx(10.0)
    # the same picture in every frame (1 fps source repeated by the fps filter), and it is the picture
    assert np.abs(clip.frames.astype(int) - clip.frames[0].astype(int)).max() <= 2
    image = made["image"]  # 60 x 80 random blocks, scaled to 80 x 80: compare block centres
    for by in range(image.shape[0] // 20):
        for bx in range(image.shape[1] // 20):
            y, x = int((by * 20 + 10) * 80 / 60), bx * 20 + 10
            assert np.abs(clip.frames[0, y, x].astype(int) - image[by * 20 + 10, x].astype(int)).max() < 30


def test_black_screen_is_a_valid_video(made):
    clip = decode_frames(made["black"], "Yblack", TIMING)
    assert clip.valid.all() and clip.frames.max() < 20


def test_plain_scale_to_requested_size(made):
    clip = decode_frames(made["testsrc"], "Ysrc", TIMING, size=96)
    assert clip.frames.shape == (64, 96, 96, 3)
    n_valid = TIMING.valid_video_frames(3.0)
    assert clip.valid.sum() == n_valid and clip.frames[:n_valid].std() > 30 and not clip.frames[n_valid:].any()


@pytest.mark.parametrize("name,detail", [("random", ""), ("truncated", ""), ("audio", "no video stream"),
                                         ("empty", ""), ("nonexistent", "no video file")])
def test_undecodable_files_raise_video_error(made, tmp_path, name, detail):
    path = made.get(name, tmp_path / "nonexistent.mp4")
    with pytest.raises(VideoError) as info:
        decode_frames(path, f"Y{name}_0_10.wav", TIMING)
    err = info.value
    assert err.clip_id == f"Y{name}_0_10.wav" and err.cause.startswith("corrupt: ") and err.reason == "corrupt"
    assert f"Y{name}_0_10.wav" in str(err) and err.cause in str(err) and detail in err.cause


def test_parse_duration():
    assert parse_duration(b"  Duration: 00:01:06.50, start: 0.000000, bitrate: 5 kb/s") == pytest.approx(66.5)
    assert parse_duration(b"  Duration: N/A, bitrate: N/A") is None


# --- a video that ends before the clip's start (issue 13 item 9) ---------------------------------------------------

@pytest.mark.parametrize("start", [8.0, 6.0])
def test_a_whole_video_ending_before_the_clip_start_says_so(made, start):
    clip_id = f"Ytc6tc6tc6tc_{start:.3f}_{start + 10:.3f}.wav"
    with pytest.raises(VideoError) as info:
        decode_frames(made["tc6"], clip_id, TIMING, start=start)
    assert info.value.cause == f"corrupt: video ends at 6.000 s, before the clip's start at {start:.3f} s"
    assert info.value.reason == "corrupt"
    # starting inside the video is a short clip, not an error
    assert decode_frames(made["tc6"], clip_id, TIMING, start=5.0).valid.sum() == TIMING.valid_video_frames(1.0)


def test_a_partial_download_past_the_video_end_says_so_not_no_video_stream(made, tmp_path):
    from pipeline.download import DownloadConfig, download_clip
    from avsed.core.manifest import parse_clip_name
    from avsed.synthetic.video_host import VideoServer

    served = tmp_path / "served"
    served.mkdir()
    (served / "tc6tc6tc6tc.mp4").write_bytes(made["tc6"].read_bytes())
    clip_id = "Ytc6tc6tc6tc_8.000_18.000.wav"
    with VideoServer(served) as server:  # yt-dlp cuts [8 s, 18 s] of a 6 s video through ffmpeg, as for YouTube
        result = download_clip(clip_id, parse_clip_name(clip_id), tmp_path / "out",
                               DownloadConfig(url_template=server.url_template))
    assert result.status == "available"
    with pytest.raises(VideoError) as info:
        decode_frames(result.path, clip_id, TIMING, start=result.clip_start)
    # the cut (clip_start 0) holds no stream; were the whole video fetched instead, its duration is known
    assert info.value.cause == ("corrupt: video ends before the clip's start at 8.000 s (what was downloaded of "
                                "its range holds no stream)" if result.clip_start == 0.0 else
                                "corrupt: video ends at 6.000 s, before the clip's start at 8.000 s")
