"""Shared fixtures for end-to-end extraction: a small synthetic DESED set served on 127.0.0.1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.download import DownloadConfig
from pipeline.extract import ExtractConfig, run_extraction
from avsed.synthetic.video_host import VideoServer
from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset

E2E_FEATURES = ("logmel", "openl3", "vgg16", "tce")
# The synthetic videos are 64 px: frames and network inputs at 64 px keep CI fast (recorded in provenance).
SMALL_IMAGES = {name: {"input_size": 64} for name in ("openl3", "vgg16", "tce")}


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "desed"
    make_synthetic_dataset(out, SynthConfig(clips=12, seed=3, missing_fraction=0.2), progress=False)
    return out


def copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def extract_config(data: Path, store: Path, url_template: str, **kw) -> ExtractConfig:
    kw.setdefault("features", E2E_FEATURES)
    kw.setdefault("allow_random_weights", True)
    kw.setdefault("batch_clips", 4)
    kw.setdefault("frame_size", 64)
    # 12 clips in shards of 4: three shards, so writes, windows and resume cross shard boundaries
    kw.setdefault("clips_per_shard", 4)
    kw.setdefault("max_clips_in_flight", 6)
    kw.setdefault("decode_workers", 2)
    kw.setdefault("extractor_configs", SMALL_IMAGES)
    kw.setdefault("download", DownloadConfig(url_template=url_template))
    return ExtractConfig(metadata=str(data / "metadata"), audio_dir=str(data / "audio"), store=str(store),
                         **kw)


@pytest.fixture(scope="session")
def reference_run(synth_set, tmp_path_factory):
    """One uninterrupted extraction that several tests compare against."""
    root = tmp_path_factory.mktemp("reference")
    data = copy_set(synth_set, root / "data")
    with VideoServer(data / "videos") as server:
        cfg = extract_config(data, root / "features.zarr", server.url_template)
        report = run_extraction(cfg, progress=False)
    return data, cfg, report
