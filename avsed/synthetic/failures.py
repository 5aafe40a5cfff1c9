"""Failure cases of the synthetic data set: clips that exercise every way an input can fail, with the outcome
the extraction should record for each (`SynthConfig.failure_cases` turns them on; `avsed.synthetic.dataset` places them).

Each case is one extra weak clip with a YouTube-style name. What makes it fail is in its files or in the
loopback host's script (`avsed.synthetic.video_host`): `answers.json` (answers consumed one per request, the last one
repeating, the consumption kept in `answers.state.json` so "fails once, works on the next run" holds across
server restarts) and `removed.txt` (answered with the server's `removed_status`: serve with 410 to play a
video that was taken down). `truth/failures.tsv` lists each clip's case and expected outcomes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avsed.synthetic.video_host import REMOVED_LIST

# The loopback host's script and its consumption state, as `avsed.synthetic.video_host` reads them.
ANSWERS_FILE = "answers.json"
ANSWERS_STATE_FILE = "answers.state.json"
REMOVED_STATUS = 410  # serve the set with VideoServer(..., removed_status=410) for `missing/removed`


@dataclass(frozen=True)
class FailureCase:
    """One way an input fails, and what the extraction should make of it.

    Video outcomes are ledger `status` or `status/reason`; `video_next_run` is after a plain rerun (no
    `recheck_missing`). `audio_problem` is the problem the extraction records for the clip's audio (stage
    `audio`; warnings are recorded as "warning: <text>"), empty when the audio is fine.
    """

    name: str
    description: str
    video_first_run: str
    video_next_run: str
    audio_problem: str = ""
    audio_features: bool = True  # log-mel is computed (the audio is usable, perhaps with a warning)
    # How the case is made
    audio_file: str = "ok"  # ok | unreadable | missing | truncated | short
    video_file: str = "content"  # content | corrupt (random bytes served as .mp4)
    answers: tuple[dict, ...] = ()  # the host's scripted answers for this id
    removed: bool = False  # listed in removed.txt
    clip_start: float = 0.0  # where the clip's range begins in its video
    clip_seconds: float | None = None  # the clip name's range length (default: the config's clip length)
    video_seconds: float | None = None  # the served video's length (default: to the clip's end)


TRUNCATED_HEADER_SECONDS, TRUNCATED_HELD_SECONDS = 10.0, 3.0
SHORT_NAMED_SECONDS, SHORT_HELD_SECONDS = 9.435, 1.0

FAILURE_CASES: dict[str, FailureCase] = {c.name: c for c in (
    FailureCase("corrupt_video", "random bytes served as the video (.mp4)",
                "missing/corrupt", "missing/corrupt", video_file="corrupt"),
    FailureCase("video_ends_before_start", "a 6 s video; the clip's range starts at 20 s",
                "missing/corrupt", "missing/corrupt", clip_start=20.0, video_seconds=6.0),
    FailureCase("transient_503", "the host answers 503 once, then serves the video",
                "failed", "available", answers=({"status": 503}, {"status": 200})),
    FailureCase("rate_limited_429", "the host answers 429 once, then serves the video",
                "failed/rate_limited", "available", answers=({"status": 429}, {"status": 200})),
    FailureCase("removed_video", f"listed in removed.txt (served as HTTP {REMOVED_STATUS}); the file is kept, so "
                "taking the id off the list and rerunning with recheck_missing brings it back",
                "missing/removed", "missing/removed", removed=True),
    FailureCase("unreadable_audio", "the audio file holds random bytes after a RIFF tag",
                "available", "available", audio_problem="unreadable audio file", audio_features=False,
                audio_file="unreadable"),
    FailureCase("missing_audio", "the metadata lists the clip but its audio file is absent",
                "available", "available", audio_problem="audio file not found", audio_features=False,
                audio_file="missing"),
    FailureCase("truncated_audio", f"a WAV whose header says {TRUNCATED_HEADER_SECONDS:g} s but holds "
                f"{TRUNCATED_HELD_SECONDS:g} s", "available", "available",
                audio_problem=(f"warning: truncated audio file: its header says {TRUNCATED_HEADER_SECONDS:.3f} s, "
                               f"the file holds {TRUNCATED_HELD_SECONDS:.3f} s"), audio_file="truncated"),
    FailureCase("short_audio", f"{SHORT_HELD_SECONDS:g} s of audio in a clip named 0-{SHORT_NAMED_SECONDS} s",
                "available", "available",
                audio_problem=(f"warning: audio is {SHORT_HELD_SECONDS:.3f} s but the clip name says "
                               f"{SHORT_NAMED_SECONDS:.3f} s"),
                audio_file="short", clip_seconds=SHORT_NAMED_SECONDS),
)}
ALL_FAILURE_CASES: tuple[str, ...] = tuple(FAILURE_CASES)


def unknown_cases(names) -> list[str]:
    return [n for n in names if n not in FAILURE_CASES]


# --- the broken files ---------------------------------------------------------------------------------------------

def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def random_bytes(rng: np.random.Generator, n: int) -> bytes:
    return rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()


def write_unreadable_audio(path: Path, rng: np.random.Generator) -> None:
    """A `.wav` that starts like one (RIFF) and then holds noise bytes: no decoder can read it."""
    _write_atomic(path, b"RIFF" + random_bytes(rng, 4096))


def write_corrupt_video(path: Path, rng: np.random.Generator) -> None:
    _write_atomic(path, random_bytes(rng, 40_000))


def truncate_wav(whole: bytes, keep_frames: int, block_align: int) -> bytes:
    """The WAV `whole` cut after `keep_frames` frames of its `data` chunk; the header still promises them all."""
    at = whole.find(b"data")
    if at < 0:
        raise ValueError("not a WAV file: no data chunk")
    return whole[: at + 8 + keep_frames * block_align]


def write_host_script(video_dir: Path, answers: dict[str, list[dict]], removed: list[str]) -> None:
    """The loopback host's script for this set; any earlier script, its consumption state and removed list go."""
    video_dir = Path(video_dir)
    for name in (ANSWERS_FILE, ANSWERS_STATE_FILE, REMOVED_LIST):
        (video_dir / name).unlink(missing_ok=True)
    if answers:
        _write_atomic(video_dir / ANSWERS_FILE, (json.dumps(answers, indent=1, sort_keys=True) + "\n").encode())
    if removed:
        _write_atomic(video_dir / REMOVED_LIST, ("# failure case removed_video\n" + "\n".join(removed) + "\n").encode())
