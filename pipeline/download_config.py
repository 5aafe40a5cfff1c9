"""How one run downloads (`DownloadConfig`, the `download:` section of ExtractConfig): where from, which format, how
many at once, how patiently, the options the real YouTube needs, and extractors of one's own. Every setting is
checked when the configuration is made, so a typo is one line before any work; pipeline/download.py does the
downloading."""

from __future__ import annotations

import string

from pydantic import BaseModel, ConfigDict, Field, field_validator

from avsed.core.errors import AvsedError

# Smallest video at or above 224 px (frames end at 224 x 224, and decode cost follows the source size,
# STACK.md); audio is not needed. `>=?` keeps formats whose height is unknown (a direct .mp4 link).
# Fall back to the smallest video of any size, then to any single file.
DEFAULT_FORMAT = "bv*[height>=?224]/bv*/b"
# Sort: ascending resolution (smallest first), then h264 before vp9/av1 (cheapest to decode), then size.
DEFAULT_FORMAT_SORT = ("+res", "vcodec:h264", "+size", "+br")


class DownloadConfig(BaseModel):
    """How one run downloads: where from, which format, how many at once, how patiently, and the options the real
    YouTube needs (cookies, proxy, pauses, extractor arguments). A section of ExtractConfig (`download:`)."""

    # frozen: one run's settings never change under its threads; unknown keys are errors (a typo must not
    # silently fall back to YouTube)
    model_config = ConfigDict(frozen=True, extra="forbid")

    url_template: str = Field("https://www.youtube.com/watch?v={youtube_id}",
                              description="video URL with a {youtube_id} field (YouTube's watch URL by default)")
    format: str = Field(DEFAULT_FORMAT, description="yt-dlp format selector (smallest video at or above 224 px)")
    format_sort: tuple[str, ...] = Field(DEFAULT_FORMAT_SORT, description="yt-dlp format sort order")
    partial: bool = Field(True, description="download only the clip's time range (through ffmpeg)")
    force_keyframes_at_cuts: bool = Field(True, description="re-encode at the cut: the file starts exactly at the "
                                                            "clip start")
    retries: int = Field(3, description="yt-dlp retries per request")
    fragment_retries: int = Field(3, description="yt-dlp retries per fragment")
    socket_timeout: float = Field(20.0, description="seconds without data before a request gives up (also "
                                                    "ffmpeg's read timeout on partial downloads)")
    concurrency: int = Field(4, ge=1, description="downloads and probes in flight at once, for the whole run")
    # A partial download that ffmpeg cannot cut (a damaged file, or a host ffmpeg cannot seek in) is
    # tried once more whole; the decoder then judges the file (`corrupt` if it cannot decode it).
    fallback_whole: bool = Field(True, description="retry a clip whose cut fails as one whole-video download")
    keep_videos: bool = Field(False, description="keep downloaded videos (default: deleted once their frames are "
                                                 "written)")
    rate_limit: float | None = Field(None, description="bytes/s per download; null: unlimited")
    # -- for the real YouTube ------------------------------------------------------------------------------
    # A Netscape cookies.txt of a signed-in browser: answers bot checks, and lets an age-verified account see
    # age-restricted videos (see `retry_missing_reasons`). yt-dlp writes refreshed cookies back to it.
    cookies_file: str | None = Field(None, description="Netscape cookies.txt of a browser signed in to YouTube "
                                                       "(bot checks, age-restricted videos)")
    proxy: str | None = Field(None, description="proxy for yt-dlp and its ffmpeg, e.g. http://host:3128 or "
                                                "socks5://host:1080")
    sleep_interval: float | None = Field(None, description="seconds to wait before each download")
    max_sleep_interval: float | None = Field(None, description="with sleep_interval: a random wait in "
                                                               "[sleep_interval, this]")
    sleep_interval_requests: float | None = Field(None, description="seconds between a clip's metadata requests")
    # yt-dlp asks these before its own extractors (a site of your own, a mirror, the loopback host of tests and the
    # demo: avsed.synthetic.loopback_youtube); imported by name, so the pipeline depends on none of them.
    extractors: tuple[str, ...] = Field((), description="yt-dlp extractor classes of your own as 'module:Class', "
                                                        "asked before yt-dlp's")
    extractor_args: dict[str, dict[str, list[str]]] = Field(
        default_factory=dict, description='yt-dlp extractor arguments, e.g. {"youtube": {"player_client": ["web"]}}')
    # After this many consecutive refusals of one kind (HTTP 429 / bot check) the run stops downloading and
    # the clips not yet tried come back `not_attempted`; 0 never stops.
    breaker_threshold: int = Field(20, ge=0, description="consecutive refusals of one kind (HTTP 429, bot check) "
                                                         "after which the run stops downloading; 0: never")
    clip_deadline_seconds: float = Field(300.0, gt=0, description="seconds a clip may take in all before it is "
                                                                  "recorded failed (deadline)")

    # The checks raise AvsedError (one line from `avsed`, never retried); they run before the bounds in the schema
    # (which the Prefect server checks) so that the message names the setting.
    @field_validator("url_template", mode="before")
    @classmethod
    def _url_template(cls, value):
        return checked_url_template(value)

    @field_validator("concurrency", mode="before")
    @classmethod
    def _concurrency(cls, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 1:
            raise AvsedError(f"download.concurrency must be at least 1, got {value}")
        return value

    @field_validator("clip_deadline_seconds", mode="before")
    @classmethod
    def _deadline(cls, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value > 0:
            raise AvsedError(f"download.clip_deadline_seconds must be positive, got {value}")
        return value

    @field_validator("breaker_threshold", mode="before")
    @classmethod
    def _breaker(cls, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise AvsedError(f"download.breaker_threshold must be 0 (never stop) or more, got {value}")
        return value

    @field_validator("extractor_args", mode="before")
    @classmethod
    def _extractor_args(cls, value):
        return _checked_extractor_args(value)

    @field_validator("extractors", mode="before")
    @classmethod
    def _extractors(cls, value):
        specs = (value,) if isinstance(value, str) else tuple(value or ())
        for spec in specs:
            load_extractor(spec)  # a typo is refused before any work, in one line
        return specs

    def url(self, youtube_id: str) -> str:
        return self.url_template.format(youtube_id=youtube_id)

    @property
    def retry_missing_reasons(self) -> tuple[str, ...]:
        """Permanent `missing` reasons worth another try with this configuration, for the planner.

        With `cookies_file` set, `age`: YouTube shows age-restricted videos to a signed-in, age-verified
        account, so clips recorded missing for age before the cookies were given may now be had.
        """
        return ("age",) if self.cookies_file else ()


def checked_url_template(value) -> str:
    """The template, or one line naming what is wrong with it: a template without `{youtube_id}` would fetch one
    video (or one error) for every clip, and an unknown placeholder fails every clip the same way."""
    example = "https://www.youtube.com/watch?v={youtube_id}"
    if not isinstance(value, str):
        raise AvsedError(f"download.url_template must be a string such as {example}; got {value!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise AvsedError(f"download.url_template {value!r} is not a valid template ({exc}); write a literal brace "
                         f"as {{{{ or }}}}, e.g. {example}") from None
    unknown = sorted({f for f in fields if f != "youtube_id"})
    if unknown:
        names = ", ".join("{" + f + "}" for f in unknown)
        raise AvsedError(f"download.url_template {value!r} has the unknown placeholder {names}: the only one is "
                         f"{{youtube_id}} (the video's id), e.g. {example}")
    if "youtube_id" not in fields:
        raise AvsedError(f"download.url_template {value!r} has no {{youtube_id}}: every clip would get the same "
                         f"video; put {{youtube_id}} where the host expects the video's id, e.g. {example}")
    return value


def _checked_extractor_args(value) -> dict[str, dict[str, list[str]]]:
    """`extractor_args` as yt-dlp takes it (extractor keys lower case, every value a list of strings)."""
    example = '{"youtube": {"player_client": ["web"]}}'
    if not isinstance(value, dict):
        raise AvsedError(f"download.extractor_args must map extractor names to arguments, e.g. {example}; "
                         f"got {value!r}")
    out: dict[str, dict[str, list[str]]] = {}
    for ie, args in value.items():
        if not isinstance(args, dict):
            raise AvsedError(f"download.extractor_args.{ie} must map argument names to values, e.g. {example}; "
                             f"got {args!r}")
        out[str(ie).lower()] = {}
        for name, values in args.items():
            values = [values] if isinstance(values, str) else values
            if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
                raise AvsedError(f"download.extractor_args.{ie}.{name} must be a string or a list of strings, "
                                 f"e.g. {example}; got {values!r}")
            out[str(ie).lower()][str(name)] = list(values)
    return out


def load_extractor(spec: str):
    """The yt-dlp extractor class named 'module:Class' (`download.extractors`), or one line saying what is wrong."""
    import importlib

    from yt_dlp.extractor.common import InfoExtractor

    module, _, name = str(spec).partition(":")
    try:
        cls = getattr(importlib.import_module(module), name) if module and name else None
    except (ImportError, AttributeError) as e:
        raise AvsedError(f"download.extractors: cannot load {spec!r} ({e}); give 'module:Class' of an importable "
                         f"yt-dlp extractor") from None
    if not (isinstance(cls, type) and issubclass(cls, InfoExtractor)):
        raise AvsedError(f"download.extractors: {spec!r} is not 'module:Class' of a yt-dlp InfoExtractor subclass")
    return cls
