"""Typed training configuration with the paper's numbers (sections 2 and 3.1.5) as defaults, YAML in and out.

The config that trained a checkpoint is saved inside it and beside it (`config.yaml`), so a run can be
reproduced and resumed from its own directory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import AvsedError

ARCHITECTURES = ("transformer", "conformer")


class TrainConfigError(AvsedError, ValueError):
    """A training setting that cannot work (the message names the key and what is allowed)."""


DTYPES = ("float32", "float64", "float16", "bfloat16")
AUDIO_STREAM = "logmel"


@dataclass
class CNNConfig:
    """Convolutional front-end: 7 blocks of conv, batch norm, ReLU, dropout, average pooling.

    The paper's Table 3 (per-block kernel/stride) is not in our copy of the text, so the defaults follow
    the DCASE 2020 task 4 baseline CNN the paper cites ([32]): filters 16..128, kernel 3, stride 1, with
    pooling chosen so that 64 mel bins -> 1 (2^6) and time /8 (512 -> 64 frames), as the paper states.
    Pooling tuples are (time, frequency), like the paper's table.
    """

    filters: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 128, 128, 128])
    kernel: list[int] = field(default_factory=lambda: [3, 3, 3, 3, 3, 3, 3])
    pooling: list[list[int]] = field(default_factory=lambda: [[2, 2], [2, 2], [2, 2], [1, 2], [1, 2], [1, 2], [1, 1]])
    dropout: float = 0.1
    # Paper: "batch normalization with a momentum of 0.9", i.e. the Keras/TF convention
    # (running = 0.9 * running + 0.1 * batch). PyTorch's `momentum` weighs the *new* batch, so the
    # equivalent PyTorch value is 1 - 0.9 = 0.1. We store the paper's number and convert in one place.
    batch_norm_momentum: float = 0.9


@dataclass
class ModelConfig:
    architecture: str = "transformer"  # transformer | conformer
    d_model: int = 128
    heads: int = 3
    d_head: int = 128  # d_k = 128 "at all times": attention inner size heads * d_head = 384
    ff_dim: int = 512
    dropout: float = 0.1
    encoder_blocks: int = 3
    decoder_blocks: int = 3
    conv_kernel: int = 7  # conformer depthwise convolution
    max_relative_distance: int = 128  # conformer: learnable relative position table covers +-(this - 1)
    max_positions: int = 128  # transformer: learnable absolute positions (64 frames + class token)
    n_classes: int = 10
    cnn: CNNConfig = field(default_factory=CNNConfig)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    # Input streams, audio first: every encoder after the first reads one visual embedding of the store.
    encoders: list[str] = field(default_factory=lambda: [AUDIO_STREAM])
    # Training interpolation weights: a list (one per encoder, renormalised per clip over available
    # streams) or "random": audio ~ U(random_audio_low, random_audio_high) per batch, rest split equally.
    interpolation_weights: Any = None  # None -> equal weights
    random_audio_low: float = 0.25
    random_audio_high: float = 1.0
    # Inference weights when predict() is not told otherwise. None -> the fixed training weights, or for
    # "random" training the mean of the audio distribution (0.625) with the rest split equally.
    inference_weights: list[float] | None = None
    # Batch composition (paper: 32 strong, 32 weak, 64 unlabelled = 128) and partitions of each kind.
    batch_strong: int = 32
    batch_weak: int = 32
    batch_unlabelled: int = 64
    strong_partitions: list[str] = field(default_factory=lambda: ["synthetic"])
    weak_partitions: list[str] = field(default_factory=lambda: ["weak"])
    unlabelled_partitions: list[str] = field(default_factory=lambda: ["unlabelled"])
    # Schedule: 100 epochs x 250 batches; RAdam lr 1e-3, x0.1 every 10 000 steps.
    epochs: int = 100
    steps_per_epoch: int = 250
    learning_rate: float = 1e-3
    lr_decay_every: int = 10000
    lr_decay_factor: float = 0.1
    # Mean teacher and loss.
    ema_decay: float = 0.999
    consistency_weight: float = 2.0
    # Mixup: applied to a batch with probability `mixup_rate`, ratio ~ Beta(alpha, alpha).
    mixup_rate: float = 0.33
    mixup_alpha: float = 0.2
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bf16 autocast and TF32 matmuls: None = on for CUDA, off elsewhere. A run records the resolved values.
    bf16: bool | None = None
    tf32: bool | None = None
    # Capture the whole training step in a CUDA graph after a few eager warm-up steps (CUDA only; elsewhere
    # the step runs eagerly, with a warning). The step is the same arithmetic either way.
    compile: bool = False
    feature_dtype: str = "float32"  # dtype of the resident features (float16/bfloat16 halves GPU memory)
    model_dtype: str = "float32"  # parameters and arithmetic (float64 for exactness checks on the CPU)
    # Standardise each visual embedding per dimension with the store's statistics over the training clips'
    # real frames, as the paper does for log-mel. Not stated for the embeddings in the paper; without it a
    # pretrained (or random) CNN's large shared offsets drown the frame-to-frame differences, and the visual
    # stream learned nothing in short runs (the demo's clip F1 with video equalled that with video ignored).
    standardise_visual: bool = True
    log_every: int = 50  # loss terms are summed on the device and read (averaged) every this many steps
    checkpoint_every: int = 2500
    # Validation metrics (CBF1, SBF1, EBF1, PSDS1 of student and teacher) every this many steps; 0 = off.
    # The paper's result stays the student after the last step, evaluated by `avsed evaluate`.
    validate_every: int = 0
    validation_partitions: list[str] = field(default_factory=lambda: ["validation"])
    progress: bool = True

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def visual_streams(self) -> list[str]:
        return list(self.encoders[1:])

    def validate(self) -> "TrainConfig":
        if self.model.architecture not in ARCHITECTURES:
            raise TrainConfigError(f"model.architecture {self.model.architecture!r} not in {ARCHITECTURES}")
        if not self.encoders or self.encoders[0] != AUDIO_STREAM:
            raise TrainConfigError(f"encoders must start with {AUDIO_STREAM!r} (audio is always the first encoder), got {self.encoders}")
        if len(set(self.encoders)) != len(self.encoders):
            raise TrainConfigError(f"encoders listed twice: {self.encoders}")
        w = self.interpolation_weights
        if isinstance(w, str):
            if w != "random":
                raise TrainConfigError(f"interpolation_weights must be a list or 'random', got {w!r}")
        elif w is not None:
            if len(w) != len(self.encoders) or any(x < 0 for x in w) or sum(w) <= 0:
                raise TrainConfigError(f"interpolation_weights {w} must be {len(self.encoders)} non-negative numbers")
        if self.inference_weights is not None and len(self.inference_weights) != len(self.encoders):
            raise TrainConfigError(f"inference_weights {self.inference_weights} must have {len(self.encoders)} entries")
        cnn = self.model.cnn
        if not (len(cnn.filters) == len(cnn.kernel) == len(cnn.pooling)):
            raise TrainConfigError("model.cnn filters, kernel and pooling need one entry per block")
        for name in ("feature_dtype", "model_dtype"):
            if getattr(self, name) not in DTYPES:
                raise TrainConfigError(f"{name} {getattr(self, name)!r} not in {DTYPES}")
        if self.model_dtype == "float16":
            raise TrainConfigError("model_dtype float16 is not supported: use bf16: true (autocast) for half precision")
        if not self.mixup_alpha > 0:
            raise TrainConfigError(f"mixup_alpha must be positive (Beta(alpha, alpha) ratios), got {self.mixup_alpha}")
        if not 0 <= self.random_audio_low <= self.random_audio_high <= 1:
            raise TrainConfigError(f"need 0 <= random_audio_low <= random_audio_high <= 1, got "
                             f"{self.random_audio_low}, {self.random_audio_high}")
        for name in ("log_every", "checkpoint_every", "lr_decay_every"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.validate_every < 0:
            raise TrainConfigError(f"validate_every must be 0 (off) or positive, got {self.validate_every}")
        return self

    def resolved(self, device_type: str) -> "TrainConfig":
        """A copy with the automatic settings decided for a device type ("cuda", "cpu"): bf16 and TF32 on for
        CUDA. The run saves this copy, so its config records what it actually did."""
        out = TrainConfig.from_dict(self.to_dict())
        cuda = device_type == "cuda"
        out.bf16 = cuda if self.bf16 is None else bool(self.bf16)
        out.tf32 = cuda if self.tf32 is None else bool(self.tf32)
        return out

    def default_inference_weights(self) -> list[float]:
        n = len(self.encoders)
        if self.inference_weights is not None:
            return list(self.inference_weights)
        w = self.interpolation_weights
        if w is None:
            return [1.0 / n] * n
        if w == "random":
            if n == 1:
                return [1.0]
            a = 0.5 * (self.random_audio_low + self.random_audio_high)
            return [a] + [(1.0 - a) / (n - 1)] * (n - 1)
        return list(w)

    # --- YAML -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _build(cls, data or {}).validate()

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))


def merge_settings(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`overrides` applied key by key: a nested section ({"model": {"d_model": 32}}) changes only the keys it
    names, so a config file's other settings in that section (e.g. its architecture) stay."""
    out = dict(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls, data: dict[str, Any]):
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := get_close_matches(k, known, n=1)) else repr(k)
                 for k in sorted(unknown)]
        raise TrainConfigError(f"{cls.__name__}: unknown keys {', '.join(hints)}; known: {sorted(known)}")
    kwargs = {}
    defaults = cls()
    for name, value in data.items():
        default = getattr(defaults, name)
        kwargs[name] = _build(type(default), value) if is_dataclass(default) and isinstance(value, dict) else value
    return cls(**kwargs)
