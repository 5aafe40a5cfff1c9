"""The error every unusable clip raises: its message names the clip and the cause.

`AudioError` and `VideoError` subclass it, so a caller that skips bad clips and carries on (extraction,
the manifest check) catches `ClipError` once, and one that cares which input failed catches the subclass.
"""

from __future__ import annotations


class ClipError(RuntimeError):
    """One clip cannot be used. `prefix` says which input failed where the subclass wants it in the message."""

    def __init__(self, clip_id: str, cause: str, prefix: str = ""):
        super().__init__(f"clip {clip_id}: {prefix}{cause}")
        self.clip_id = clip_id
        self.cause = cause
