"""`download.extractors`: yt-dlp extractors of one's own, named as 'module:Class' in the configuration (how tests and
the demo reach the loopback host's YouTube-shaped watch URLs without the pipeline importing the synthetic kit)."""

from __future__ import annotations

import pytest

from avsed.core.errors import AvsedError
from avsed.synthetic.loopback_youtube import LOOPBACK_EXTRACTOR, LoopbackYoutubeIE
from pipeline.download import DownloadConfig, _extractor_for

WATCH = "http://127.0.0.1:8123/watch?v={youtube_id}"


def test_a_named_extractor_is_asked_first_and_yt_dlp_s_own_otherwise():
    ie, own = _extractor_for(WATCH, (LOOPBACK_EXTRACTOR,))
    assert ie is LoopbackYoutubeIE and own
    ie, own = _extractor_for(WATCH, ())  # without it: yt-dlp's generic extractor, its own
    assert ie is not LoopbackYoutubeIE and ie.ie_key() == "Generic" and not own
    ie, own = _extractor_for("https://www.youtube.com/watch?v={youtube_id}", (LOOPBACK_EXTRACTOR,))
    assert ie.ie_key() == "Youtube" and not own  # not suitable: yt-dlp's pick


@pytest.mark.parametrize("spec,words", [
    ("avsed.synthetic.loopback_youtube", "is not 'module:Class'"),  # no class
    ("no_such_module_xyz:Extractor", "cannot load 'no_such_module_xyz:Extractor' (No module named"),
    ("avsed.synthetic.loopback_youtube:NoSuchIE", "cannot load"),
    ("pipeline.download:DownloadConfig", "is not 'module:Class' of a yt-dlp InfoExtractor subclass"),
])
def test_a_bad_extractor_name_is_one_line_before_any_work(spec, words):
    with pytest.raises(AvsedError, match="download.extractors") as e:
        DownloadConfig(extractors=[spec])
    assert words in str(e.value) and "\n" not in str(e.value)
    assert DownloadConfig(extractors=LOOPBACK_EXTRACTOR).extractors == (LOOPBACK_EXTRACTOR,)  # one name is a list
