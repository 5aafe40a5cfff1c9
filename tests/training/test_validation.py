"""Validation metrics during training: logged for student and teacher, equal to evaluation's own functions on the
checkpoint's predictions, and without effect on the trained parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from evaluation.evaluate import EvaluationConfig, score
from evaluation.psds import PSDS1
from evaluation.run import to_evaluation
from training.predict import predict
from training.train import train
from evaluation.validation import VALIDATION_METRICS, VALIDATOR, fixed_tuning

from .conftest import small_config, tiny_model


def test_validation_every_n_steps_is_logged_and_matches_evaluation(tmp_path, synthetic_store):
    # A fast learning rate and teacher, so that student and teacher already score differently after 8 steps.
    # The tiny model (dropout on): what is checked is the bookkeeping, not what the model learns.
    config = small_config(["logmel", "openl3"], steps=8, interpolation_weights=[0.75, 0.25], mixup_rate=0.5,
                          log_every=8, learning_rate=1e-2, ema_decay=0.8, model=tiny_model(dropout=True))
    plain = train(synthetic_store, config, tmp_path / "plain")
    config.validate_every = 3
    validated = train(synthetic_store, config, tmp_path / "validated", validator=VALIDATOR)
    # Validating reads the models in evaluation mode only: the trajectory is bit-identical.
    a = torch.load(plain.checkpoint, weights_only=False)
    b = torch.load(validated.checkpoint, weights_only=False)
    for key in ("model", "teacher"):
        assert all(torch.equal(v, b[key][n]) for n, v in a[key].items())

    log = [json.loads(x) for x in (tmp_path / "validated" / "log.jsonl").read_text().splitlines()]
    validation = {x["step"]: x["validation"] for x in log if "validation" in x}
    assert sorted(validation) == [3, 6, 8]  # every 3 steps, and the last step
    for entry in validation.values():
        for who in ("student", "teacher"):
            assert set(entry[who]) == set(VALIDATION_METRICS)
            assert all(0.0 <= v <= 1.0 for v in entry[who].values())
    assert [x["step"] for x in log if "total" in x] == [8]  # training lines are unchanged beside them

    # The final values are evaluation.score of the checkpoint's validation predictions (student and teacher)
    # at threshold 0.5, computed here through training.predict, independently of the training loop.
    for who, teacher in (("student", False), ("teacher", True)):
        preds = to_evaluation(predict(validated.checkpoint, synthetic_store, ["validation"], device="cpu",
                                      use_teacher=teacher))
        expected = score(preds, fixed_tuning(len(preds.classes)), EvaluationConfig(scenarios=(PSDS1,))).metrics
        for metric in VALIDATION_METRICS:
            assert validation[8][who][metric] == pytest.approx(expected[metric], abs=1e-6), (who, metric)
    assert validation[8]["student"] != validation[8]["teacher"]

    events = EventAccumulator(str(tmp_path / "validated" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"validation/{who}/{m}" for who in ("student", "teacher") for m in VALIDATION_METRICS} <= tags
    assert [e.step for e in events.Scalars("validation/teacher/psds1")] == [3, 6, 8]
    assert np.isclose(events.Scalars("validation/student/ebf1")[-1].value, validation[8]["student"]["ebf1"])


def test_training_validates_only_with_the_validator_its_caller_hands_it(tmp_path, synthetic_store):
    """Training imports no evaluation: `validate_every` without a validator is one line naming what to pass."""
    from training.config import TrainConfigError

    config = small_config(["logmel"], steps=2, validate_every=1)
    with pytest.raises(TrainConfigError, match="evaluation.validation.VALIDATOR") as refused:
        train(synthetic_store, config, tmp_path / "run")
    assert "\n" not in str(refused.value)
