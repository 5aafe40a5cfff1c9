"""Identical frames of a clip (still images, black screens: common on YouTube) found once, so each is embedded once.

Free of torch: the decoder processes hash each clip's frames right after decoding, once for every CNN.
"""

from __future__ import annotations

import hashlib

import numpy as np


def unique_frames(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the distinct frames and, per frame, the position of its copy among them.

    A 128-bit hash per frame groups candidates; byte equality is then confirmed, so a collision can never
    merge two different frames.
    """
    first: dict[bytes, list[int]] = {}
    keep: list[int] = []
    inverse = np.empty(len(frames), dtype=np.int64)
    for i, frame in enumerate(frames):
        data = np.ascontiguousarray(frame).data
        key = hashlib.blake2b(data, digest_size=16).digest()
        for slot in first.get(key, ()):
            if np.array_equal(frames[keep[slot]], frame):
                inverse[i] = slot
                break
        else:
            first.setdefault(key, []).append(len(keep))
            inverse[i] = len(keep)
            keep.append(i)
    return np.asarray(keep, dtype=np.int64), inverse
