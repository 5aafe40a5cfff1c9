"""Device-side draws: batch schedule, mixup decision / ratio / partners, random interpolation weights.

Distribution checks run over thousands of real draws (no mocks): a mixup that pairs nothing, or pairs strong
with weak clips, or a fixed audio weight, fails them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from avsed.core.store import FeatureStore
from training.data import TrainingDataError, load_clips
from training.draws import DRAW_CHUNK, BatchSchedule, draw_chunk
from training.step import base_interpolation_weights, prepared_batch
from training.train import train

from .conftest import small_config, tiny_model

KIND = torch.tensor([0] * 5 + [1] * 3 + [2] * 7)
TRAIN_KINDS = {"synthetic": "strong", "weak": "weak", "unlabelled": "unlabelled"}


def _many(schedule: BatchSchedule, chunks: int, **kw):
    args = dict(mixup_rate=0.33, mixup_alpha=0.2, audio_low=0.25, audio_high=1.0) | kw
    return [draw_chunk(schedule, c, **args) for c in range(chunks)]


def test_batch_schedule_composition_coverage_and_purity():
    schedule = BatchSchedule(KIND, [2, 2, 4], seed=3)
    assert schedule.slices == [slice(0, 2), slice(2, 4), slice(4, 8)]
    idx = schedule.indices(0, 7)
    assert idx.shape == (7, 8) and idx.dtype == torch.int64
    assert all(KIND[row].tolist() == [0, 0, 1, 1, 2, 2, 2, 2] for row in idx)
    # Every unlabelled clip is drawn once per pass (7 clips, 4 per step: 4 full passes in 7 steps).
    assert sorted(idx[:, 4:].flatten().tolist()) == sorted(list(range(8, 15)) * 4)
    # A pure function of (seed, step): any split into chunks and a fresh schedule give the same batches.
    assert torch.equal(torch.cat([schedule.indices(0, 3), schedule.indices(3, 4)]), idx)
    assert torch.equal(BatchSchedule(KIND, [2, 2, 4], seed=3).indices(5, 2), idx[5:7])
    assert not torch.equal(BatchSchedule(KIND, [2, 2, 4], seed=4).indices(0, 7), idx)
    with pytest.raises(TrainingDataError, match="weak"):
        BatchSchedule(torch.tensor([0, 2]), [1, 1, 1], seed=0)


def test_draws_depend_only_on_seed_and_chunk():
    a, b = BatchSchedule(KIND, [2, 2, 4], seed=7), BatchSchedule(KIND, [2, 2, 4], seed=7)
    d0, again = draw_chunk(a, 0, 0.33, 0.2, 0.25, 1.0), draw_chunk(b, 0, 0.33, 0.2, 0.25, 1.0)
    for name in ("indices", "mix", "lam", "partner", "audio_weight"):
        assert torch.equal(getattr(d0, name), getattr(again, name)), name
        assert getattr(d0, name).shape[0] == DRAW_CHUNK
    d1 = draw_chunk(a, 1, 0.33, 0.2, 0.25, 1.0)
    other = draw_chunk(BatchSchedule(KIND, [2, 2, 4], seed=8), 0, 0.33, 0.2, 0.25, 1.0)
    assert not torch.equal(d0.lam, d1.lam) and not torch.equal(d0.lam, other.lam)
    # The chunk's batch indices are the schedule's steps of that chunk.
    assert torch.equal(d1.indices, a.indices(DRAW_CHUNK, DRAW_CHUNK))


def test_mixup_partners_stay_within_their_kind_and_move_clips():
    sizes = [4, 4, 8]
    kind = torch.tensor([0] * 9 + [1] * 9 + [2] * 17)
    draws = _many(BatchSchedule(kind, sizes, seed=0), 8)
    partner = torch.cat([d.partner for d in draws])  # (steps, 16)
    position_kind = torch.tensor([0] * 4 + [1] * 4 + [2] * 8)
    assert torch.equal(position_kind[partner], position_kind.expand_as(partner))  # strong with strong, ...
    assert all(sorted(row.tolist()) == list(range(16)) for row in partner[:50])  # a permutation per step
    # A uniform permutation within groups of 4, 4 and 8 fixes 3 of 16 positions on average: most clips move,
    # and every position gets many different partners.
    moved = (partner != torch.arange(16)).float().mean().item()
    assert abs(moved - (1 - 3 / 16)) < 0.03, moved
    assert all(len(set(partner[:, i].tolist())) == (4 if i < 8 else 8) for i in range(16))


def test_prepared_batch_mixes_exactly_the_drawn_pairs(synthetic_store):
    store = FeatureStore.open(synthetic_store)
    features = load_clips(store, list(TRAIN_KINDS), ["logmel", "openl3"], kinds=TRAIN_KINDS).tensors
    schedule = BatchSchedule(features.kind, [4, 4, 4], seed=2)
    draws = draw_chunk(schedule, 0, 0.5, 0.2, 0.25, 1.0)
    mixed_step = int(torch.nonzero(draws.mix & (draws.lam > 0.05) & (draws.lam < 0.95))[0])
    plain_step = int(torch.nonzero(~draws.mix)[0])
    for step, mixes in ((mixed_step, True), (plain_step, False)):
        d = draws.at(step)
        batch = prepared_batch(features, d, torch.float32)
        raw = features.take(d.indices)
        lam = float(d.lam) if mixes else 1.0
        expect = lam * raw.logmel + (1 - lam) * raw.logmel[d.partner]
        assert torch.allclose(batch.logmel, expect, atol=1e-5)
        assert torch.allclose(batch.weak, lam * raw.weak + (1 - lam) * raw.weak[d.partner], atol=1e-6)
        if mixes:
            assert torch.equal(batch.available, raw.available & raw.available[d.partner])
            assert not torch.allclose(batch.logmel, raw.logmel)  # something moved
        else:
            assert torch.equal(batch.logmel, raw.logmel) and torch.equal(batch.available, raw.available)


def test_mixup_rate_and_beta_ratios_over_many_batches():
    draws = _many(BatchSchedule(KIND, [2, 2, 4], seed=5), 16)
    mix = torch.cat([d.mix for d in draws]).double()
    lam = torch.cat([d.lam for d in draws]).numpy()
    n = len(mix)
    assert abs(mix.mean().item() - 0.33) < 4 * np.sqrt(0.33 * 0.67 / n)
    assert np.isfinite(lam).all() and lam.min() >= 0 and lam.max() <= 1
    assert stats.kstest(lam, stats.beta(0.2, 0.2).cdf).pvalue > 1e-3
    assert stats.kstest(lam, stats.uniform(0, 1).cdf).pvalue < 1e-6  # Beta(0.2, 0.2) is not uniform
    never = draw_chunk(BatchSchedule(KIND, [2, 2, 4], seed=5), 0, 0.0, 0.2, 0.25, 1.0)
    assert not never.mix.any()


@pytest.mark.parametrize("encoders", [["logmel", "openl3"], ["logmel", "openl3", "tce"]])
def test_random_interpolation_weights_are_uniform_per_batch(encoders):
    """Paper 3.2.2: audio weight ~ U(0.25, 1) per batch, the rest split equally between the visual streams."""
    config = small_config(encoders, interpolation_weights="random")
    draws = _many(BatchSchedule(KIND, [2, 2, 4], seed=11), 12)
    base = torch.stack([base_interpolation_weights(config, a, torch.float64)
                        for d in draws for a in d.audio_weight])
    audio = base[:, 0].numpy()
    assert audio.min() >= 0.25 and audio.max() <= 1.0
    assert stats.kstest(audio, stats.uniform(0.25, 0.75).cdf).pvalue > 1e-3
    assert audio.min() < 0.3 and audio.max() > 0.95  # the whole range is used
    assert torch.allclose(base.sum(1), torch.ones(len(base), dtype=torch.float64))
    assert torch.allclose(base[:, 1:], ((1 - base[:, :1]) / (len(encoders) - 1)).expand(-1, len(encoders) - 1))
    fixed = small_config(encoders, interpolation_weights=[0.75] + [0.25 / (len(encoders) - 1)] * (len(encoders) - 1))
    assert base_interpolation_weights(fixed, draws[0].audio_weight[0], torch.float64)[0] == 0.75


def test_training_uses_the_drawn_weights_and_mixup(tmp_path, synthetic_store):
    """The log's per-step audio weight and mixup flag are the ones the step used: they equal the draws."""
    config = small_config(["logmel", "openl3"], steps=5, interpolation_weights="random", mixup_rate=0.5, seed=4,
                          model=tiny_model(dropout=True))
    train(synthetic_store, config, tmp_path / "run")
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    kind = load_clips(FeatureStore.open(synthetic_store), list(TRAIN_KINDS), ["logmel"], kinds=TRAIN_KINDS).tensors.kind
    draws = draw_chunk(BatchSchedule(kind, [4, 4, 4], seed=4), 0, 0.5, 0.2, 0.25, 1.0)
    assert [round(x["audio_weight"], 6) for x in log] == [round(float(a), 6) for a in draws.audio_weight[:5]]
    assert [x["mixup_fraction"] for x in log] == [float(m) for m in draws.mix[:5]]
    assert len({x["audio_weight"] for x in log}) == 5
