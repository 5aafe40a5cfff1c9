"""The extract-features flow with its tasks on an existing dask.distributed scheduler (DaskTaskRunner), via the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from distributed import LocalCluster

from avsed.synthetic.video_host import VideoServer
from avsed.core.store import FeatureStore
from tests.flows.conftest import copy_set, extract_config, prefect_home

# end to end (a Dask cluster, the CLI, a Prefect flow run): the full suite's, not the fast tier's
pytestmark = pytest.mark.slow


def flow_process_env(template, tmp_path) -> dict:
    """The environment of a fresh CLI process whose Prefect flow run gets its own temporary API server, on a copy
    of the session's migrated Prefect home (half a server start saved; a first start is not these tests' subject)."""
    env = {**os.environ, "PREFECT_HOME": str(prefect_home(template, tmp_path / "prefect-home")),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    env.pop("PREFECT_API_URL", None)
    return env


def test_flow_on_a_dask_cluster_matches_the_in_process_run_under_one_download_cap(reference_run, prefect_home_template,
                                                                                 tmp_path):
    """The flow on a cluster, three shard tasks at once (each with its own download session) and
    download.concurrency 1: the store equals the in-process reference run's, and the host never sees more than one
    video at a time (a cluster-wide semaphore, not one cap per task). Counted per video: one download's own
    requests overlap (seen 3 of 3 times: 2 requests, 1 video), which failed this test when it counted requests.
    (One flow run for both properties: each costs a cluster, a flow process and an extraction.)"""
    ref_data, ref_cfg, _ = reference_run
    data = copy_set(ref_data, tmp_path / "data")
    store = tmp_path / "features.zarr"
    ids = [p.stem for p in (data / "videos").glob("*.mp4")]
    # every answer waits: overlapping downloads of different shards would be seen by the host
    (data / "videos" / "answers.json").write_text(json.dumps({i: [{"delay_seconds": 0.5}] * 6 for i in ids}))
    env = flow_process_env(prefect_home_template, tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=3, processes=True, dashboard_address=None) as cluster, \
            VideoServer(data / "videos") as videos:
        cfg = extract_config(data, store, videos.url_template, shards_in_flight=3)
        settings = cfg.to_dict()
        settings["download"]["concurrency"] = 1
        (tmp_path / "extract.yaml").write_text(yaml.safe_dump(settings))
        run = subprocess.run([sys.executable, "-m", "avsed.cli", "extract", "--config", str(tmp_path / "extract.yaml"),
                              "--dask-address", cluster.scheduler_address, "--json"],
                             env=env, capture_output=True, text=True, timeout=600)
        requests, most = sum(videos.requests().values()), videos.max_videos_in_flight
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["new_clips"] == 12 and report["audio_computed"] == {"logmel": 12}
    got, want = FeatureStore.open(store), FeatureStore.open(ref_cfg.store)
    for name in ("logmel", "openl3", "vgg16", "tce"):
        np.testing.assert_array_equal(got.mask(name), want.mask(name))
    np.testing.assert_array_equal(got.read_feature("logmel"), want.read_feature("logmel"))
    # The image networks run with the configured thread count (1, tests/flows/conftest.py) in the Dask workers as
    # in the reference's process, so their values are the same bits.
    for name in ("openl3", "vgg16", "tce"):
        np.testing.assert_array_equal(got.read_feature(name), want.read_feature(name), err_msg=name)
    assert got.present("openl3").sum() >= 3 and requests >= got.present("openl3").sum()
    assert most == 1  # one video at a time (its own requests may overlap: ffmpeg's range request, see video_host)
