"""End to end: synthetic DESED clips -> yt-dlp via the loopback server -> frames, log-mel, OpenL3 -> Zarr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.download import DownloadConfig
from pipeline.extract import run_extraction
from pipeline.ledger import Ledger
from avsed.synthetic.video_host import VideoServer
from pipeline.status import store_status
from avsed.core.store import FeatureStore
from tests.flows.conftest import ROOT, copy_set, extract_config, prefect_home
from tests.pipeline.extracted_store import FRAME_SIZE
from tests.flows.faults import KILLED, run_killed_at_event

# end to end (every test reads the session's reference extraction): the full suite's, not the fast tier's
pytestmark = pytest.mark.slow


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
        assert prov["extractor"] == name and prov["weights"] == "random" and prov["config"]["input_size"] == FRAME_SIZE
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
    """Only the three new clips are computed, video features included; earlier rows stay byte-identical; vanished
    videos are recorded when the re-check is due."""
    ref_data, ref_cfg, _ = reference_run
    data = copy_set(ref_data, tmp_path / "data")
    store_path = tmp_path / "features.zarr"
    shutil.copytree(ref_cfg.store, store_path)
    shutil.copy(ref_cfg.ledger_path, Ledger.path_for_store(store_path))
    before = FeatureStore.open(store_path)
    old_ids = list(before.clip_ids())
    old = _arrays(store_path)
    youtube = dict(zip(old_ids, before.strings("youtube_id")))
    available = [cid for cid, p in zip(old_ids, before.present("openl3")) if p]
    assert len(available) >= 5
    # each new clip gets a different served video: two ids with the same moving pictures stop a run (suspect)
    vanished, sources = available[:2], available[2:5]
    for cid in vanished:
        (data / "videos" / f"{youtube[cid]}.mp4").unlink()
    # three new weak clips with real videos (copies of a clip whose video is still served) and real audio
    new_lines, new_ids = [], []
    weak_tsv = data / "metadata/train/weak.tsv"
    rows = weak_tsv.read_text().splitlines()
    for k, source in enumerate(sources):
        yid = f"newclip{k:04d}"
        name = f"Y{yid}_0.000_10.000.wav"
        shutil.copy(next((data / "audio").rglob(source)), data / "audio/train/weak" / name)
        shutil.copy(data / "videos" / f"{youtube[source]}.mp4", data / "videos" / f"{yid}.mp4")
        new_lines.append(f"{name}\tDog")
        new_ids.append(name)
    weak_tsv.write_text("\n".join(rows + new_lines) + "\n")
    with VideoServer(data / "videos") as server:
        # re-check every cached video now (by default only those last checked 30 days ago or more)
        cfg = extract_config(data, store_path, server.url_template, recheck_after_days=0)
        report = run_extraction(cfg, progress=False)
    assert report.new_clips == 3
    assert report.audio_computed == {"logmel": 3}
    assert report.videos_downloaded == 3 and report.videos_missing == 0
    assert report.video_computed == {"openl3": 3, "vgg16": 3, "tce": 3}
    assert report.newly_missing_cached == 2
    after = FeatureStore.open(store_path)
    ids = list(after.clip_ids())
    assert ids[:12] == old_ids and sorted(ids[12:]) == sorted(new_ids)
    for name in ("logmel", "openl3", "vgg16", "tce"):
        present = after.present(name)
        assert present[12:].all(), name  # exactly the new clips were added, all with their features
        np.testing.assert_array_equal(present[:12], old[f"{name}_mask"].any(axis=1), err_msg=name)
        np.testing.assert_array_equal(after.read_feature(name, slice(0, 12)), old[name], err_msg=name)
        np.testing.assert_array_equal(after.mask(name)[:12], old[f"{name}_mask"], err_msg=name)
    assert after.present("openl3")[[old_ids.index(c) for c in vanished]].all()  # the only copy left is kept
    ledger = Ledger(Ledger.path_for_store(store_path))
    for cid in vanished:
        e = ledger.get(cid)
        assert (e.status, e.reason) == ("missing", "not_found") and "kept" in e.message
    assert all(ledger.get(c).status == "available" for c in new_ids)
    ledger.close()
    # a third run has nothing left to do, and asks the host about nothing (everything was checked just now)
    with VideoServer(data / "videos") as server:
        cfg = extract_config(data, store_path, server.url_template)
        again = run_extraction(cfg, progress=False)
        assert server.requests() == {}
    assert again.new_clips == 0 and again.audio_computed == {} and again.video_computed == {}
    assert again.videos_downloaded == 0 and again.newly_missing_cached == 0


def _arrays(store_path: Path) -> dict[str, np.ndarray]:
    store = FeatureStore.open(store_path)
    return {name: np.asarray(arr[:]) for name, arr in store.group.arrays()}


@pytest.mark.parametrize("event,k", [("downloaded", 1), ("embedded", 1), ("written", 1)],
                         ids=["mid-download", "mid-embed", "mid-write"])
def test_killed_run_resumes_to_the_same_store(reference_run, tmp_path, event, k):
    """Killed (as abruptly as SIGKILL) while downloading, between embedding a batch and writing it, and between the
    writes of two shards; a rerun then gives a store equal to an uninterrupted run's, array by array."""
    ref_data, ref_cfg, _ = reference_run
    data = copy_set(ref_data, tmp_path / "data")
    store_path = tmp_path / "features.zarr"
    total = int(FeatureStore.open(ref_cfg.store).present("openl3").sum())
    with VideoServer(data / "videos") as server:
        cfg = extract_config(data, store_path, server.url_template)
        # a child forked from a server that has imported the extraction (tests/flows/faults.py): no interpreter
        # start with torch per kill
        assert run_killed_at_event(cfg.to_dict(), event, k) == KILLED
        killed_with = int(FeatureStore.open(store_path).present("openl3").sum())
        assert killed_with < total  # killed mid-run, not after it
        if event != "written":
            assert killed_with == 0  # killed before any video row was handed to the writer
        run_extraction(cfg, progress=False)
    got, want = _arrays(store_path), _arrays(Path(ref_cfg.store))
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    ref_ledger, ledger = Ledger(ref_cfg.ledger_path), Ledger(Ledger.path_for_store(store_path))
    assert {k: (e.status, e.reason) for k, e in ledger.entries().items()} == \
        {k: (e.status, e.reason) for k, e in ref_ledger.entries().items()}


def test_streamed_store_equals_a_clip_by_clip_reference(reference_run, tmp_path):
    """Every row of the streamed store (clips batched together, several decoders, rows written a shard at a time)
    equals, bit for bit, the clip computed on its own: its kept video decoded and embedded alone by each CNN, its
    audio read and turned into log-mel alone."""
    from features.base import build_extractor
    from pipeline.audio import load_clip_audio
    from pipeline.download import clip_start_in, find_video
    from pipeline.extract import extractor_settings
    from pipeline.frames import decode_frames
    from avsed.core.manifest import parse_clip_name

    ref_data, ref_cfg, _ = reference_run
    data = copy_set(ref_data, tmp_path / "data")
    store_path = tmp_path / "features.zarr"
    with VideoServer(data / "videos") as server:
        cfg = extract_config(data, store_path, server.url_template,
                             download=DownloadConfig(url_template=server.url_template, keep_videos=True))
        run_extraction(cfg, progress=False)
    store = FeatureStore.open(store_path)
    # keeping the videos changes nothing in the store
    got, want = _arrays(store_path), _arrays(Path(ref_cfg.store))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    cnns = {name: build_extractor(name, extractor_settings(cfg, name)) for name in ("openl3", "vgg16", "tce")}
    logmel = build_extractor("logmel")
    audio_paths = {p.name: p for p in (data / "audio").rglob("*.wav")}
    checked = 0
    for row, cid in enumerate(store.clip_ids()):
        audio = load_clip_audio(audio_paths[cid], cid, store.timing)
        np.testing.assert_array_equal(store.read_feature("logmel", row), logmel.extract(audio.waveform, store.timing))
        path = find_video(cfg.video_path, cid)
        if path is None:
            assert not store.present("openl3")[row]
            continue
        clip = decode_frames(path, cid, store.timing, size=cfg.frame_size,
                             start=clip_start_in(path, parse_clip_name(cid)))
        for name, ex in cnns.items():
            alone = ex.embed(clip.frames).astype(np.float16)
            np.testing.assert_array_equal(store.read_feature(name, row), alone, err_msg=f"{name} {cid}")
            np.testing.assert_array_equal(store.mask(name)[row], clip.valid)
        checked += 1
    assert checked == int(store.present("openl3").sum()) >= 4


def test_in_process_flow_prints_no_traceback_and_a_refusal_is_one_line(synth_set, prefect_home_template, tmp_path):
    """`avsed extract` through Prefect in-process: a run prints no traceback (Prefect's own machinery included),
    and an expected error (a missing weights file) is one line, from a plan task tried once. (On a copy of the
    migrated Prefect home: the same on a fresh one is tests/flows/test_prefect_in_process.py's first test.)"""
    data = copy_set(synth_set, tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # the CLI's own defaults apply
    home = prefect_home(prefect_home_template, tmp_path / "prefect-home")
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
               AVSED_WEIGHTS_DIR=str(tmp_path / "no-weights"), TORCH_HOME=str(tmp_path / "no-torch-home"))
    with VideoServer(data / "videos") as server:
        base = [sys.executable, "-m", "avsed.cli", "extract", "--metadata", str(data / "metadata"), "--audio-dir",
                str(data / "audio"), "--url-template", server.url_template]
        ok = subprocess.run(base + ["--store", str(tmp_path / "a.zarr"), "--features", "logmel"], env=env,
                            capture_output=True, text=True, timeout=600)
        refused = subprocess.run(base + ["--store", str(tmp_path / "b.zarr"), "--features", "logmel,openl3"], env=env,
                                 capture_output=True, text=True, timeout=600)
    out = ok.stdout + ok.stderr
    assert ok.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "database is locked" not in out
    assert "audio features computed {'logmel': 12}" in ok.stdout
    out = refused.stdout + refused.stderr
    assert refused.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("avsed extract: error:")]
    assert len(errors) == 1, out[-3000:]
    assert errors[0].startswith("avsed extract: error: openl3: pretrained weights file 'openl3_image_mel256_env.h5' "
                                "not found") and "--allow-random-weights" in errors[0]
    # the plan task ran once: no retry of an error that cannot succeed on a retry
    assert out.count("Task run 'plan' - Finished in state Failed") == 1 and "Retry" not in out


RUN_AFTER_SETTING_THREADS = """
import json, sys
import torch
torch.set_num_threads(int(sys.argv[2]))  # what the process said before the extraction (a notebook, the demo)
from pipeline.extract import ExtractConfig, run_extraction
run_extraction(ExtractConfig.from_dict(json.loads(sys.argv[1])), progress=False)
"""


def test_the_image_networks_threads_are_their_setting_whatever_the_process_said_before(synth_set, tmp_path):
    """Two processes, one that set torch to 1 thread first and one to 2, extract with `num_threads` 1: the same
    bits. VGG16's GEMMs round differently with 2 threads (found as a Prefect worker's store that differed from
    the reference run's in the last float16 bit of 2685 values in one suite run; a thread's MKL count was not
    always the setting). Fails when the setting is not honoured in the thread that runs the network."""
    stores = {}
    for threads in (1, 2):
        data = copy_set(synth_set, tmp_path / f"data{threads}")
        stores[threads] = tmp_path / f"features{threads}.zarr"
        with VideoServer(data / "videos") as server:
            cfg = extract_config(data, stores[threads], server.url_template, features=("logmel", "vgg16"))
            run = subprocess.run([sys.executable, "-c", RUN_AFTER_SETTING_THREADS, json.dumps(cfg.to_dict()),
                                  str(threads)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                 capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    one, two = _arrays(stores[1]), _arrays(stores[2])
    assert FeatureStore.open(stores[1]).present("vgg16").sum() >= 4
    for name in one:
        np.testing.assert_array_equal(two[name], one[name], err_msg=name)
