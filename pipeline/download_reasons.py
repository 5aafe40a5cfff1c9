"""Reason classes of a failed download, probe or decode, for the ledger: from yt-dlp's exception types, the HTTP
status, the messages YouTube's player gives (as yt-dlp's YouTube extractor raises them) and how ffmpeg ended.

THE RULE (the one place it is stated): a video is recorded PERMANENTLY `missing` only on the host's definitive
answer: HTTP 404 / 410 / 451, a removed / private / terminated / copyright / geo / age / DRM message, or a
complete download whose streams really hold no usable video (`corrupt`). Everything else is TRANSIENT: `failed`
with its own reason where one is known, retried on the next run (with backoff, `retry_due`), its file kept:

    stalled          a read timed out (a host that sends the headers and a little, then nothing)
    truncated        fewer bytes arrived than the host announced (the connection closed early)
    not_media        the response is not a media file (an HTML page with status 200: captive portal, consent page)
    decoder_killed   the ffmpeg decoding a downloaded file died of a signal (the out-of-memory killer); the file
                     is kept and decoded again next run
    deadline         the clip ran past `download.clip_deadline_seconds`
    rate_limited, bot_check, client_refused, format_unavailable, upcoming: the host refuses this client or request
    None             any other network error, 5xx, or a message not known to be permanent

A download counts as complete only when yt-dlp finished it: its HTTP downloader checks the announced length, and
the ffmpeg that cuts partial downloads runs with `-xerror` (a read error or timeout ends it with an error instead
of an early, silent end of file). So `corrupt` after a complete download is the file's own fault, not the wire's.

`classify_download_error(exc)` -> (status, reason, message); `decode_outcome(reason)` -> (status, reason) for a
decoder's verdict on a downloaded file. Refusals of the client carry a note on what to do.
"""

from __future__ import annotations

import re

from pipeline.circuit_breaker import REFUSAL_ADVICE, WHAT_TO_DO

# yt-dlp raises YouTube's refusals as ExtractorError(expected=True) whose message is YouTube's playability
# `reason` + ". " + `subreason` (extractor/youtube/_video.py, YoutubeIE._real_extract, `if not formats:`),
# with yt-dlp's login hint appended when the reason says "sign in". Those texts come from YouTube's servers;
# where a string is not in yt-dlp's source, the comment names where it is quoted. Matched in lower case with
# typographic apostrophes made plain, on the extractor's own message (without yt-dlp's "[youtube] <id>: "),
# first class first. A message matching no class is transient (`failed`, retried next run): only a message
# known to mean "this video is gone for us" may mark a video missing, and "not available" alone never does.
_MESSAGE_CLASSES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # -- transient: the host refuses this client or this request, which says nothing about the video --------
    ("failed", "bot_check", (
        "not a bot",  # YouTube: "Sign in to confirm you’re not a bot" (+ "This helps protect our community. Learn
                      # more", which _video.py strips); quoted in yt-dlp issues #11950, #11981
        "captcha challenge",  # _video.py: "... YouTube is requiring a captcha challenge before playback"
        "your ip is likely being blocked",  # _video.py: "All player responses are invalid. Your IP is likely
                                            # being blocked by Youtube"
    )),
    ("failed", "rate_limited", (
        "try again later",  # YouTube: "This content isn't available, try again later" (quoted in _video.py)
        "rate-limited",  # _video.py: "... has been rate-limited by YouTube for up to an hour"
        "too many requests",  # HTTP 429's reason phrase inside a wrapped message
    )),
    ("failed", "client_refused", (
        "not available on this app",  # YouTube refusing one client: "The following content is not available on
                                      # this app.. Watch on the latest version of YouTube." (yt-dlp #10108)
    )),
    ("failed", "format_unavailable", (
        "requested format is not available",  # YoutubeDL.py, process_video_result: "Requested format is not
                                              # available. Use --list-formats for a list of available formats"
        "no video formats found",  # YoutubeDL.py, raise_no_formats: "No video formats found!"
    )),
    ("failed", "upcoming", (
        "live event will begin",  # YouTube: "This live event will begin in ..."
        "premieres in",  # YouTube: "Premieres in ..."
    )),
    # -- permanent: the video is gone, or closed to every client like ours ---------------------------------
    ("missing", "terminated", (
        "account associated with this video has been terminated",  # YouTube: "This video is no longer available
                                                                   # because the YouTube account associated ..."
        "closed their youtube account",  # YouTube: "... because the uploader has closed their YouTube account."
    )),
    ("missing", "geo", (
        "not made this video available in your country",  # YouTube subreason; _video.py raises it as
                                                          # GeoRestrictedError (classified by type)
    )),
    ("missing", "copyright", (
        "copyright",  # YouTube: "... due to a copyright claim by X", "... who has blocked it on copyright grounds."
    )),
    ("missing", "age", (
        "confirm your age",  # YouTube: "Sign in to confirm your age"; _video.py _is_agegated's AGE_GATE_REASONS:
        "age-restricted",  # 'confirm your age', 'age-restricted', 'inappropriate'
        "inappropriate for some users",  # YouTube: "This video may be inappropriate for some users."
    )),
    ("missing", "private", (
        "private video",  # YouTube: "Private video. Sign in if you've been granted access to this video"
                          # (_video.py test: 'skip': 'Private video')
        "video is private",
        "members-only",  # YouTube: "Join this channel to get access to members-only content like this video"
    )),
    ("missing", "removed", (
        "video unavailable",  # YouTube's reason for deleted videos (_video.py test: 'skip': 'Video unavailable')
        "has been removed",  # "This video has been removed by the uploader" / "... for violating YouTube's
                             # policy on hate speech." (_video.py test)
        "isn't available anymore",  # YouTube: "This video isn't available anymore"
        "no longer available",  # YouTube: "This video is no longer available ..."
    )),
    ("missing", "not_found", (
        "does not exist",  # _video.py test: 'skip': 'This video does not exist.'
        "incomplete youtube id",  # youtube/_mistakes.py: "Incomplete YouTube ID <id>. URL <url> looks truncated."
    )),
    ("missing", "unsupported", (
        "drm protected",  # extractor/common.py report_drm / YoutubeDL.py: "This video is DRM protected"
    )),
)


# urllib3 / yt-dlp's IncompleteRead as text: "4096 bytes read, 575 more expected"
_INCOMPLETE = re.compile(r"\d+ bytes read, \d+ more expected")


def classify_message(message: str) -> tuple[str, str | None] | None:
    """(status, reason) of a message from YouTube or yt-dlp, or None when the message is not known."""
    text = message.lower().replace("\u2019", "'")
    for status, reason, markers in _MESSAGE_CLASSES:
        if any(m in text for m in markers):
            return status, reason
    return None


# Reasons of `failed` records that a decoder gives (`pipeline.frames.VideoError.reason`): the file is kept.
TRANSIENT_DECODE_REASONS = ("decoder_killed",)
NOT_MEDIA_MESSAGE = ("the host answered a web page, not a video (a captive portal or consent page?); "
                     "retried on the next run")


def decode_outcome(reason: str) -> tuple[str, str]:
    """(status, reason) for the ledger when a complete download cannot be decoded: `failed` (file kept, retried
    next run) when the decoder itself was killed, otherwise `missing` (the file is deleted)."""
    if reason in TRANSIENT_DECODE_REASONS:
        return "failed", reason
    return "missing", reason


def retry_due(attempts: int, last_checked_age_hours: float) -> bool:
    """Whether a `failed` clip is retried by this run: always for its first 5 attempts, then once the hours since
    its last attempt reach 2 ** (attempts - 5) (1, 2, 4, ... at most a week): a clip that keeps failing costs a
    request now and then, not one per run."""
    if attempts < 5:
        return True
    return last_checked_age_hours >= min(2.0 ** (attempts - 5), 24.0 * 7)


def _http_reason(status: int) -> tuple[str, str | None]:
    if status == 404:
        return "missing", "not_found"
    if status == 410:
        return "missing", "removed"
    if status == 451:  # unavailable for legal reasons
        return "missing", "copyright"
    if status == 429:
        return "failed", "rate_limited"
    # 401/403 from a video host are mostly expired signatures or throttling, 408/5xx are load: retry
    return "failed", None


def _cause_chain(exc: BaseException) -> list[BaseException]:
    """The exception, yt-dlp's `exc_info` cause, and the `__cause__` / `cause` chain below them."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        info = getattr(e, "exc_info", None)
        if isinstance(info, tuple) and len(info) > 1 and isinstance(info[1], BaseException):
            todo.append(info[1])
        for attr in ("cause", "__cause__", "__context__"):
            c = getattr(e, attr, None)
            if isinstance(c, BaseException):
                todo.append(c)
    return seen


def _with_advice(status: str, reason: str | None, message: str) -> tuple[str, str | None, str]:
    if reason in REFUSAL_ADVICE:
        message = f"{message} [{REFUSAL_ADVICE[reason]}; to get past it: {WHAT_TO_DO}]"
    return status, reason, message


def classify_download_error(exc: BaseException) -> tuple[str, str | None, str]:
    """(status, reason, message) of a download failure, for the ledger.

    Classified on yt-dlp's exception types and the HTTP status first (yt-dlp wraps everything in
    `DownloadError`, the cause is in `exc_info`), then on the message classes above; anything unknown is
    `failed` (transient: retried on the next run) with its message kept. Refusals of the client (bot check,
    rate limit) carry a note on what to do.
    """
    from yt_dlp.networking.exceptions import HTTPError, IncompleteRead, TransportError
    from yt_dlp.utils import (ContentTooShortError, DownloadCancelled, ExtractorError, GeoRestrictedError,
                              UnsupportedError)

    message = str(exc).strip()
    if message.startswith("ERROR: "):
        message = message[len("ERROR: "):]
    chain = _cause_chain(exc)
    for e in chain:
        if isinstance(e, HTTPError):
            return _with_advice(*_http_reason(int(e.status)), message)
    for e in chain:
        if isinstance(e, GeoRestrictedError):
            return "missing", "geo", message
        if isinstance(e, UnsupportedError):  # the generic extractor found a web page where a video was expected
            return "failed", "not_media", f"{message} ({NOT_MEDIA_MESSAGE})"
        if isinstance(e, ContentTooShortError):
            return "failed", "truncated", message
        if isinstance(e, DownloadCancelled):  # our progress hook, at the clip's deadline
            return "failed", "deadline", message
    for e in chain:
        if isinstance(e, IncompleteRead):
            return "failed", "truncated", message
        if isinstance(e, (TransportError, TimeoutError, ConnectionError)):
            return "failed", "stalled" if "timed out" in message.lower() else None, message
    # yt-dlp's retry loop reports the last error as text only ("Got error: ...")
    if _INCOMPLETE.search(message):
        return "failed", "truncated", message
    if "timed out" in message.lower():
        return "failed", "stalled", message
    # the extractor's own text, without yt-dlp's "[extractor] <id>: " (an id could contain a marker's letters)
    own = next((e.orig_msg for e in chain if isinstance(e, ExtractorError) and getattr(e, "orig_msg", None)),
               message)
    known = classify_message(own)
    if known is not None:
        return _with_advice(*known, message)
    return "failed", None, message
