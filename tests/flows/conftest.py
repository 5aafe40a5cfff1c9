"""Shared fixtures for end-to-end extraction: a small synthetic DESED set served on 127.0.0.1, the reference
extraction, and Prefect homes that tests copy instead of each paying a server's first start."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.download import DownloadConfig
from pipeline.extract import ExtractConfig, run_extraction
from avsed.synthetic.video_host import VideoServer
from avsed.synthetic.dataset import SynthConfig, make_synthetic_dataset
from tests.pipeline.extracted_store import FRAME_SIZE

E2E_FEATURES = ("logmel", "openl3", "vgg16", "tce")
# Frames and network inputs at FRAME_SIZE (32 px) keep CI fast (tests/pipeline/extracted_store.py: why). One torch
# thread, whatever process runs the extraction: on CPU VGG16's values depend on the thread count (another
# summation order), and these runs are compared bit for bit with the reference run, made in a pytest process
# (1 thread, set by the conftests), from a Prefect worker's or a killed run's process (the machine's default).
SMALL_IMAGES = {name: {"input_size": FRAME_SIZE, "num_threads": 1} for name in ("openl3", "vgg16", "tce")}


ROOT = Path(__file__).resolve().parents[2]
_READY = ".ready"


def _shared_root(tmp_path_factory) -> Path:
    """A folder every test process of this pytest run sees (pytest-xdist workers have one base folder each)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Held by one test process of the run at a time (what the first one makes, the others then find made)."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    kw.setdefault("frame_size", FRAME_SIZE)
    # 12 clips in shards of 4: three shards, so writes, windows and resume cross shard boundaries
    kw.setdefault("clips_per_shard", 4)
    kw.setdefault("max_clips_in_flight", 6)
    kw.setdefault("decode_workers", 2)
    kw.setdefault("extractor_configs", SMALL_IMAGES)
    kw.setdefault("download", DownloadConfig(url_template=url_template))
    return ExtractConfig(metadata=str(data / "metadata"), audio_dir=str(data / "audio"), store=str(store),
                         **kw)


@pytest.fixture(scope="session")
def reference_run(request, tmp_path_factory):
    """One uninterrupted extraction that several tests compare against (read only), made once per pytest run
    whatever the number of test processes: the synthetic set is the same in each (its seed)."""
    shared = _shared_root(tmp_path_factory)
    root = shared / "reference"
    with _exclusive(shared / "reference.lock"):
        if not (root / _READY).exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            data = copy_set(request.getfixturevalue("synth_set"), root / "data")
            with VideoServer(data / "videos") as server:
                cfg = extract_config(data, root / "features.zarr", server.url_template)
                report = run_extraction(cfg, progress=False)
            (root / "run.pickle").write_bytes(pickle.dumps((cfg, report)))
            (root / _READY).write_text("")
    cfg, report = pickle.loads((root / "run.pickle").read_bytes())
    return root / "data", cfg, report


@pytest.fixture(scope="session")
def prefect_home_template(tmp_path_factory) -> Path:
    """A PREFECT_HOME as a Prefect API server leaves it after its first start: database migrated, block types
    registered. A server on a fresh home spends about half its start-up there (17 of 37 s on a loaded machine); a
    copy of this one (`prefect_home`) skips that. Made once per pytest run, whatever the number of processes.
    Tests whose subject is a first start on a fresh home keep an empty one."""
    root = _shared_root(tmp_path_factory)
    template = root / "prefect-home-template"
    with _exclusive(root / "prefect-home-template.lock"):
        if not (template / _READY).exists():
            shutil.rmtree(template, ignore_errors=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env.update(PREFECT_HOME=str(template), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                       PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
            subprocess.run([sys.executable, "-c", "from flows.local_api import LocalApiServer\n"
                            "LocalApiServer().start().stop()"], cwd=ROOT, env=env, check=True, timeout=360)
            (template / _READY).write_text("")
    return template


def prefect_home(template: Path, dst: Path) -> Path:
    """A copy of `template` at `dst`, to be a test's PREFECT_HOME."""
    shutil.copytree(template, dst, ignore=shutil.ignore_patterns(_READY, "*-shm"))
    return dst
