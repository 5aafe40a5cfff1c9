"""Shared fixtures for the training tests: a small synthetic store and a small model config."""

from __future__ import annotations

import pytest
import torch

from training.config import CNNConfig, ModelConfig, TrainConfig
from avsed.synthetic.stores import SyntheticStoreSpec, build_synthetic_store

torch.set_num_threads(1)


def small_model(architecture: str = "transformer") -> ModelConfig:
    # Same structure as the paper's model (7 CNN blocks, 3 + 3 blocks, 3 heads), narrower, for CPU tests.
    return ModelConfig(architecture=architecture, d_model=32, heads=3, d_head=16, ff_dim=64,
                       cnn=CNNConfig(filters=[8, 16, 16, 32, 32, 32, 32]))


def tiny_model(architecture: str = "transformer", dropout: bool = False) -> ModelConfig:
    """The paper's structure at a tiny width, for tests of structure (resume, groups) rather than of learning: a
    step costs a fraction of `small_model`'s. Without dropout unless asked (then the defaults). (Not narrower: a
    one-channel first block before batch norm has near-cancelling gradients whose rounding RAdam's normalisation
    blows up to 1e-5 within 20 steps, even in float64.)"""
    extra = {} if dropout else {"dropout": 0.0}
    return ModelConfig(architecture=architecture, d_model=4, heads=2, d_head=2, ff_dim=8, **extra,
                       cnn=CNNConfig(filters=[2, 2, 4, 4, 4, 4, 4], **extra))


def small_config(encoders=("logmel", "openl3"), architecture: str = "transformer", steps: int = 6, **kw) -> TrainConfig:
    base = dict(model=small_model(architecture), encoders=list(encoders), batch_strong=4, batch_weak=4,
                batch_unlabelled=4, epochs=1, steps_per_epoch=steps, log_every=1, checkpoint_every=1000,
                progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base).validate()


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "features.zarr"
    spec = SyntheticStoreSpec(clips={"synthetic": 12, "weak": 10, "unlabelled": 12, "validation": 8, "eval": 10},
                              visual={"openl3": 24, "tce": 40}, missing_fraction=0.4, seed=1)
    build_synthetic_store(path, spec)
    return path


def steps_without_host_sync(group, warmup: int = 5) -> None:
    """`warmup` steps (past a CUDA-graph capture's warm-up), then two steps with CUDA's sync debug mode at "error":
    a host synchronisation inside a step raises."""
    for step in range(warmup):
        group.before_step(step)
        group.step_fn()
    torch.cuda.synchronize()
    group.before_step(warmup)
    torch.cuda.set_sync_debug_mode("error")
    try:
        group.step_fn()
        group.step_fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
