"""yt-dlp's extractor for the loopback host's YouTube-shaped watch URLs (`avsed.synthetic.video_host`, `watch_url_template`).

It stands in for yt-dlp's YouTube extractor where tests and synthetic sets need YouTube's own refusals (the
bot check, the age gate, "not available on this app", ...) to travel through real yt-dlp code: like the
YouTube extractor it asks the host for a player response (`/youtubei/v1/player?videoId=...`), and when that
refuses playback it builds the error from `playabilityStatus` with the YouTube extractor's own logic (copied
from yt-dlp's `extractor/youtube/_video.py`, `_real_extract`, the `if not formats:` branch) and raises it
with yt-dlp's `raise_no_formats` / `raise_geo_restricted`, so the message a caller sees is the one real YouTube
gives through yt-dlp. What is not real: the host (a loopback server answering JSON), the single format and
everything YouTube does besides the playability check (signatures, PO tokens, clients).

A download configuration names it (`DownloadConfig(extractors=(LOOPBACK_EXTRACTOR,))`); `pipeline.download` then
passes loopback watch URLs to it (`ie_key`), and every other URL goes through yt-dlp's own extractors.
"""

from __future__ import annotations

from yt_dlp.extractor.youtube import YoutubeBaseInfoExtractor
from yt_dlp.utils import clean_html, remove_end, traverse_obj
from yt_dlp.utils.traversal import get_first


LOOPBACK_EXTRACTOR = f"{__name__}:LoopbackYoutubeIE"  # for DownloadConfig.extractors


class LoopbackYoutubeIE(YoutubeBaseInfoExtractor):
    IE_NAME = "youtube:avsed-loopback"
    IE_DESC = False  # not a site: the loopback host of tests and the demo
    _ENABLED = False  # never among yt-dlp's default extractors: named in `download.extractors` (LOOPBACK_EXTRACTOR)
    _VALID_URL = r"http://(?P<host>127\.0\.0\.1|localhost):(?P<port>\d+)/watch\?v=(?P<id>[0-9A-Za-z_-]+)"
    PLAYER_PATH = "/youtubei/v1/player"  # avsed.synthetic.video_host.PLAYER_PATH

    def _real_initialize(self):
        pass  # YouTube's consent and preference cookies mean nothing to the loopback host

    def _real_extract(self, url):
        host, port, video_id = self._match_valid_url(url).group("host", "port", "id")
        query = {"videoId": video_id}
        # the client list travels as YouTube's extractor takes it (`extractor_args: {youtube: {player_client:
        # [...]}}`), so a test can see extractor arguments reach the host
        clients = self._configuration_arg("player_client", ie_key="youtube")
        if clients:
            query["client"] = ",".join(clients)
        player = self._download_json(f"http://{host}:{port}{self.PLAYER_PATH}", video_id, query=query,
                                     note="Downloading player API JSON")
        playability_statuses = traverse_obj([player], (..., "playabilityStatus"), expected_type=dict)
        formats = [{"format_id": str(f.get("itag")), "url": f["url"], "ext": "mp4"}
                   for f in traverse_obj(player, ("streamingData", "formats", ..., {dict})) if f.get("url")]
        if not formats:
            self._raise_unplayable(playability_statuses)
        return {"id": video_id, "title": traverse_obj(player, ("videoDetails", "title", {str})) or video_id,
                "formats": formats}

    def _raise_unplayable(self, playability_statuses: list[dict]) -> None:
        # From yt-dlp 2026.10.26 extractor/youtube/_video.py, YoutubeIE._real_extract (`if not formats:`),
        # unchanged but for the country list (the loopback host has no microformats).
        pemr = get_first(
            playability_statuses,
            ("errorScreen", "playerErrorMessageRenderer"), expected_type=dict) or {}
        ivm = get_first(
            playability_statuses,
            ("errorScreen", "playerInterstitialRenderer", "content", "interstitialViewModel", {dict})) or {}
        reason = (
            self._get_text(pemr, "reason")
            or get_first(playability_statuses, "reason")
            or traverse_obj(ivm, ("title", "content", {str}))
            or "")
        subreason = clean_html(self._get_text(pemr, "subreason")) or traverse_obj(
            ivm, ("description", "content", {clean_html}))
        if subreason:
            if subreason.startswith("The uploader has not made this video available in your country"):
                self.raise_geo_restricted(subreason, None, metadata_available=True)
            if subreason != reason:
                reason += f". {subreason}"
        if reason:
            if "sign in" in reason.lower():
                reason = remove_end(reason, "This helps protect our community. Learn more")
                reason = f'{remove_end(reason.strip(), ".")}. {self._youtube_login_hint}'
            elif get_first(playability_statuses, ("errorScreen", "playerCaptchaViewModel", {dict})):
                reason += ". YouTube is requiring a captcha challenge before playback"
            elif "This content isn't available, try again later" in reason:
                reason = (
                    f'{remove_end(reason.strip(), ".")}. '
                    f'{"Your account" if self.is_authenticated else "The current session"} '
                    f"has been rate-limited by YouTube for up to an hour. It is recommended to use `-t sleep` to "
                    f"add a delay between video requests to avoid exceeding the rate limit. For more information, "
                    f"refer to  https://github.com/yt-dlp/yt-dlp/wiki/Extractors#this-content-isnt-available-try-again-later"
                )
            self.raise_no_formats(reason, expected=True)
        # no reason: yt-dlp then says "No video formats found!" itself, as it does for YouTube
