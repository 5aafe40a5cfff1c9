"""The demo in --quick mode: every stage leaves its outputs, and the numbers come from the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.ledger import Ledger
from avsed.core.store import FeatureStore
from tests.flows.conftest import prefect_home, prefect_home_template  # noqa: F401 - the session fixture, shared


@pytest.mark.slow  # the whole demo: data, extraction, four models trained and evaluated, rerun, detect
def test_quick_demo_produces_every_stage_output(prefect_home_template, tmp_path):  # noqa: F811
    # A fresh process, as a user runs it: its Prefect flow runs get their own temporary API server (on a Prefect
    # home whose database is already migrated: a first start is tests/flows/test_prefect_in_process.py's subject).
    env = {**os.environ, "PREFECT_HOME": str(prefect_home(prefect_home_template, tmp_path / "prefect-home"))}
    env.pop("PREFECT_API_URL", None)
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "avsed.cli", "demo", "--quick", "--out", str(out)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    printed = run.stdout
    # 1. data set and 2. store
    assert (out / "data/metadata/train/weak.tsv").is_file() and any((out / "data/videos").glob("*.mp4"))
    store = FeatureStore.open(out / "features.zarr")
    assert store.n_clips == 24 and store.present("logmel").all()
    assert store.provenance("openl3")["weights"] == "random"
    assert 0 < store.present("openl3").sum() < 24
    ledger = Ledger(Ledger.path_for_store(out / "features.zarr"))
    counts = ledger.counts()
    ledger.close()
    # 3. models and 4. evaluations
    runs = sorted(p for p in (out / "runs").iterdir() if p.is_dir())
    assert len(runs) == 4
    for run in runs:
        assert (run / "checkpoint.pt").is_file() and (run / "config.yaml").is_file()
        result = json.loads((run / "evaluation/result.json").read_text())
        assert set(result["sets"]) >= {"all", "with_video"}
        assert (run / "evaluation/per_class.png").stat().st_size > 1000
        assert (run / "evaluation/psd_roc.png").stat().st_size > 1000
    for name in ("report.md", "metrics.csv", "split.csv", "psd_roc.png", "split_by_video.png", "split_by_video.md"):
        assert (out / "report" / name).stat().st_size > 100, name
    # 5. the incremental rerun recorded the vanished videos and did no new work
    summary = json.loads((out / "summary.json").read_text())
    rerun = summary["rerun"]
    assert len(rerun["vanished_videos"]) == 2 and rerun["newly_missing_cached"] == 2
    assert rerun["new_clips"] == 0 and rerun["audio_computed"] == {} and rerun["video_computed"] == {}
    assert counts["missing"] == summary["data"]["videos"]["missing"] + 2
    # what was printed is this run's numbers
    assert "incremental rerun after deleting 2 served videos" in printed
    ebf1 = summary["results"]["audio-only"]["all"]["ebf1"]
    assert f"{100 * ebf1:.1f}" in printed
    assert "bi-encoder minus audio-only" in printed
    # the learned bi-encoder's weights per clip, by what the video shows (the synthetic set's truth)
    rows = (out / "runs/bi-encoder_learned_weights/evaluation/learned_weights.csv").read_text().splitlines()
    assert rows[0] == "clip,partition,video_kind,weight_logmel,weight_openl3" and len(rows) > 1
    assert (out / "report/learned_weights.png").stat().st_size > 1000
    learned = summary["learned_weights"]["bi-encoder (learned weights)"]
    assert set(learned) <= {"content", "still", "black", "absent"} and learned
    assert "visual weight (1 - audio weight) by what the eval clip's video shows" in printed
    assert "Learned visual weight" in (out / "report/split_by_video.md").read_text()


def test_training_waves_cover_every_model_once_and_fit_the_cores():
    from avsed.demo import DEMO_MODELS, training_waves

    names = list(DEMO_MODELS)
    for cpus in (1, 2, 3, 16):
        waves = training_waves(names, cpus)
        flat = [n for wave in waves for n in wave]
        assert sorted(flat) == sorted(names), cpus
    assert training_waves(names, 1) == [[n] for n in names]
    assert training_waves(names, 16) == [names]
    # two cores: all four at once, one thread each (1-thread runs do the most work per second)
    assert training_waves(names, 2) == [names]
    assert "bi-encoder (learned weights)" in names
