"""The extract-features flow with its tasks on an existing dask.distributed scheduler (DaskTaskRunner)."""

from __future__ import annotations

import numpy as np
import pytest
from distributed import LocalCluster

from pipeline.serve import VideoServer
from pipeline.store import FeatureStore
from tests.flows.conftest import copy_set, extract_config


def test_flow_on_a_dask_cluster_matches_the_in_process_run(reference_run, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from flows.extract import extract_features

    ref_data, ref_cfg, _ = reference_run
    data = copy_set(ref_data, tmp_path / "data")
    store = tmp_path / "features.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            VideoServer(data / "videos") as videos:
        cfg = extract_config(data, store, videos.url_template)
        report = extract_features(config=cfg.to_dict(), dask_address=cluster.scheduler_address)
    assert report["new_clips"] == 12 and report["audio_computed"] == {"logmel": 12}
    got, want = FeatureStore.open(store), FeatureStore.open(ref_cfg.store)
    for name in ("logmel", "openl3", "vgg16", "tce"):
        np.testing.assert_array_equal(got.mask(name), want.mask(name))
    np.testing.assert_array_equal(got.read_feature("logmel"), want.read_feature("logmel"))
    # Dask workers run torch with one intra-op thread (the nanny sets OMP_NUM_THREADS=1); oneDNN then sums in
    # another order, so image embeddings may differ in the last float16 bit from the 2-thread reference.
    for name in ("openl3", "vgg16", "tce"):
        np.testing.assert_allclose(got.read_feature(name).astype(np.float32), want.read_feature(name).astype(np.float32),
                                   rtol=1e-2, atol=1e-3, err_msg=name)
