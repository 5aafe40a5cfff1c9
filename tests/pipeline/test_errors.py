"""Every unusable clip raises a ClipError naming the clip and the cause; audio and video say which input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from pipeline.audio import AudioError, load_clip_audio
from avsed.core.errors import ClipError
from pipeline.frames import VideoError


def test_audio_and_video_errors_are_clip_errors_with_clip_and_cause():
    audio, video = AudioError("Y1.wav", "silent"), VideoError("Y2.wav", "corrupt: moov atom not found")
    for exc, clip in ((audio, "Y1.wav"), (video, "Y2.wav")):
        assert isinstance(exc, ClipError) and exc.clip_id == clip
    assert str(audio) == "clip Y1.wav: silent"
    assert str(video) == "clip Y2.wav: video unusable: corrupt: moov atom not found"
    assert video.reason == "corrupt"


def test_a_caller_can_catch_any_bad_clip_as_clip_error(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(ClipError, match="clip Yempty.wav: audio file has no samples"):
        load_clip_audio(path, "Yempty.wav")
