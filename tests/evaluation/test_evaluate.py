"""evaluate() end to end: tuning on validation, the five metrics on test, the availability split, JSON, tables, plots."""

import dataclasses
import json

import numpy as np
import pytest

from evaluation.evaluate import METRICS, EvaluationResult, availability_sets, evaluate, score
from evaluation.plots import plot_example_clip, plot_per_class, plot_psd_roc
from evaluation.predictions import Predictions
from evaluation.report import group_by_model, metrics_table, split_table, to_markdown, write_report
from avsed.synthetic.frame_probs import synthetic_predictions


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


def _split_fixture():
    """20 test clips, 14 with video (clips 0-13, perfect predictions) and 6 without (noise), so that the two
    subsets differ in size and in every metric; the forced audio-only predictions are silent on the clips with
    video, so that set differs from both."""
    base = synthetic_predictions(20, seed=21, events_per_clip=3.0)
    truth = np.stack([base.encoder.encode_strong(e) for e in base.events])
    noise = np.random.default_rng(0).random(truth.shape).astype(np.float32)
    video = np.arange(20) < 14
    frame = np.where(video[:, None, None], 0.05 + 0.9 * truth, noise)
    clip = np.where(video[:, None], 0.05 + 0.9 * base.weak_targets(), noise.max(axis=1))
    test = dataclasses.replace(base, frame_probs=frame, clip_probs=clip, video_available=video)
    silent = dataclasses.replace(test, frame_probs=np.where(video[:, None, None], 0.0, frame),
                                 clip_probs=np.where(video[:, None], 0.0, clip))
    return test, silent


def test_availability_split_direction():
    """Table 7's direction: "with video" is the clips whose video was available, "without video" the others, and
    "with video audio only" the forced audio-only predictions of the clips with video."""
    test, silent = _split_fixture()
    sets = availability_sets(test, silent)
    assert sets["with_video"].clip_ids.tolist() == test.clip_ids[:14].tolist()
    assert sets["without_video"].clip_ids.tolist() == test.clip_ids[14:].tolist()
    assert sets["with_video_audio_only"].clip_ids.tolist() == test.clip_ids[:14].tolist()
    np.testing.assert_array_equal(sets["with_video_audio_only"].frame_probs, silent.frame_probs[:14])
    np.testing.assert_array_equal(sets["with_video"].frame_probs, test.frame_probs[:14])

    validation = synthetic_predictions(30, seed=22)
    r = evaluate(validation, test, split_by_availability=True, audio_only_test=silent)
    assert (r.sets["with_video"].n_clips, r.sets["without_video"].n_clips, r.sets["with_video_audio_only"].n_clips) \
        == (14, 6, 14)
    # each set scores exactly its clips: the same numbers as scoring them on their own
    own = {"with_video": test.subset(np.arange(14)), "without_video": test.subset(np.arange(14, 20)),
           "with_video_audio_only": silent.subset(np.arange(14))}
    for name, preds in own.items():
        assert r.sets[name].metrics == score(preds, r.tuning).metrics, name
    assert r.sets["with_video"].metrics["cbf1"] > 0.9 > r.sets["without_video"].metrics["cbf1"]
    assert r.sets["with_video_audio_only"].metrics["cbf1"] == 0.0


def test_json_round_trip(results, tmp_path):
    validation = results[0]
    test = synthetic_predictions(30, seed=23)
    test = dataclasses.replace(test, events=[[e for e in evs if e.label != "Cat"] for evs in test.events])
    r = evaluate(validation, test, info={"model": "m", "seed": 0})
    # a class without references has NaN F1s: the file must hold them as null, not as NaN
    assert np.isnan(r.sets["all"].per_class["ebf1"]["Cat"])
    path = r.save(tmp_path / "evaluation.json")

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    json.loads(path.read_text(), parse_constant=refuse)  # standard JSON: no NaN / Infinity
    back = EvaluationResult.load(path)
    assert back.sets["all"].metrics == r.sets["all"].metrics
    assert back.sets["all"].per_class["ebf1"]["Cat"] is None
    np.testing.assert_array_equal(back.tuning.ebf1.filter_sizes, r.tuning.ebf1.filter_sizes)


def test_tables_over_seeds(results, tmp_path):
    out = results[1]
    groups = group_by_model(out)
    rows = metrics_table(groups)
    vals = [r.sets["all"].metrics["ebf1"] * 100 for r in out]
    assert rows[0]["seeds"] == 2
    assert rows[0]["ebf1_mean"] == pytest.approx(np.mean(vals))
    assert rows[0]["ebf1_std"] == pytest.approx(np.std(vals, ddof=1))
    # the split table holds the subsets only: the "all" rows are the metrics table
    assert [r["set"] for r in split_table(groups)] == ["with_video", "without_video", "with_video_audio_only"]
    md = to_markdown(rows)
    assert f"{rows[0]['ebf1_mean']:.2f} ± {rows[0]['ebf1_std']:.2f}" in md and "bi_openl3" in md
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
