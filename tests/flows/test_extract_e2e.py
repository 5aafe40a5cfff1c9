"""End to end: synthetic DESED clips -> yt-dlp via the loopback server -> frames, log-mel, OpenL3 -> Zarr."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.extract import run_extraction
from pipeline.ledger import Ledger
from pipeline.serve import VideoServer
from pipeline.status import store_status
from pipeline.store import FeatureStore
from tests.flows.conftest import copy_set, extract_config


def truth(data: Path) -> dict[str, dict[str, str]]:
    lines = (data / "truth/videos.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return {row.split("\t")[0]: dict(zip(header, row.split("\t"))) for row in lines[1:]}


def test_store_shapes_masks_ledger_and_provenance(reference_run):
    data, cfg, report = reference_run
    store = FeatureStore.open(cfg.store)
    n = store.n_clips
    assert n == 12 and report.new_clips == 12
    assert store.group["logmel"].shape == (n, 512, 64)
    assert store.group["openl3"].shape == (n, 64, 512)
    assert store.group["vgg16"].shape == (n, 64, 4096)
    assert store.group["tce"].shape == (n, 64, 2048)
    for name in ("vgg16", "tce"):  # every visual feature's mask agrees with the ledger, as openl3's below
        np.testing.assert_array_equal(store.present(name), store.present("openl3"))
    assert store.present("logmel").all()
    ledger = Ledger(cfg.ledger_path)
    entries = ledger.entries()
    ledger.close()
    kinds = truth(data)
    present = store.present("openl3")
    for row, cid in enumerate(store.clip_ids()):
        kind = kinds[cid]["kind"] if cid in kinds else "absent"
        entry = entries[cid]
        if store.strings("youtube_id")[row] == "":
            assert (entry.status, entry.reason) == ("missing", "no_youtube_id") and not present[row]
        elif kind == "absent":
            assert (entry.status, entry.reason) == ("missing", "not_found"), entry
            assert not present[row]
        else:  # content, still image and black screen videos are all available
            assert entry.status == "available" and present[row], (cid, entry)
    assert report.videos_downloaded == int(present.sum())
    for name in ("openl3", "vgg16", "tce"):
        prov = store.provenance(name)
        assert prov["extractor"] == name and prov["weights"] == "random" and prov["config"]["input_size"] == 64
    assert store.provenance("logmel")["weights"] == "none"
    mean, std = store.stats("logmel")
    assert mean.shape == (64,) and np.all(std > 0)
    # Every visual feature gets the same statistics (training partitions, real frames only), computed by dask.
    training = np.isin(store.partitions(), ["synthetic", "weak", "unlabelled"])
    for name, dim in (("openl3", 512), ("vgg16", 4096), ("tce", 2048)):
        rows = np.flatnonzero(training & store.present(name))
        assert rows.size > 0
        frames = store.read_feature(name, rows).astype(np.float64)[store.mask(name)[rows]]
        mean, std = store.stats(name)
        assert mean.shape == (dim,)
        np.testing.assert_allclose(mean, frames.mean(axis=0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(std, frames.std(axis=0), rtol=1e-3, atol=1e-5)
    status = store_status(cfg.store)
    assert status["clips"] == 12 and status["features"]["openl3"]["present"] == int(present.sum())
    assert status["videos"]["available"] == int(present.sum())
    assert sum(status["partitions"].values()) == 12


def test_short_clip_padding_is_masked(reference_run):
    data, cfg, _ = reference_run
    store = FeatureStore.open(cfg.store)
    durations = store.column("duration")
    masks = store.mask("logmel")
    timing = store.timing
    for d, m in zip(durations, masks):
        assert m.sum() == timing.valid_mel_frames(float(d))


def test_rerun_after_videos_vanish_and_clips_are_added(reference_run, synth_set, tmp_path):
    """Only the three new clips are computed; earlier rows stay byte-identical; vanished videos are recorded."""
    ref_data, ref_cfg, _ = reference_run
    data = copy_set(ref_data, tmp_path / "data")
    store_path = tmp_path / "features.zarr"
    shutil.copytree(ref_cfg.store, store_path)
    shutil.copy(ref_cfg.ledger_path, Ledger.path_for_store(store_path))
    before = FeatureStore.open(store_path)
    old_ids = list(before.clip_ids())
    old_logmel = before.read_feature("logmel")
    old_openl3 = before.read_feature("openl3")
    available = [cid for cid, p, y in zip(old_ids, before.present("openl3"), before.strings("youtube_id")) if p]
    vanished = available[:2]
    for cid in vanished:
        (data / "videos" / f"{before.strings('youtube_id')[old_ids.index(cid)]}.mp4").unlink()
    # three new weak clips whose videos exist: reuse existing audio and videos under new names
    new_lines = []
    weak_tsv = data / "metadata/train/weak.tsv"
    rows = weak_tsv.read_text().splitlines()
    src_clip = next(r.split("\t")[0] for r in rows[1:])
    src_id = src_clip[1:12]
    for k in range(3):
        yid = f"newclip{k:04d}"
        name = f"Y{yid}_0.000_10.000.wav"
        shutil.copy(data / "audio/train/weak" / src_clip, data / "audio/train/weak" / name)
        video = data / "videos" / f"{src_id}.mp4"
        if video.exists():
            shutil.copy(video, data / "videos" / f"{yid}.mp4")
        new_lines.append(f"{name}\tDog")
    weak_tsv.write_text("\n".join(rows + new_lines) + "\n")
    with VideoServer(data / "videos") as server:
        cfg = extract_config(data, store_path, server.url_template)
        report = run_extraction(cfg, progress=False)
    assert report.new_clips == 3
    assert report.audio_computed == {"logmel": 3}
    assert sum(report.video_computed.values()) == report.videos_downloaded <= 3
    assert report.newly_missing_cached == 2
    after = FeatureStore.open(store_path)
    assert list(after.clip_ids()[:12]) == old_ids
    np.testing.assert_array_equal(after.read_feature("logmel", slice(0, 12)), old_logmel)
    np.testing.assert_array_equal(after.read_feature("openl3", slice(0, 12)), old_openl3)
    assert after.present("openl3")[[old_ids.index(c) for c in vanished]].all()  # the only copy left is kept
    ledger = Ledger(Ledger.path_for_store(store_path))
    for cid in vanished:
        e = ledger.get(cid)
        assert (e.status, e.reason) == ("missing", "not_found") and "kept" in e.message
    ledger.close()
    # a third run has nothing left to do
    with VideoServer(data / "videos") as server:
        cfg = extract_config(data, store_path, server.url_template)
        again = run_extraction(cfg, progress=False)
    assert again.new_clips == 0 and again.audio_computed == {} and again.video_computed == {}
    assert again.videos_downloaded == 0


def _arrays(store_path: Path) -> dict[str, np.ndarray]:
    store = FeatureStore.open(store_path)
    return {name: np.asarray(arr[:]) for name, arr in store.group.arrays()}


def test_killed_run_resumes_to_the_same_store(reference_run, tmp_path):
    ref_data, ref_cfg, _ = reference_run
    data = copy_set(ref_data, tmp_path / "data")
    store_path = tmp_path / "features.zarr"
    with VideoServer(data / "videos") as server:
        cfg = extract_config(data, store_path, server.url_template)
        (tmp_path / "extract.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        args = [sys.executable, "-m", "avsed.cli", "extract", "--engine", "plain", "--config",
                str(tmp_path / "extract.yaml"), "--json"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed_at = None
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                n = int(FeatureStore.open(store_path).present("openl3").sum())
            except Exception:
                n = 0
            if n >= 1:
                proc.send_signal(signal.SIGKILL)
                killed_at = n
                break
            time.sleep(0.05)
        proc.wait()
        assert killed_at is not None, "the run finished before it could be killed"
        total = int(FeatureStore.open(ref_cfg.store).present("openl3").sum())
        assert killed_at < total
        run_extraction(cfg, progress=False)
    got, want = _arrays(store_path), _arrays(Path(ref_cfg.store))
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    ref_ledger, ledger = Ledger(ref_cfg.ledger_path), Ledger(Ledger.path_for_store(store_path))
    assert {k: (e.status, e.reason) for k, e in ledger.entries().items()} == \
        {k: (e.status, e.reason) for k, e in ref_ledger.entries().items()}
