"""The project's two kinds of expected error.

`AvsedError`: a refusal the user can act on (bad metadata, a missing weights file, a store made with other
settings, a store another run is writing, an unknown config key). Its message is one line: what, which file
or clip, and what to do. The `avsed` command prints that line and exits non-zero (the traceback only with
`--debug`), and Prefect tasks do not retry it: a retry cannot succeed. Anything else is a bug and keeps its
traceback.

`ClipError`: one clip cannot be used (its audio or video); extraction records it with the clip and goes on.
`AudioError` and `VideoError` subclass it, so a caller that skips bad clips and carries on catches `ClipError`
once, and one that cares which input failed catches the subclass.
"""

from __future__ import annotations


class AvsedError(Exception):
    """An expected, user-fixable refusal: the message names what, where (file or clip) and what to do."""


class ClipError(RuntimeError):
    """One clip cannot be used. `prefix` says which input failed where the subclass wants it in the message."""

    def __init__(self, clip_id: str, cause: str, prefix: str = ""):
        super().__init__(f"clip {clip_id}: {prefix}{cause}")
        self.clip_id = clip_id
        self.cause = cause
