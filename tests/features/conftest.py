"""Shared fixtures of the visual-embedding tests: one torch thread (the machine is shared) and weight-file
search folders isolated in a temporary directory, so that a real cache on the machine is never picked up."""

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def weights_home(tmp_path, monkeypatch):
    """An empty $AVSED_WEIGHTS_DIR and $TORCH_HOME; returns the weights dir."""
    wdir = tmp_path / "weights"
    wdir.mkdir()
    monkeypatch.setenv("AVSED_WEIGHTS_DIR", str(wdir))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return wdir


@pytest.fixture
def frames():
    """Four 224 x 224 RGB frames; the last one repeats the first (as a still image would)."""
    rng = np.random.default_rng(7)
    out = rng.integers(0, 256, size=(4, 224, 224, 3), dtype=np.uint8)
    out[3] = out[0]
    return out


def assert_close(out, ref, rtol=1e-5):
    """Equal to `rtol` of the reference's scale (relative per element would be meaningless near zero)."""
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 0
    err = np.abs(out - ref).max()
    assert err <= rtol * scale, f"max error {err:.3g} vs scale {scale:.3g}"
