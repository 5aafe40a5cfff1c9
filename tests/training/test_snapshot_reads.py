"""Training reads a consistent snapshot of a store that an extraction is growing (issue 24, item 1).

Readers take no lock, so a writer may add rows between a reader's two reads of a visual feature (its data and its
mask). The writer writes a row's data before its mask; a row may count as present only if its data was read after
its mask said so, else training uses the fill value as a real embedding. Likewise the label columns are read as of
one committed generation (the store's seqlock), not half before and half after a relabel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avsed.core.manifest import Clip
from avsed.core.store import FeatureStore
from training import data as training_data
from training.data import UNLABELLED, load_clips
from avsed.synthetic.stores import SyntheticStoreSpec, build_synthetic_store

PARTITIONS = ["synthetic", "weak", "unlabelled"]


def test_rows_added_between_a_readers_two_reads_are_never_loaded_as_fill(tmp_path, monkeypatch):
    path = tmp_path / "features.zarr"
    spec = SyntheticStoreSpec(clips={"synthetic": 2, "weak": 8, "unlabelled": 8}, visual={"openl3": 8},
                              missing_fraction=0.6, seed=3)
    build_synthetic_store(path, spec).close()
    reader = FeatureStore.open(path)
    absent = np.flatnonzero(~reader.present("openl3") & np.isin(reader.partitions(), ["weak", "unlabelled"]))
    assert len(absent) >= 3  # rows the "extraction" adds while training loads

    written = {}

    def writer_adds_rows() -> None:
        # What a running extraction does meanwhile: data first, then masks (one shard).
        w = FeatureStore.open(path, mode="r+")
        values = np.stack([np.full((w.timing.video_frames, 8), 1.0 + r, dtype=np.float32) for r in absent])
        w.write_rows("openl3", absent, values, np.ones((len(absent), w.timing.video_frames), dtype=bool))
        written.update({int(r): v for r, v in zip(absent, values)})

    # The reader pauses after its first read of the feature (data or mask, whichever comes first) while the
    # writer adds rows: the pause a full-size store's read takes.
    original_read_rows, original_mask = training_data._read_rows, FeatureStore.mask

    def pause_once() -> None:
        if not written:
            writer_adds_rows()

    def read_rows(store, name, rows, *a, **kw):
        out = original_read_rows(store, name, rows, *a, **kw)
        if name == "openl3":
            pause_once()
        return out

    def mask(self, feature):
        out = original_mask(self, feature)
        if feature == "openl3":
            pause_once()
        return out

    monkeypatch.setattr(training_data, "_read_rows", read_rows)
    monkeypatch.setattr(FeatureStore, "mask", mask)
    clips = load_clips(reader, PARTITIONS, ["logmel", "openl3"], standardise_visual=False)
    assert written, "the writer never ran between the reader's reads"

    available = clips.tensors.available[:, 1].numpy()
    visual = clips.tensors.visual[0].numpy()
    # No row marked available holds the fill value (NaN, read as 0): every available row holds what was written.
    fill_rows = [int(r) for r, a, v in zip(clips.rows, available, visual) if a and not np.abs(v).sum() > 0]
    assert fill_rows == [], f"rows loaded as available that hold the fill value: {fill_rows}"
    stored = reader.read_feature("openl3", clips.rows)
    for i in np.flatnonzero(available):
        np.testing.assert_array_equal(visual[i], stored[i])
    # Rows written during the load are either absent in it (and all zero) or loaded with their data.
    for i, r in enumerate(clips.rows):
        if int(r) in written and not available[i]:
            assert not visual[i].any() and clips.tensors.visual_valid[0][i].all()


def test_labels_relabelled_between_a_readers_reads_come_from_one_generation(tmp_path, monkeypatch):
    path = tmp_path / "features.zarr"
    spec = SyntheticStoreSpec(clips={"synthetic": 2, "weak": 4, "unlabelled": 4}, visual={}, seed=4)
    build_synthetic_store(path, spec).close()
    reader = FeatureStore.open(path)
    row = int(np.flatnonzero(reader.partitions() == "weak")[0])
    clip_id = reader.clip_ids()[row]
    assert reader.column("weak_labels")[row].any()

    def writer_relabels() -> None:
        # A corrected metadata file moved the clip to the unlabelled set: partition, supervision and labels change.
        with FeatureStore.create_or_open(path) as w:
            report = w.sync_clips([Clip(clip_id, "unlabelled", "unlabelled", Path(clip_id), None)])
            assert report.changes

    original = FeatureStore.partitions
    done = []

    def partitions(self):
        out = original(self)
        if not done:  # the reader pauses after its first label read while the extraction relabels
            done.append(True)
            writer_relabels()
        return out

    monkeypatch.setattr(FeatureStore, "partitions", partitions)
    clips = load_clips(reader, PARTITIONS, ["logmel"])
    assert done
    i = int(np.flatnonzero(clips.clip_ids == clip_id)[0])
    # One generation: the relabelled one (the read is retried), not the old partition with the new labels.
    assert (clips.partitions[i], int(clips.tensors.kind[i])) == ("unlabelled", UNLABELLED)
    assert not clips.tensors.weak[i].any()
