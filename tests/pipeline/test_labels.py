"""Clip timing and the label encoder (the one place of time <-> frame arithmetic)."""

import numpy as np
import pytest

from avsed.core.classes import UnknownClassError
from avsed.core.labels import ClipTiming, Event, LabelEncoder


def test_paper_numbers():
    t = ClipTiming()
    assert t.mel_frames == 512 and t.output_frames == 64
    assert t.output_frame_seconds == pytest.approx(0.1565)
    assert t.video_fps == pytest.approx(6.4)
    times = t.video_frame_times()
    assert times.shape == (64,) and times[0] == pytest.approx(10 / 128) and times[-1] == pytest.approx(10 - 10 / 128)
    assert t.valid_video_frames(10.0) == 64 and t.valid_video_frames(5.0) == 32
    assert t.valid_mel_frames(10.0) == 512 and t.valid_mel_frames(5.0) == 1 + 80000 // 313


def test_encode_strong_marks_overlapping_frames():
    enc = LabelEncoder()
    y = enc.encode_strong([Event(1.0, 2.5, "Cat"), Event(9.9, 10.0, "Dog")])
    cat = np.flatnonzero(y[:, 2])
    # 1.0 s falls in frame floor(1.0/0.1565)=6; 2.5 s ends inside frame 15 (2.3475..2.504)
    assert cat[0] == 6 and cat[-1] == 15 and len(cat) == 10
    assert np.flatnonzero(y[:, 4]).tolist() == [63]
    assert y.sum() == 11


def test_decode_inverts_encode_on_frame_boundaries():
    enc = LabelEncoder()
    t = enc.timing
    events = [Event(t.frame_to_time(3).item(), t.frame_to_time(10).item(), "Speech"),
              Event(t.frame_to_time(0).item(), t.frame_to_time(2).item(), "Blender")]
    decoded = enc.decode_strong(enc.encode_strong(events))
    assert [(round(e.onset, 6), round(e.offset, 6), e.label) for e in decoded] == \
        sorted([(round(e.onset, 6), round(e.offset, 6), e.label) for e in events])
    # an event running to the last frame ends at the clip end, not past it
    full = enc.decode_strong(np.ones((64, 10)))
    assert all(e.offset == 10.0 for e in full)


def test_weak_and_unknown_class():
    enc = LabelEncoder()
    assert enc.encode_weak(["Dog", "Cat"]).tolist() == [0, 0, 1, 0, 1, 0, 0, 0, 0, 0]
    with pytest.raises(UnknownClassError, match="Unicorn"):
        enc.encode_weak(["Unicorn"])
