"""The Zarr store (format 2): growth and relabelling, shards, masks, provenance, statistics, the writer lock, the
journal, and opening with xarray."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from avsed.core.labels import Event
from avsed.core.manifest import Clip
from avsed.core.stats import update_feature_stats
from avsed.core import store as store_module
from avsed.core.store import (FeatureStore, ProvenanceMismatch, StoreBusyError, StoreError, StoreFormatError, StoreLock,
                            StoreLockedError, journal_path)


def clip(name, partition="weak", labels=(), events=()):
    sup = {"weak": "weak", "unlabelled": "unlabelled"}.get(partition, "strong")
    return Clip(name, partition, sup, Path(name), None, tuple(labels), tuple(events))


class CountingStore(store_module.LocalStore):
    """zarr's LocalStore that records every key it writes or deletes."""

    log: list[str] = []

    async def set(self, key, value):
        CountingStore.log.append(key)
        return await super().set(key, value)

    async def delete(self, key):
        CountingStore.log.append("delete " + key)
        return await super().delete(key)


@pytest.fixture
def counted(monkeypatch):
    CountingStore.log = []
    monkeypatch.setattr(store_module, "_zarr_store", lambda path, read_only=False: CountingStore(str(path),
                                                                                                 read_only=read_only))
    return CountingStore.log


def test_grow_keeps_rows_and_events(tmp_path):
    with FeatureStore.create_or_open(tmp_path / "s.zarr") as s:
        rows = s.add_clips([clip("a.wav", labels=["Dog"]), clip("b.wav", "synthetic", ["Cat"], [Event(1, 2, "Cat")])])
        assert rows == [0, 1]
        s.ensure_feature("logmel", 512, 64, "float32", {"extractor": "logmel", "version": "1"})
        x = np.random.default_rng(0).normal(size=(512, 64)).astype(np.float32)
        s.write_row("logmel", 1, x, np.ones(512, bool))
        shard = (tmp_path / "s.zarr/logmel/c/0/0/0").read_bytes()
        rows = s.add_clips([clip("c.wav", "validation", ["Dog"], [Event(0, 1, "Dog")]), clip("a.wav", labels=["Dog"])])
        assert rows == [2, 0]
        assert (tmp_path / "s.zarr/logmel/c/0/0/0").read_bytes() == shard  # growing rewrites no feature data
    s = FeatureStore.open(tmp_path / "s.zarr")
    assert s.n_clips == 3 and s.group["logmel"].shape == (3, 512, 64) and s.mask("logmel").shape == (3, 512)
    assert s.present("logmel").tolist() == [False, True, False]
    np.testing.assert_array_equal(s.read_feature("logmel", 1), x)
    assert s.clip_events() == [[], [Event(1, 2, "Cat")], [Event(0, 1, "Dog")]]
    assert s.column("weak_labels")[:, 4].tolist() == [1, 0, 1]
    assert list(s.clip_ids()) == ["a.wav", "b.wav", "c.wav"]


def test_nothing_new_writes_nothing(tmp_path, counted):
    clips = [clip("a.wav", labels=["Dog"]), clip("b.wav", "synthetic", ["Cat"], [Event(1, 2, "Cat")])]
    with FeatureStore.create_or_open(tmp_path / "s.zarr") as s:
        s.sync_clips(clips)
    counted.clear()
    with FeatureStore.create_or_open(tmp_path / "s.zarr") as s:
        report = s.sync_clips(clips)
    assert report.rows == [0, 1] and report.new_clips == 0 and report.changes == []
    assert counted == []


def test_corrected_labels_are_reconciled_and_reported(tmp_path):
    with FeatureStore.create_or_open(tmp_path / "s.zarr") as s:
        s.sync_clips([clip("a.wav", labels=["Speech"]), clip("b.wav", "synthetic", ["Cat"], [Event(1, 2, "Cat")]),
                      clip("c.wav", "validation", ["Dog"], [Event(0, 1, "Dog")])])
        s.ensure_feature("f", 4, 2, "float32", {"extractor": "f"})
        s.write_row("f", 0, np.ones((4, 2)), np.ones(4, bool))
    with FeatureStore.create_or_open(tmp_path / "s.zarr") as s:
        report = s.sync_clips([clip("a.wav", labels=["Dog"]),
                               clip("b.wav", "synthetic", ["Cat", "Dog"], [Event(1, 2, "Cat"), Event(3, 4.5, "Dog")]),
                               clip("c.wav", "eval", ["Dog"], [Event(0, 1, "Dog")])])
    assert report.new_clips == 0
    changes = {(c.clip_id, c.what): (c.before, c.after) for c in report.changes}
    assert changes == {("a.wav", "weak labels"): ("Speech", "Dog"),
                       ("b.wav", "weak labels"): ("Cat", "Cat,Dog"),
                       ("b.wav", "events"): ("1-2 Cat", "1-2 Cat; 3-4.5 Dog"),
                       ("c.wav", "partition"): ("validation/strong", "eval/strong")}
    s = FeatureStore.open(tmp_path / "s.zarr")
    assert s.clip_events() == [[], [Event(1, 2, "Cat"), Event(3, 4.5, "Dog")], [Event(0, 1, "Dog")]]
    names = list(s.classes)
    assert s.column("weak_labels")[0].tolist() == [int(c == "Dog") for c in names]
    assert s.partitions().tolist() == ["weak", "synthetic", "eval"]
    assert s.present("f").tolist() == [True, False, False]  # features are not labels: kept


def test_rows_are_sharded_and_writes_stay_inside_one_shard(tmp_path, counted):
    with FeatureStore.create_or_open(tmp_path / "s.zarr", clips_per_shard=4) as s:
        s.sync_clips([clip(f"{i}.wav") for i in range(10)])
        s.ensure_feature("f", 3, 2, "float16", {"extractor": "f"})
        assert [s.shard_of(r) for r in (0, 3, 4, 9)] == [0, 0, 1, 2] and list(s.shard_rows(2)) == [8, 9]
        counted.clear()
        s.write_rows("f", [5, 7], np.ones((2, 3, 2)), np.ones((2, 3), bool))
        assert counted == ["f/c/1/0/0", "f_mask/c/1/0"]  # data before mask, one write each
        with pytest.raises(StoreError, match="span shards"):
            s.write_rows("f", [3, 4], np.ones((2, 3, 2)), np.ones((2, 3), bool))
        with pytest.raises(StoreError, match="all-False"):
            s.write_rows("f", [8], np.ones((1, 3, 2)), np.zeros((1, 3), bool))
        with pytest.raises(StoreError, match="shape"):
            s.write_rows("f", [8], np.ones((1, 2, 2)), np.ones((1, 2), bool))
        s.write_rows("f", [6], np.full((1, 3, 2), 2.0), np.array([[True, True, False]]))
    s = FeatureStore.open(tmp_path / "s.zarr")
    assert s.present("f").nonzero()[0].tolist() == [5, 6, 7]
    np.testing.assert_array_equal(s.read_feature("f", 5), np.ones((3, 2)))  # row 5 survived the merge of row 6
    np.testing.assert_array_equal(s.read_feature("f", 6), np.full((3, 2), 2.0))


def test_xarray_opens_the_consolidated_store_without_warnings(tmp_path):
    with FeatureStore.create_or_open(tmp_path / "s.zarr") as s:
        s.sync_clips([clip("Yaaaaaaaaaaa_0_10.wav", labels=["Dog"]), clip("b.wav", "synthetic", ["Cat"], [Event(1, 2, "Cat")])])
        s.ensure_feature("logmel", 512, 64, "float32", {"extractor": "logmel"})
        s.ensure_feature("openl3", 64, 8, "float16", {"extractor": "openl3"})
        s.write_row("openl3", 0, np.ones((64, 8)), np.ones(64, bool))
        s.consolidate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(tmp_path / "s.zarr")
    row = ds.sel(clip="Yaaaaaaaaaaa_0_10.wav")
    assert row["openl3"].shape == (64, 8) and bool(row["openl3_mask"].all())
    assert int(row["weak_labels"].sel({"class": "Dog"})) == 1
    np.testing.assert_allclose(ds["logmel_frame"].values[:2], [0.0, 313 / 16000], rtol=1e-6)
    np.testing.assert_allclose(ds["openl3_frame"].values[:2], [0.078125, 0.234375])
    assert ds["logmel"].dims == ("clip", "logmel_frame", "logmel_dim")


def test_provenance_mismatch_names_the_setting_and_both_values(tmp_path):
    with FeatureStore.create_or_open(tmp_path / "s.zarr") as s:
        s.sync_clips([clip("a.wav")])
        prov = {"extractor": "openl3", "weights": "sha256:aa", "config": {"frame_size": 64, "autocast": "none"}}
        s.ensure_feature("openl3", 64, 8, "float16", prov)
        s.ensure_feature("openl3", 64, 8, "float16", json.loads(json.dumps(prov)))
        with pytest.raises(ProvenanceMismatch, match=r"config.frame_size: store has 64, now 32") as err:
            s.ensure_feature("openl3", 64, 8, "float16", {**prov, "config": {"frame_size": 32, "autocast": "none"}})
        assert "only copy" in str(err.value)
        with pytest.raises(ProvenanceMismatch, match=r"weights: store has 'sha256:aa', now 'random'"):
            s.ensure_feature("openl3", 64, 8, "float16", {**prov, "weights": "random"})


def _stats_store(path, clips_per_shard=2):
    s = FeatureStore.create_or_open(path, clips_per_shard=clips_per_shard)
    s.sync_clips([clip("a.wav", "weak"), clip("b.wav", "unlabelled"), clip("c.wav", "validation"), clip("d.wav", "weak")])
    s.ensure_feature("logmel", 4, 2, "float32", {"extractor": "logmel"})
    s.write_row("logmel", 0, np.array([[1, 10], [3, 10], [99, 99], [99, 99]], np.float32), np.array([1, 1, 0, 0], bool))
    s.write_row("logmel", 1, np.array([[5, 20]] * 4, np.float32), np.ones(4, bool))
    s.write_row("logmel", 2, np.full((4, 2), 1000, np.float32), np.ones(4, bool))  # validation: not used
    return s


def test_stats_over_training_partitions_only_real_frames(tmp_path):
    with _stats_store(tmp_path / "s.zarr") as s:
        attrs = update_feature_stats(s, "logmel")
        mean, std = s.stats("logmel")
    vals0 = np.array([1, 3, 5, 5, 5, 5.0])
    vals1 = np.array([10, 10, 20, 20, 20, 20.0])
    np.testing.assert_allclose(mean, [vals0.mean(), vals1.mean()], rtol=1e-6)
    np.testing.assert_allclose(std, [vals0.std(), vals1.std()], rtol=1e-5)
    assert attrs["frames"] == 6 and attrs["rows"] == 2 and attrs["updated"] == "full"


def test_stats_are_updated_incrementally_and_skipped_when_nothing_changed(tmp_path, counted):
    with _stats_store(tmp_path / "s.zarr") as s:
        update_feature_stats(s, "logmel")
        counted.clear()
        assert update_feature_stats(s, "logmel")["updated"] == "none"
        assert counted == []
        s.write_row("logmel", 3, np.array([[7, 1]] * 4, np.float32), np.ones(4, bool))
        attrs = update_feature_stats(s, "logmel")
        assert attrs["updated"] == "incremental" and attrs["rows"] == 3 and attrs["frames"] == 10
        mean, std = s.stats("logmel")
        vals = np.array([[1, 10], [3, 10]] + [[5, 20]] * 4 + [[7, 1]] * 4, dtype=np.float64)
        np.testing.assert_allclose(mean, vals.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(std, vals.std(axis=0), rtol=1e-5)
        # a row that leaves the training partitions: its shard is recomputed
        s.sync_clips([clip("a.wav", "weak"), clip("b.wav", "validation"), clip("c.wav", "validation"),
                      clip("d.wav", "weak")])
        attrs = update_feature_stats(s, "logmel")
        assert attrs["updated"] == "incremental" and attrs["rows"] == 2
        np.testing.assert_allclose(s.stats("logmel")[0], np.array([[1, 10], [3, 10]] + [[7, 1]] * 4).mean(axis=0))
        # the history of updates leaves no trace in the bits: a computation from scratch gives the same arrays
        updated = {n: np.asarray(s.group[n][:]) for n in ("logmel_mean", "logmel_std", "logmel_shard_sums")}
        s.group["logmel_mean"].attrs.update({"complete": False})
        assert update_feature_stats(s, "logmel")["updated"] == "full"
        for name, values in updated.items():
            np.testing.assert_array_equal(np.asarray(s.group[name][:]), values, err_msg=name)


def test_incomplete_stats_read_as_absent_and_are_recomputed(tmp_path):
    with _stats_store(tmp_path / "s.zarr") as s:
        update_feature_stats(s, "logmel")
        s.group["logmel_mean"].attrs.update({"complete": False})  # what a kill inside write_stats leaves
        assert s.stats("logmel") is None
        assert update_feature_stats(s, "logmel")["updated"] == "full"
        assert s.stats("logmel") is not None


def test_structural_changes_need_the_writer_lock(tmp_path):
    FeatureStore.create_or_open(tmp_path / "s.zarr").close()
    s = FeatureStore.open(tmp_path / "s.zarr", mode="r+")
    with pytest.raises(RuntimeError, match="writer lock"):
        s.sync_clips([clip("a.wav")])


def _hold_lock_in_subprocess(store: Path):
    code = ("import sys, time; from avsed.core.store import StoreLock\n"
            f"StoreLock({str(store)!r}, purpose='extract').acquire(); print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_with_the_holder_and_a_killed_holder_frees_the_store(tmp_path):
    store = tmp_path / "s.zarr"
    proc = _hold_lock_in_subprocess(store)
    try:
        with pytest.raises(StoreLockedError, match=rf"extract \(pid {proc.pid} on .*wait for that run"):
            FeatureStore.create_or_open(store)
        assert not store.exists()
    finally:
        proc.kill()
        proc.wait()
    FeatureStore.create_or_open(store).close()  # the kernel released the dead holder's lock
    with StoreLock(store):  # re-entrant within one process
        with FeatureStore.create_or_open(store) as s:
            s.sync_clips([clip("a.wav")])
        assert StoreLock.held(store)
    assert not StoreLock.held(store)


def test_a_run_refused_while_the_holder_writes_its_record_still_names_the_holder(tmp_path):
    """The holder truncates the lock file and then writes its record: a run refused in between read an empty file
    and said "another run" (the full suite saw it once on a loaded machine). The lock is taken here with an empty
    record, and the record is written 0.2 s later."""
    import fcntl
    import json
    import threading

    store = tmp_path / "s.zarr"
    lock_file = tmp_path / "s.zarr.lock"
    record = {"host": "gpu7", "pid": 4242, "purpose": "extract", "since": "2026-12-07T22:00:00+0000"}
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    writer = threading.Timer(0.2, lambda: os.pwrite(fd, json.dumps(record).encode(), 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: a conflicting lock, even in this process
        writer.start()
        with pytest.raises(StoreLockedError, match=r"being written by extract \(pid 4242 on gpu7"):
            StoreLock(store, purpose="extract").acquire()
    finally:
        writer.cancel()
        writer.join()
        os.close(fd)


def test_an_interrupted_change_is_finished_by_the_next_writer_and_refused_to_readers(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    with FeatureStore.create_or_open(path) as s:
        s.sync_clips([clip("a.wav", labels=["Dog"])])
    # Stop the change right after its journal is written and the arrays grew, before anything is committed.
    real_apply = FeatureStore._apply_journal

    def dies_after_growing(self, journal):
        for _, arr in self.group.arrays():
            if (arr.metadata.dimension_names or ())[:1] == ("clip",):
                arr.resize((journal["n_clips"],) + arr.shape[1:])
        raise KeyboardInterrupt

    monkeypatch.setattr(FeatureStore, "_apply_journal", dies_after_growing)
    s = FeatureStore.create_or_open(path)
    with pytest.raises(KeyboardInterrupt):
        s.sync_clips([clip("a.wav", labels=["Dog"]), clip("b.wav", "synthetic", ["Cat"], [Event(1, 2, "Cat")])])
    s.close()
    monkeypatch.setattr(FeatureStore, "_apply_journal", real_apply)
    monkeypatch.setattr(store_module, "_READ_RETRIES", 2)
    assert journal_path(path).exists()
    with pytest.raises(StoreBusyError, match="rerun `avsed extract`"):
        FeatureStore.open(path)
    with FeatureStore.create_or_open(path) as s:  # a writer replays the journal first
        assert s.n_clips == 2 and not journal_path(path).exists()
    r = FeatureStore.open(path)
    assert list(r.clip_ids()) == ["a.wav", "b.wav"] and r.clip_events() == [[], [Event(1, 2, "Cat")]]


def test_creation_is_atomic_and_leftovers_are_swept(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"

    def dies(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "_rename", dies)
    with pytest.raises(KeyboardInterrupt):
        FeatureStore.create_or_open(path)
    assert not path.exists() and list(tmp_path.glob(".s.zarr.creating-*"))
    monkeypatch.undo()
    FeatureStore.create_or_open(path).close()
    assert not list(tmp_path.glob(".s.zarr.creating-*")) and FeatureStore.open(path).n_clips == 0


def test_format_1_store_names_the_migration_command(tmp_path):
    g = zarr.open_group(str(tmp_path / "old.zarr"), mode="w-", zarr_format=3)
    g.attrs.update({"format_version": 1})
    with pytest.raises(StoreFormatError, match=r"avsed migrate-store .*old.zarr"):
        FeatureStore.open(tmp_path / "old.zarr")


def test_not_a_store_is_one_clear_error(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "something").write_text("")
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore.create_or_open(tmp_path / "x.zarr")
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore.open(tmp_path / "nothing.zarr")
    assert not os.path.exists(tmp_path / "nothing.zarr")
