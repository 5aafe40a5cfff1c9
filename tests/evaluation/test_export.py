"""Exported predictions read back with the field's own readers give the metrics evaluate() reported."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sed_scores_eval.base_modules.io import read_audio_durations, read_ground_truth_events, read_sed_scores
from sed_scores_eval.intersection_based import psds as sse_psds

from evaluation.evaluate import EvaluationConfig, evaluate
from evaluation.export import audio_id, export_predictions
from evaluation.psds import PSDS1, PSDS2, psds_scores
from avsed.synthetic.frame_probs import synthetic_predictions
from avsed.synthetic.field_libraries import desed_task_sed_eval


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    validation = synthetic_predictions(40, seed=50)
    test = synthetic_predictions(30, seed=51, short_fraction=0.3)
    test = dataclasses.replace(test, events=[[]] + test.events[1:])  # a clip without events: an empty-field row
    config = EvaluationConfig(threshold_independent_psds=True)
    result = evaluate(validation, test, config)
    out = tmp_path_factory.mktemp("export")
    stale = out / "scores" / "Yold_clip_0_10.tsv"  # left by an earlier evaluation of other clips: must go
    stale.parent.mkdir(parents=True)
    stale.write_text("onset\toffset\n")
    return test, result, export_predictions(test, result.tuning, out)


def test_desed_task_tsvs_give_the_reported_f1(exported):
    test, result, paths = exported
    truth = pd.read_csv(paths["ground_truth"], sep="\t")
    assert truth["filename"].nunique() == test.n_clips and truth.iloc[0].isna()[["onset", "event_label"]].all()
    sbf1 = pd.read_csv(paths["predictions_sbf1"], sep="\t")
    ebf1 = pd.read_csv(paths["predictions_ebf1"], sep="\t")
    assert list(sbf1.columns) == ["filename", "onset", "offset", "event_label"] and len(ebf1) > 0
    _, segment = desed_task_sed_eval(sbf1, truth)
    event, _ = desed_task_sed_eval(ebf1, truth)
    assert segment.results_overall_metrics()["f_measure"]["f_measure"] == pytest.approx(result.sets["all"].metrics["sbf1"], abs=1e-12)
    assert event.results_class_wise_average_metrics()["f_measure"]["f_measure"] == pytest.approx(
        result.sets["all"].metrics["ebf1"], abs=1e-12)


def test_score_tables_give_the_reported_psds(exported):
    test, result, paths = exported
    scores = read_sed_scores(paths["scores"])
    truth = read_ground_truth_events(paths["ground_truth"])
    durations = read_audio_durations(paths["durations"])
    assert sorted(scores) == sorted(audio_id(c) for c in test.clip_ids) == sorted(truth) == sorted(durations)
    assert list(scores[audio_id(test.clip_ids[0])].columns) == ["onset", "offset", *test.classes]
    for sc in (PSDS1, PSDS2):
        value, *_ = sse_psds(scores, truth, durations, dtc_threshold=sc.dtc, gtc_threshold=sc.gtc,
                             cttc_threshold=sc.cttc, alpha_ct=sc.alpha_ct, alpha_st=sc.alpha_st,
                             unit_of_time=sc.duration_unit, max_efpr=sc.max_efpr)
        assert value == pytest.approx(result.sets["all"].threshold_independent[f"{sc.name}_threshold_independent"], abs=1e-9)
    # the tables hold the exact probabilities: the paper's 50-point PSDS from them is the reported one
    probs = np.stack([scores[audio_id(c)][list(test.classes)].to_numpy() for c in test.clip_ids])
    ours = psds_scores(probs, test.events, test.durations, test.classes, test.timing)
    for name in ("psds1", "psds2"):
        assert ours[name].value == result.sets["all"].metrics[name]


def test_clips_that_would_share_a_score_table_are_refused(tmp_path):
    preds = synthetic_predictions(2, seed=52)
    preds = dataclasses.replace(preds, clip_ids=np.array(["Yabc_0_10.wav", "Yabc_0_10.flac"]))
    with pytest.raises(ValueError, match=r"clips Yabc_0_10.wav and Yabc_0_10.flac would share the score table"):
        export_predictions(preds, evaluate(preds, preds).tuning, tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything was written
