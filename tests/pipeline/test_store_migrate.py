"""`avsed migrate-store`: a format-1 store (one file per clip and array, as earlier versions wrote it) becomes a
format-2 store with the same rows, labels, events, provenance and masks; the old store is kept."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import zarr

from avsed.core.classes import DESED_CLASSES
from avsed.core.labels import ClipTiming, Event
from avsed.core.store import FeatureStore, StoreError, StoreFormatError
from pipeline.store_migrate import migrate_store


def write_format1(path: Path, rng: np.random.Generator) -> dict:
    """A store exactly as format 1 laid it out (avsed/core/store.py before format 2)."""
    timing = ClipTiming()
    g = zarr.open_group(str(path), mode="w-", zarr_format=3)
    g.attrs.update({"format_version": 1, "classes": list(DESED_CLASSES), "timing": asdict(timing)})
    ids = ["Yaaaaaaaaaaa_0.000_10.000.wav", "12.wav", "Ybbbbbbbbbbb_30.000_40.000.wav"]
    cols = {"clip_id": ids, "partition": ["weak", "synthetic", "validation"],
            "supervision": ["weak", "strong", "strong"], "youtube_id": ["aaaaaaaaaaa", "", "bbbbbbbbbbb"]}
    for name, values in cols.items():
        arr = g.create_array(name, shape=(3,), chunks=(4096,), dtype=str, dimension_names=("clip",), fill_value="")
        arr[:] = np.asarray(values, dtype=object)
    g.create_array("duration", shape=(3,), chunks=(4096,), dtype="float32", fill_value=np.nan,
                   dimension_names=("clip",))[:] = np.array([10.0, 10.0, 9.5], np.float32)
    weak = np.zeros((3, 10), np.uint8)
    weak[0, 4] = weak[1, 2] = weak[2, 8] = 1
    g.create_array("weak_labels", shape=(3, 10), chunks=(4096, 10), dtype="uint8", fill_value=0,
                   dimension_names=("clip", "class"))[:] = weak
    events = {"event_clip": ([1, 2], "int32"), "event_onset": ([1.0, 0.5], "float32"),
              "event_offset": ([2.5, 3.0], "float32"), "event_class": ([2, 8], "int16")}
    for name, (values, dtype) in events.items():
        g.create_array(name, shape=(2,), chunks=(65536,), dtype=dtype, fill_value=0,
                       dimension_names=("event",))[:] = np.asarray(values, dtype=dtype)
    out = {}
    for name, frames, dim, dtype, rows in (("logmel", 512, 64, "float32", [0, 1, 2]),
                                           ("openl3", 64, 512, "float16", [0, 2])):
        arr = g.create_array(name, shape=(3, frames, dim), chunks=(1, frames, dim), dtype=dtype,
                             fill_value=np.nan, dimension_names=("clip", f"{name}_frame", f"{name}_dim"))
        mask = g.create_array(f"{name}_mask", shape=(3, frames), chunks=(1, frames), dtype="bool", fill_value=False,
                              dimension_names=("clip", f"{name}_frame"))
        data = rng.normal(size=(3, frames, dim)).astype(dtype)
        m = np.zeros((3, frames), bool)
        for r in rows:
            m[r, : frames - r] = True
            arr[r] = data[r]
            mask[r] = m[r]
        arr.attrs["provenance"] = {"extractor": name, "version": "1", "config": {}, "weights": "random"}
        out[name] = (data, m)
        mean = g.create_array(f"{name}_mean", shape=(dim,), dtype="float32", dimension_names=(f"{name}_dim",))
        mean[:] = 0
        mean.attrs.update({"partitions": ["synthetic", "weak", "unlabelled"]})
    return {"ids": ids, "features": out, "weak": weak}


def test_format1_store_migrates_with_every_row_label_and_mask(tmp_path):
    path = tmp_path / "features.zarr"
    old = write_format1(path, np.random.default_rng(0))
    with pytest.raises(StoreFormatError, match="migrate-store"):
        FeatureStore.open(path)
    report = migrate_store(path, clips_per_shard=2, progress=False)
    assert report.backup == tmp_path / "features.zarr.format1" and report.backup.is_dir()
    assert report.features == {"logmel": 3, "openl3": 2}
    s = FeatureStore.open(path)
    assert list(s.clip_ids()) == old["ids"] and s.partitions().tolist() == ["weak", "synthetic", "validation"]
    assert s.strings("youtube_id").tolist() == ["aaaaaaaaaaa", "", "bbbbbbbbbbb"]
    np.testing.assert_array_equal(s.column("weak_labels"), old["weak"])
    np.testing.assert_array_equal(s.column("duration"), [10.0, 10.0, 9.5])
    assert s.clip_events() == [[], [Event(1.0, 2.5, "Cat")], [Event(0.5, 3.0, "Speech")]]
    for name, (data, mask) in old["features"].items():
        np.testing.assert_array_equal(s.mask(name), mask)
        present = mask.any(axis=1)
        np.testing.assert_array_equal(s.read_feature(name)[present], data[present])
        assert s.provenance(name)["weights"] == "random"
    # statistics recomputed (training partitions: rows 0 and 1 for log-mel, row 0 for openl3)
    logmel, lmask = old["features"]["logmel"]
    frames = np.concatenate([logmel[0][lmask[0]], logmel[1][lmask[1]]]).astype(np.float64)
    np.testing.assert_allclose(s.stats("logmel")[0], frames.mean(axis=0), rtol=1e-5, atol=1e-6)
    shard_files = [p for p in (path / "logmel" / "c").rglob("*") if p.is_file()]
    assert s.clips_per_shard == 2 and len(shard_files) == 2  # 3 clips in 2 shard files
    with pytest.raises(StoreError, match="nothing to migrate"):
        migrate_store(path, progress=False)
