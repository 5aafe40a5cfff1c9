"""A run knows what it was trained on (issue 24, item 4): the checkpoint records the store's identity, and a
resume on a store whose training data changed refuses in one line naming the change, unless accepted
(`--accept-changed-store`, then said in the run's log). Checkpoints without the identity resume with a warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avsed.cli import main
from avsed.core.manifest import Clip, YouTubeSegment
from avsed.core.stats import update_feature_stats
from avsed.core.store import FeatureStore
from training.checkpoint import CHECKPOINT
from avsed.synthetic.stores import SyntheticStoreSpec, build_synthetic_store
from training.train import load_training_data, resolve_device, train

from .conftest import small_config, tiny_model

SPEC = SyntheticStoreSpec(clips={"synthetic": 8, "weak": 8, "unlabelled": 8, "validation": 2, "eval": 2},
                          visual={"openl3": 8}, missing_fraction=0.4, seed=5)


def _store(tmp_path: Path) -> Path:
    path = tmp_path / "features.zarr"
    build_synthetic_store(path, SPEC).close()
    return path


def _add_weak_clips(path: Path, n: int) -> None:
    """What an extraction rerun over metadata with `n` more weak clips does: rows, log-mel, statistics."""
    rng = np.random.default_rng(0)
    with FeatureStore.create_or_open(path) as store:
        t = store.timing
        clips = [Clip(f"Yadd{i:08d}_0.000_10.000.wav", "weak", "weak", Path("x.wav"),
                      YouTubeSegment(f"add{i:08d}", 0.0, 10.0), ("Dog",)) for i in range(n)]
        rows = store.add_clips(clips)
        store.set_durations(rows, np.full(n, t.clip_seconds, dtype=np.float32))
        store.write_rows("logmel", rows, rng.normal(-4, 1, (n, t.mel_frames, t.n_mels)).astype(np.float32),
                         np.ones((n, t.mel_frames), dtype=bool))
        update_feature_stats(store, "logmel")


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow  # a training, a refused and an accepted resume through the CLI (the tiny model since 2026-12-07)
def test_resume_on_a_changed_store_refuses_in_one_line_unless_accepted(tmp_path, capsys):
    store, run = _store(tmp_path), tmp_path / "run"
    config = small_config(("logmel", "openl3"), steps=6, model=tiny_model())
    train(store, config, run, stop_after=3)
    ckpt = torch.load(run / CHECKPOINT, weights_only=False)
    assert ckpt["store_identity"]["clips"] == 24 and ckpt["store_identity"]["partitions"]["weak"] == 8
    _add_weak_clips(store, 4)
    saved, log_before = (run / CHECKPOINT).read_bytes(), (run / "log.jsonl").read_text()
    capsys.readouterr()

    assert main(["train", "--store", str(store), "--out", str(run), "--resume"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert str(store) in err[0] and "at step 3" in err[0] and "training clips 24 -> 28 (weak +4)" in err[0]
    assert "statistics of logmel" in err[0] and "--accept-changed-store" in err[0]
    # Nothing trained, nothing rewritten.
    assert (run / CHECKPOINT).read_bytes() == saved and (run / "log.jsonl").read_text() == log_before

    assert main(["train", "--store", str(store), "--out", str(run), "--resume", "--accept-changed-store"]) == 0
    assert "resuming on a changed store as asked" in capsys.readouterr().err
    notes = [h for h in _log(run) if "store_changed" in h]
    assert len(notes) == 1 and notes[0]["step"] == 3 and "weak +4" in notes[0]["store_changed"]
    assert [h["step"] for h in _log(run) if "total" in h] == [1, 2, 3, 4, 5, 6]
    # The checkpoint now records the store it went on with: a later resume checks against that one.
    after = torch.load(run / CHECKPOINT, weights_only=False)
    assert after["step"] == 6 and after["store_identity"]["clips"] == 28
    now = load_training_data(store, config, resolve_device("cpu")).identity
    assert after["store_identity"] == now


def test_unchanged_store_resumes_silently_and_old_checkpoints_warn(tmp_path, capsys):
    store, run = _store(tmp_path), tmp_path / "run"
    config = small_config(("logmel", "openl3"), steps=6, model=tiny_model())
    train(store, config, run, stop_after=2)
    capsys.readouterr()
    train(store, None, run, resume=True, stop_after=4)  # the same store: no word
    assert capsys.readouterr().err.strip() == ""
    assert not any("store_changed" in h or "store_unverified" in h for h in _log(run))
    # A checkpoint written before checkpoints recorded the store: resumed, with one warning line and a log note.
    ckpt = torch.load(run / CHECKPOINT, weights_only=False)
    del ckpt["store_identity"]
    torch.save(ckpt, run / CHECKPOINT)
    result = train(store, None, run, resume=True)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning:") and "does not record the store's identity" in err[0], err
    assert result.steps == 6
    notes = [h for h in _log(run) if "store_unverified" in h]
    assert len(notes) == 1 and notes[0]["step"] == 4
    assert "store_identity" in torch.load(run / CHECKPOINT, weights_only=False)
