"""Reason classes from the real host's messages.

Two ways in, both with the real yt-dlp:
- end to end: the loopback host scripts YouTube's player answers (`playability`, `bot_check`, HTTP codes) and
  `avsed.synthetic.loopback_youtube` turns them into errors with the YouTube extractor's own code, so the message
  classified is the one yt-dlp raises for YouTube; format selection fails inside yt-dlp's YoutubeDL itself;
- as raised: YouTube's playability texts (quoted from yt-dlp's source, its tests, or its issue tracker, each
  with its origin) wrapped as yt-dlp wraps them (ExtractorError inside DownloadError).

A message not known to be permanent must stay transient (`failed`, retried next run): the two real messages that
the old broad "not available" marker called `missing/removed` are among the cases.
"""

from __future__ import annotations

import json
import os

import pytest
from yt_dlp.utils import DownloadError, ExtractorError

from pipeline.download import DownloadConfig, download_clip, probe_clip
from pipeline.download_reasons import classify_download_error, classify_message
from avsed.core.manifest import parse_clip_name
from avsed.synthetic.video_host import VideoServer
from avsed.synthetic.loopback_youtube import LOOPBACK_EXTRACTOR
from tests.pipeline import videos

VID = "ClassifyVid"

# yt-dlp 2026.10.26, YoutubeDL.py, process_video_result
REQUESTED_FORMAT = "Requested format is not available. Use --list-formats for a list of available formats"
# YouTube's reason and subreason for a client it will not serve; yt-dlp joins them with ". " (_video.py), as
# quoted in yt-dlp issue #10108: "The following content is not available on this app.. Watch on the latest
# version of YouTube."
NOT_ON_THIS_APP = ("The following content is not available on this app.", "Watch on the latest version of YouTube.")
# YouTube's bot check (typographic apostrophe), yt-dlp issues #11950 / #11981; subreason stripped by _video.py
BOT_CHECK = ("Sign in to confirm you\u2019re not a bot", "This helps protect our community. Learn more")
# yt-dlp's login hint (extractor/common.py _login_hint + youtube/_base.py _youtube_login_hint), appended by
# _video.py to every reason that says "sign in"
LOGIN_HINT = ("Use --cookies-from-browser or --cookies for the authentication. See  https://github.com/yt-dlp/yt-dlp/"
              "wiki/FAQ#how-do-i-pass-cookies-to-yt-dlp  for how to manually pass cookies. Also see  https://github."
              "com/yt-dlp/yt-dlp/wiki/Extractors#exporting-youtube-cookies  for tips on effectively exporting YouTube "
              "cookies")


def _clip(youtube_id: str = VID):
    name = f"Y{youtube_id}_0.000_10.000.wav"
    return name, parse_clip_name(name)


def _refusal(reason: str, subreason: str | None = None, status: str = "UNPLAYABLE") -> dict:
    """A playabilityStatus as YouTube's player sends it when it refuses playback."""
    screen = {"reason": {"simpleText": reason}}
    if subreason:
        screen["subreason"] = {"simpleText": subreason}
    return {"status": status, "reason": reason, "errorScreen": {"playerErrorMessageRenderer": screen}}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    videos.time_coded_video(root / f"{VID}.mp4", 10)
    scripts = {
        "NotOnThisAp": [{"playability": _refusal(*NOT_ON_THIS_APP)}],
        "BotCheckBot": [{"bot_check": True}],
        "AgeGatedVid": [{"playability": _refusal("Sign in to confirm your age",
                                                 "This video may be inappropriate for some users.", "LOGIN_REQUIRED")}],
        "TryLaterVid": [{"playability": _refusal("This content isn\u2019t available, try again later.")}],
        "TryLaterAsc": [{"playability": _refusal("This content isn't available, try again later.")}],
        "PrivateVide": [{"playability": _refusal("Private video", "Sign in if you've been granted access to this video",
                                                 "LOGIN_REQUIRED")}],
        "GeoBlocked0": [{"playability": _refusal(
            "Video unavailable", "The uploader has not made this video available in your country")}],
        "Terminated0": [{"playability": _refusal("Video unavailable", (
            "This video is no longer available because the YouTube account associated with this video has been "
            "terminated."), "ERROR")}],
        "Captcha0000": [{"playability": {**_refusal("Please verify you are a human"),
                                         "errorScreen": {"playerCaptchaViewModel": {"captchaType": "x"}}}}],
        "RateLimited": [{"status": 429}],
        "NoReason000": [{"playability": {"status": "UNPLAYABLE"}}],
    }
    for vid in scripts:
        os.link(root / f"{VID}.mp4", root / f"{vid}.mp4")  # the file is there: only the answer refuses
    (root / "answers.json").write_text(json.dumps(scripts))
    with VideoServer(root, removed_status=410) as srv:
        yield srv


def _config(template: str, **kw) -> DownloadConfig:
    return DownloadConfig(url_template=template, retries=0, fragment_retries=0, socket_timeout=10.0,
                          extractors=(LOOPBACK_EXTRACTOR,), **kw)


@pytest.mark.parametrize("youtube_id,status,reason,words", [
    # the two real messages that the broad "not available" marker used to call missing/removed
    ("NotOnThisAp", "failed", "client_refused", "The following content is not available on this app.. Watch on "
                                                "the latest version of YouTube."),
    ("BotCheckBot", "failed", "bot_check", f"{BOT_CHECK[0]}. {LOGIN_HINT}"),
    # yt-dlp adds its rate-limit note only for the ASCII apostrophe; the class does not depend on it
    ("TryLaterVid", "failed", "rate_limited", "This content isn\u2019t available, try again later."),
    ("TryLaterAsc", "failed", "rate_limited", "has been rate-limited by YouTube for up to an hour"),
    ("Captcha0000", "failed", "bot_check", "YouTube is requiring a captcha challenge before playback"),
    ("RateLimited", "failed", "rate_limited", "HTTP Error 429"),
    ("NoReason000", "failed", "format_unavailable", "No video formats found!"),
    ("AgeGatedVid", "missing", "age", f"Sign in to confirm your age. This video may be inappropriate for some users. "
                                      f"{LOGIN_HINT}"),
    ("PrivateVide", "missing", "private", "Private video. Sign in if you've been granted access to this video. "),
    ("GeoBlocked0", "missing", "geo", "The uploader has not made this video available in your country"),
    ("Terminated0", "missing", "terminated", "account associated with this video has been terminated"),
    ("NotThereXYZ", "missing", "removed", "Video unavailable. This video is unavailable"),
    (VID, "available", None, ""),
])
def test_youtubes_answers_through_yt_dlp(host, tmp_path, youtube_id, status, reason, words):
    result = download_clip(*_clip(youtube_id), tmp_path, _config(host.watch_url_template))
    assert (result.status, result.reason) == (status, reason), result.message
    assert words in result.message
    if reason in ("bot_check", "rate_limited"):  # the ledger's message says what to do
        assert "download.cookies_file" in result.message and "download.proxy" in result.message


def test_a_format_selection_error_is_never_evidence_that_a_video_is_gone(host, tmp_path):
    # nothing matches: yt-dlp's YoutubeDL raises its own "Requested format is not available" for a video that exists
    cfg = _config(host.url_template, format="bv*[height>=99999]")
    for result in (download_clip(*_clip(), tmp_path, cfg), probe_clip(*_clip(), cfg)):
        assert (result.status, result.reason, result.path) == ("failed", "format_unavailable", None)
        assert REQUESTED_FORMAT in result.message


def _wrapped(message: str, video_id: str = "abcdefghijk") -> DownloadError:
    """As YoutubeDL raises YouTube's refusals: ExtractorError(expected=True) named by extractor and id, in a
    DownloadError whose exc_info holds it."""
    cause = ExtractorError(message, expected=True, video_id=video_id, ie="youtube")
    return DownloadError(f"ERROR: {cause}", exc_info=(type(cause), cause, None))


# (message, status, reason); the comment says where the text comes from.
YOUTUBE_MESSAGES = [
    (REQUESTED_FORMAT, "failed", "format_unavailable"),  # YoutubeDL.py
    ("No video formats found!", "failed", "format_unavailable"),  # YoutubeDL.py raise_no_formats
    (". ".join(NOT_ON_THIS_APP), "failed", "client_refused"),  # issue #10108
    (f"{BOT_CHECK[0]}. {LOGIN_HINT}", "failed", "bot_check"),  # issues #11950, #11981
    ("Sign in to confirm you're not a bot. This helps protect our community. Learn more", "failed", "bot_check"),
    # _video.py
    ("All player responses are invalid. Your IP is likely being blocked by Youtube", "failed", "bot_check"),
    ("This content isn't available, try again later.", "failed", "rate_limited"),  # _video.py
    ("This live event will begin in 3 hours.", "failed", "upcoming"),
    ("This video is not available.", "failed", None),  # _video.py test 'skip': ambiguous, so retried
    ("Some message nobody has seen before", "failed", None),
    ("Video unavailable", "missing", "removed"),  # _video.py test 'skip'
    # _video.py test
    ("This video has been removed for violating YouTube's policy on hate speech.", "missing", "removed"),
    ("Video unavailable. This video has been removed by the uploader", "missing", "removed"),
    ("Video unavailable. This video isn\u2019t available anymore", "missing", "removed"),
    ("Video unavailable. This video is no longer available due to a copyright claim by X", "missing", "copyright"),
    ("Video unavailable. This video contains content from X, who has blocked it on copyright grounds.",
     "missing", "copyright"),
    ("Video unavailable. This video is no longer available because the uploader has closed their YouTube account.",
     "missing", "terminated"),
    ("Private video. Sign in if you've been granted access to this video", "missing", "private"),  # _video.py test
    ("Join this channel to get access to members-only content like this video, and other exclusive perks.",
     "missing", "private"),
    ("Sign in to confirm your age. This video may be inappropriate for some users.", "missing", "age"),
    ("This video does not exist.", "missing", "not_found"),  # _video.py test 'skip'
    ("This video is DRM protected", "missing", "unsupported"),  # extractor/common.py report_drm
]


@pytest.mark.parametrize("message,status,reason", YOUTUBE_MESSAGES)
def test_youtube_messages_as_yt_dlp_raises_them(message, status, reason):
    got_status, got_reason, kept = classify_download_error(_wrapped(message))
    assert (got_status, got_reason) == (status, reason)
    assert message in kept and kept.startswith("[youtube] abcdefghijk: ")
    assert classify_message(message) == ((status, reason) if (status, reason) != ("failed", None) else None)


def test_the_id_in_yt_dlps_prefix_is_not_read_as_a_message():
    # an 11-character id may spell a marker's letters; only the extractor's own text is classified
    unknown = _wrapped("Some message nobody has seen before", "CopyrightXY")
    assert classify_download_error(unknown)[:2] == ("failed", None)
