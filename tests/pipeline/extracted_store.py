"""A small store made by the real extraction (synthetic set -> loopback host -> yt-dlp -> log-mel + OpenL3),
for tests of what reads a store and its ledger (ledger rebuild, status). Made through `run_extraction`, the
stable entry point, so these tests do not depend on how the store is written."""

from __future__ import annotations

from pathlib import Path

from pipeline.download import DownloadConfig
from pipeline.extract import ExtractConfig, run_extraction
from avsed.synthetic.video_host import VideoServer
from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset

# The synthetic videos are 64 px; the tests decode their frames at 32 px and run the image networks at 32 px
# (recorded in provenance): a quarter of the networks' work, which was most of a small extraction's time (12 clips
# with OpenL3, VGG16 and the ResNet-50: 14.8 s at 64 px, 9.1 s at 32).
FRAME_SIZE = 32


def small_extract_config(data: Path, store: Path, url_template: str, **overrides) -> ExtractConfig:
    """Log-mel and OpenL3 at FRAME_SIZE with random weights: the cheapest extraction that has a video feature."""
    settings = dict(features=("logmel", "openl3"), allow_random_weights=True, batch_clips=4, frame_size=FRAME_SIZE,
                    extractor_configs={"openl3": {"input_size": FRAME_SIZE}},
                    download=DownloadConfig(url_template=url_template))
    settings.update(overrides)
    return ExtractConfig(metadata=str(data / "metadata"), audio_dir=str(data / "audio"), store=str(store),
                         **settings)


def extract_small_store(root: Path, synth: SynthConfig = SynthConfig(clips=8, seed=3, missing_fraction=0.3)
                        ) -> tuple[Path, ExtractConfig]:
    """Make a synthetic set under root/data and extract it into root/features.zarr; returns (data, config)."""
    data = Path(root) / "data"
    make_synthetic_dataset(data, synth, progress=False)
    with VideoServer(data / "videos") as server:
        cfg = small_extract_config(data, Path(root) / "features.zarr", server.url_template)
        run_extraction(cfg, progress=False)
    return data, cfg
