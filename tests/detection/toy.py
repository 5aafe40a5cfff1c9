"""A detector built by hand around an untrained tiny model (no training, no store): for the tests of shapes,
windows and video availability, which do not need a model that detects anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detection.detector import Detector
from features.logmel import LogMel
from features.openl3 import OpenL3, OpenL3Config
from avsed.core.classes import DESED_CLASSES
from avsed.core.labels import ClipTiming
from tests.training.conftest import small_config
from training.models import build_model

FRAME_SIZE = 32


def toy_detector(run_dir: Path, video: bool = False, gate: str = "none") -> Detector:
    encoders = ["logmel", "openl3"] if video else ["logmel"]
    config = small_config(encoders, interpolation_weights=[0.75, 0.25] if video and gate == "none" else None)
    if gate != "none":
        config.model.gate.mode = gate
    torch.manual_seed(0)
    model = build_model(config.model, [512] if video else []).eval()
    visual = [OpenL3(OpenL3Config(allow_random_weights=True, input_size=FRAME_SIZE, batch_size=64))] if video else []
    n = len(DESED_CLASSES)
    stats = {"logmel": (np.full(64, -4.0, np.float32), np.full(64, 2.0, np.float32))}
    if video:
        stats["openl3"] = (np.zeros(512, np.float32), np.ones(512, np.float32))
    weights = torch.tensor([0.75, 0.25] if video else [1.0])
    if gate != "none":
        weights = torch.tensor([0.5, 0.5])
    return Detector(Path(run_dir), config, model, DESED_CLASSES, ClipTiming(), np.full(n, 0.5), np.ones(n, np.int64),
                    weights, LogMel(), visual, stats, FRAME_SIZE, ["float16"] if video else [],
                    postprocessing={"source": "toy"})


def noise(seconds: float, rate: int = 16000, seed: int = 0, channels: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 0.1, (int(round(seconds * rate)), channels)).astype(np.float32)
    return x[:, 0] if channels == 1 else x


def moving_frames(seconds: float, fps: float = 12.8, size: int = 32, seed: int = 1) -> np.ndarray:
    """A picture that changes every frame (a real picture, not a still)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (int(round(seconds * fps)), size, size, 3), dtype=np.uint8)
