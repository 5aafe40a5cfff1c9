"""The Zarr store: growth, masks, provenance and lazy opening with xarray."""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pipeline.labels import Event
from pipeline.manifest import Clip
from pipeline.stats import update_feature_stats
from pipeline.store import FeatureStore, ProvenanceMismatch, StoreError


def clip(name, partition="weak", labels=(), events=()):
    sup = {"weak": "weak", "unlabelled": "unlabelled"}.get(partition, "strong")
    return Clip(name, partition, sup, Path(name), None, tuple(labels), tuple(events))


def test_grow_keeps_rows_and_events(tmp_path):
    s = FeatureStore.create_or_open(tmp_path / "s.zarr")
    rows = s.add_clips([clip("a.wav", labels=["Dog"]), clip("b.wav", "synthetic", ["Cat"], [Event(1, 2, "Cat")])])
    assert rows == [0, 1]
    s.ensure_feature("logmel", 512, 64, "float32", {"extractor": "logmel", "version": "1"})
    x = np.random.default_rng(0).normal(size=(512, 64)).astype(np.float32)
    s.write_row("logmel", 1, x, np.ones(512, bool))
    chunk = (tmp_path / "s.zarr/logmel/c/1/0/0").read_bytes()
    rows = s.add_clips([clip("c.wav", "validation", ["Dog"], [Event(0, 1, "Dog")]), clip("a.wav")])
    assert rows == [2, 0]
    s = FeatureStore.open(tmp_path / "s.zarr")
    assert s.n_clips == 3 and s.group["logmel"].shape == (3, 512, 64) and s.mask("logmel").shape == (3, 512)
    assert s.present("logmel").tolist() == [False, True, False]
    assert (tmp_path / "s.zarr/logmel/c/1/0/0").read_bytes() == chunk
    np.testing.assert_array_equal(s.read_feature("logmel", 1), x)
    assert s.clip_events() == [[], [Event(1, 2, "Cat")], [Event(0, 1, "Dog")]]
    assert s.column("weak_labels")[:, 4].tolist() == [1, 0, 1]
    ds = xr.open_zarr(tmp_path / "s.zarr", consolidated=False)
    assert ds["logmel"].dims == ("clip", "logmel_frame", "logmel_dim") and ds.sizes["clip"] == 3


def test_mask_written_after_data_and_refuses_empty(tmp_path):
    s = FeatureStore.create_or_open(tmp_path / "s.zarr")
    s.add_clips([clip("a.wav")])
    s.ensure_feature("f", 4, 2, "float16", {"extractor": "f"})
    with pytest.raises(StoreError, match="all-False"):
        s.write_row("f", 0, np.zeros((4, 2)), np.zeros(4, bool))
    with pytest.raises(StoreError, match="shape"):
        s.write_row("f", 0, np.zeros((3, 2)), np.ones(3, bool))
    assert not s.present("f")[0]


def test_provenance_mismatch_refused(tmp_path):
    s = FeatureStore.create_or_open(tmp_path / "s.zarr")
    s.add_clips([clip("a.wav")])
    s.ensure_feature("vgg16", 64, 8, "float16", {"extractor": "vgg16", "weights": "sha256:aa"})
    s.ensure_feature("vgg16", 64, 8, "float16", {"extractor": "vgg16", "weights": "sha256:aa"})
    with pytest.raises(ProvenanceMismatch, match="only copy"):
        s.ensure_feature("vgg16", 64, 8, "float16", {"extractor": "vgg16", "weights": "random"})


def test_stats_over_training_partitions_only_real_frames(tmp_path):
    s = FeatureStore.create_or_open(tmp_path / "s.zarr")
    s.add_clips([clip("a.wav", "weak"), clip("b.wav", "unlabelled"), clip("c.wav", "validation")])
    s.ensure_feature("logmel", 4, 2, "float32", {"extractor": "logmel"})
    s.write_row("logmel", 0, np.array([[1, 10], [3, 10], [99, 99], [99, 99]], np.float32), np.array([1, 1, 0, 0], bool))
    s.write_row("logmel", 1, np.array([[5, 20]] * 4, np.float32), np.ones(4, bool))
    s.write_row("logmel", 2, np.full((4, 2), 1000, np.float32), np.ones(4, bool))  # validation: not used
    attrs = update_feature_stats(s, "logmel")
    mean, std = s.stats("logmel")
    vals0 = np.array([1, 3, 5, 5, 5, 5.0])
    vals1 = np.array([10, 10, 20, 20, 20, 20.0])
    np.testing.assert_allclose(mean, [vals0.mean(), vals1.mean()], rtol=1e-6)
    np.testing.assert_allclose(std, [vals0.std(), vals1.std()], rtol=1e-5)
    assert attrs["frames"] == 6 and attrs["rows"] == 2
