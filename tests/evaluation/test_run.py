"""Evaluating a trained run: the audio-weight choice (paper 3.2.2), the teacher, and `avsed evaluate` from argv."""

import dataclasses
import json

import numpy as np
import pytest

from evaluation.evaluate import tune
from evaluation.predictions import Predictions
from evaluation.run import PAPER_AUDIO_WEIGHTS, select_audio_weight
from avsed.synthetic.frame_probs import synthetic_predictions


def _blur_time(p: Predictions, width: int) -> Predictions:
    """Frame probabilities smeared over `width` frames: clips and segments survive, event boundaries do not."""
    kernel = np.ones(width) / width
    smeared = np.apply_along_axis(lambda x: np.convolve(x, kernel, mode="same"), 1, p.frame_probs)
    return dataclasses.replace(p, frame_probs=np.clip(smeared * 1.6, 0, 1).astype(np.float32))


def test_audio_weight_is_chosen_by_validation_ebf1():
    """Validation predictions at each of the paper's audio weights, made so that every other rule picks another
    weight: 0.5 has the sharpest frames (best EBF1) but noisy clip tags; 0.75 the best clip tags (best CBF1) and
    smeared frames; 0.875, the largest weight (the tie-breaker), is noisy; 0.25, the first, is smeared too."""
    clean = synthetic_predictions(60, seed=40, noise=0.05)
    weak = clean.weak_targets()
    noisy_tags = np.clip(weak * 0.3 + np.random.default_rng(1).random(weak.shape) * 0.7, 0, 1)
    by_weight = {
        0.25: dataclasses.replace(_blur_time(clean, 9), clip_probs=noisy_tags),
        0.5: dataclasses.replace(clean, clip_probs=noisy_tags),
        0.75: dataclasses.replace(_blur_time(clean, 7), clip_probs=0.1 + 0.8 * weak),
        0.875: synthetic_predictions(60, seed=40, noise=0.6),
    }
    best, scores = select_audio_weight(by_weight)
    assert best == 0.5
    tunings = {w: tune(p) for w, p in by_weight.items()}
    assert scores == {w: t.ebf1.validation_score for w, t in tunings.items()}
    assert scores[0.5] > max(v for w, v in scores.items() if w != 0.5)
    # the rules a mistake would use pick other weights on these inputs
    assert max(tunings, key=lambda w: tunings[w].cbf1.validation_score) == 0.75
    # a tie goes to the larger audio weight
    same = {w: clean.subset(np.arange(10)) for w in PAPER_AUDIO_WEIGHTS}
    assert select_audio_weight(same)[0] == 0.875


def _run(tmp_path_factory):
    import torch

    from tests.training.conftest import small_config
    from avsed.synthetic.stores import SyntheticStoreSpec, build_synthetic_store
    from training.train import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evaluate_run")
    store = root / "features.zarr"
    build_synthetic_store(store, SyntheticStoreSpec(
        clips={"synthetic": 8, "weak": 8, "unlabelled": 8, "validation": 12, "eval": 14},
        visual={"openl3": 24}, missing_fraction=0.4, seed=3))
    # a high learning rate and a slow teacher: after a few steps student and teacher differ clearly
    train(store, small_config(["logmel", "openl3"], steps=3, learning_rate=1e-2), root / "run")
    return store, root / "run"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _run(tmp_path_factory)


def test_choose_audio_weight_predicts_validation_at_each_weight(trained):
    from evaluation.run import choose_audio_weight, to_evaluation
    from training.predict import predict

    store, run = trained
    best, scores = choose_audio_weight(run, store, PAPER_AUDIO_WEIGHTS, device="cpu")
    own = {w: to_evaluation(predict(run, store, ["validation"], audio_weight=w, device="cpu")) for w in PAPER_AUDIO_WEIGHTS}
    assert (best, scores) == select_audio_weight(own)
    # the weight reaches the model: the four validation predictions differ
    assert len({own[w].frame_probs.tobytes() for w in PAPER_AUDIO_WEIGHTS}) == 4


def test_evaluation_loads_once_and_scores_what_predict_gives(trained):
    """evaluate_checkpoint reads the checkpoint once and each partition once (training/predict.py: load_trained,
    load_store_clips); its test predictions are those of a one-call `predict` of that partition at the chosen
    weight, bit for bit, and a partition without clips is one line naming it, as load_clips says it."""
    from evaluation.run import evaluate_checkpoint
    from training.data import TrainingDataError
    from training.predict import predict

    store, run = trained
    done = evaluate_checkpoint(run, store, audio_weight_grid=PAPER_AUDIO_WEIGHTS, device="cpu", example_clips=0)
    alone = predict(run, store, ["eval"], audio_weight=done.result.info["audio_weight"], device="cpu")
    assert list(done.test.clip_ids) == list(alone.clip_ids)
    np.testing.assert_array_equal(done.test.frame_probs, alone.frame_probs)
    np.testing.assert_array_equal(done.test.clip_probs, alone.clip_probs)
    with pytest.raises(TrainingDataError, match=r"no clips with logmel in partitions \['nowhere'\]"):
        evaluate_checkpoint(run, store, validation_partition="nowhere", device="cpu", example_clips=0)


@pytest.mark.slow  # end to end: `avsed evaluate` twice on a trained run, with every plot
def test_evaluate_teacher_from_argv(trained, tmp_path, capsys):
    from avsed.cli import main
    from evaluation.run import to_evaluation
    from training.predict import predict

    store, run = trained
    assert main(["evaluate", "--checkpoint", str(run), "--store", str(store), "--teacher", "--split-by-availability",
                 "--out", str(tmp_path / "teacher")]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--store", str(store), "--out", str(tmp_path / "student")]) == 0
    teacher = json.loads((tmp_path / "teacher" / "result.json").read_text())
    student = json.loads((tmp_path / "student" / "result.json").read_text())
    assert teacher["info"]["teacher"] is True and student["info"]["teacher"] is False
    assert teacher["info"]["model"] == student["info"]["model"] + ", teacher"
    assert "teacher" in capsys.readouterr().out
    # the teacher's predictions are what was scored and exported, and they are not the student's
    t = to_evaluation(predict(run, store, ["eval"], use_teacher=True, device="cpu"))
    s = to_evaluation(predict(run, store, ["eval"], device="cpu"))
    assert not np.allclose(t.frame_probs, s.frame_probs, atol=1e-4)
    for name, preds in (("teacher", t), ("student", s)):
        first = preds.clip_ids[0].rsplit(".", 1)[0]
        table = np.loadtxt(tmp_path / name / "predictions" / "scores" / f"{first}.tsv", skiprows=1)
        np.testing.assert_array_equal(table[:, 2:], preds.masked_frame_probs()[0].astype(np.float64))
