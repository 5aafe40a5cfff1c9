"""evaluate() end to end: tuning on validation, the five metrics on test, the availability split, JSON, tables, plots."""

import dataclasses
import json

import numpy as np
import pytest

from evaluation.evaluate import METRICS, EvaluationResult, evaluate, score
from evaluation.plots import plot_example_clip, plot_per_class, plot_psd_roc
from evaluation.report import group_by_model, metrics_table, split_table, to_markdown, write_report
from evaluation.synthetic import synthetic_predictions


@pytest.fixture(scope="module")
def results():
    validation = synthetic_predictions(60, seed=10)
    out = []
    for seed in (11, 12):
        test = synthetic_predictions(50, seed=seed)
        # "audio only": a worse model on the same clips
        audio_only = dataclasses.replace(test, frame_probs=np.clip(test.frame_probs * 0.7 + 0.1, 0, 1))
        out.append(evaluate(validation, test, split_by_availability=True, audio_only_test=audio_only,
                            info={"model": "bi_openl3", "seed": seed}))
    return validation, out


def test_evaluate_reports_five_metrics_on_every_set(results):
    validation, out = results
    r = out[0]
    assert set(r.sets) == {"all", "with_video", "without_video", "with_video_audio_only"}
    assert r.sets["with_video"].n_clips + r.sets["without_video"].n_clips == r.sets["all"].n_clips
    for s in r.sets.values():
        assert set(s.metrics) == set(METRICS)
        assert all(0 <= s.metrics[m] <= 1 for m in METRICS)
    assert r.sets["with_video_audio_only"].metrics["psds2"] != r.sets["with_video"].metrics["psds2"]
    # scoring the validation set with its own tuning reproduces the tuned validation scores
    own = score(validation, r.tuning)
    for m in ("cbf1", "sbf1", "ebf1"):
        assert own.metrics[m] == pytest.approx(getattr(r.tuning, m).validation_score)


def test_json_round_trip(results, tmp_path):
    r = results[1][0]
    path = r.save(tmp_path / "evaluation.json")
    json.loads(path.read_text())  # standard JSON (no NaN)
    back = EvaluationResult.load(path)
    assert back.sets["all"].metrics == r.sets["all"].metrics
    np.testing.assert_array_equal(back.tuning.ebf1.filter_sizes, r.tuning.ebf1.filter_sizes)


def test_tables_over_seeds(results, tmp_path):
    out = results[1]
    groups = group_by_model(out)
    rows = metrics_table(groups)
    vals = [r.sets["all"].metrics["ebf1"] * 100 for r in out]
    assert rows[0]["seeds"] == 2
    assert rows[0]["ebf1_mean"] == pytest.approx(np.mean(vals))
    assert rows[0]["ebf1_std"] == pytest.approx(np.std(vals, ddof=1))
    assert [r["set"] for r in split_table(groups)] == ["all", "with_video", "without_video", "with_video_audio_only"]
    md = to_markdown(rows)
    assert "±" in md and "bi_openl3" in md
    paths = write_report(out, tmp_path / "report")
    assert paths["markdown"].read_text().count("|") > 20 and paths["split_csv"].exists()


def test_plots_are_written(results, tmp_path):
    validation, out = results
    paths = [plot_psd_roc({"a": out[0], "b": out[1]}, tmp_path / "roc.png"),
             plot_per_class(out[0], tmp_path / "per_class.png"),
             plot_example_clip(np.random.default_rng(0).normal(size=(512, 64)), validation.encoder.encode_strong(validation.events[0]),
                               validation.frame_probs[0], np.ones(64, dtype=bool), validation.classes, tmp_path / "clip.png")]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
