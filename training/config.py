"""Typed training configuration with the paper's numbers (sections 2 and 3.1.5) as defaults, YAML in and out.

The config that trained a checkpoint is saved inside it and beside it (`config.yaml`), so a run can be
reproduced and resumed from its own directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from avsed.core.config import ConfigError, did_you_mean, merge, read_yaml_mapping, resolve, validated

ARCHITECTURES = ("transformer", "conformer")  # training.models' registry (not imported here: it needs torch)
DTYPES = ("float32", "float64", "float16", "bfloat16")
AUDIO_STREAM = "logmel"

# Unknown keys are errors (a typo must not silently train the defaults); assignments are checked too.
_MODEL_CONFIG = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class TrainConfigError(ConfigError):
    """A training setting that cannot work (the message names the key and what is allowed)."""


class CNNConfig(BaseModel):
    """Convolutional front-end: 7 blocks of conv, batch norm, ReLU, dropout, average pooling.

    The paper's Table 3 (per-block kernel/stride) is not in our copy of the text, so the defaults follow
    the DCASE 2020 task 4 baseline CNN the paper cites ([32]): filters 16..128, kernel 3, stride 1, with
    pooling chosen so that 64 mel bins -> 1 (2^6) and time /8 (512 -> 64 frames), as the paper states.
    Pooling tuples are (time, frequency), like the paper's table.
    """

    model_config = _MODEL_CONFIG

    filters: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 128, 128, 128],
                               description="output channels of each convolutional block (7 blocks)")
    kernel: list[int] = Field(default_factory=lambda: [3, 3, 3, 3, 3, 3, 3],
                              description="kernel size of each block")
    pooling: list[list[int]] = Field(
        default_factory=lambda: [[2, 2], [2, 2], [2, 2], [1, 2], [1, 2], [1, 2], [1, 1]],
        description="average pooling (time, frequency) after each block: 64 mel bins -> 1, 512 frames -> 64")
    dropout: float = Field(0.1, description="dropout after each block")
    # Paper: "batch normalization with a momentum of 0.9", i.e. the Keras/TF convention
    # (running = 0.9 * running + 0.1 * batch). PyTorch's `momentum` weighs the *new* batch, so the
    # equivalent PyTorch value is 1 - 0.9 = 0.1. We store the paper's number and convert in one place.
    batch_norm_momentum: float = Field(0.9, description="batch norm momentum in the paper's (Keras) convention: "
                                                        "running = m * running + (1 - m) * batch")


class GateConfig(BaseModel):
    """Learned interpolation weights (beyond the paper, its section 4's future work; training/gate.py): a small
    network reads pooled summaries of the encoders' memories and outputs the weights through a softmax masked by
    availability. The weights the model is given (fixed, random or forced) act as a prior: their zeros mask
    streams out, their values tilt the softmax."""

    model_config = _MODEL_CONFIG

    mode: Literal["none", "clip", "frame"] = Field(
        "none", description="none: the given weights; clip: one learned set per clip; frame: one per decoder frame")
    hidden: int = Field(64, ge=1, description="hidden units of the gating network")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the gate's logits")
    # The paper keeps the audio weight away from 0 (audio is the more salient stream and always there; its random
    # weights draw audio from U(0.25, 1)): the same lower bound by default.
    audio_floor: float = Field(0.25, ge=0, lt=1, description="lowest audio weight the gate can give a clip with "
                                                              "video (0: none)")
    # Clips without video take the audio-only path at inference (audio weight exactly 1). A gate that learns to
    # lean on the picture trains that path less than fixed weights do: on the demo's set, without dropout the
    # learned bi-encoder lost 2-8 points to audio-only on clips without video; hiding the video of 30% of the
    # training clips (as if it were missing) closed the gap (benchmarks/results/gate.md).
    video_dropout: float = Field(0.3, ge=0, lt=1, description="training only, with a gate: probability per clip with video "
                                                              "that its visual streams are hidden for the step, as "
                                                              "if missing (trains the audio-only path; 0: never)")


class ModelConfig(BaseModel):
    """The multi-encoder model: one encoder per input stream, a decoder whose cross-attention is duplicated per
    encoder and interpolated (paper section 2)."""

    model_config = _MODEL_CONFIG

    # A name of the models registry, checked by validate() (and by the Prefect server through the schema's enum).
    architecture: str = Field("transformer", description="transformer or conformer",
                              json_schema_extra={"enum": list(ARCHITECTURES)})
    d_model: int = Field(128, description="model width")
    heads: int = Field(3, description="attention heads")
    # d_k = 128 "at all times": attention inner size heads * d_head = 384
    d_head: int = Field(128, description="size of each attention head (d_k)")
    ff_dim: int = Field(512, description="inner size of the feed-forward layers")
    dropout: float = Field(0.1, description="dropout in the attention blocks")
    encoder_blocks: int = Field(3, description="blocks per encoder")
    decoder_blocks: int = Field(3, description="decoder blocks")
    conv_kernel: int = Field(7, description="conformer: kernel of the depthwise convolution")
    max_relative_distance: int = Field(128, description="conformer: the learnable relative position table covers "
                                                        "+-(this - 1) frames")
    max_positions: int = Field(128, description="transformer: learnable absolute positions (64 frames + class "
                                                "token)")
    n_classes: int = Field(10, description="sound event classes (DESED: 10)")
    cnn: CNNConfig = Field(default_factory=CNNConfig, description="the convolutional front-end of the audio stream")
    gate: GateConfig = Field(default_factory=GateConfig,
                               description="learned, data-dependent interpolation weights (training/gate.py); "
                                           "mode none keeps the given weights")



class TrainConfig(BaseModel):
    """Everything one training run needs, with the paper's settings as defaults (sections 2 and 3.1.5)."""

    model_config = _MODEL_CONFIG

    model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
    # Input streams, audio first: every encoder after the first reads one visual embedding of the store.
    encoders: list[str] = Field(default_factory=lambda: [AUDIO_STREAM],
                                description="input streams, audio (logmel) first, then visual embeddings of the "
                                            "store (openl3, vgg16, tce): one encoder each")
    # Training interpolation weights: a list (one per encoder, renormalised per clip over available
    # streams) or "random": audio ~ U(random_audio_low, random_audio_high) per batch, rest split equally.
    interpolation_weights: list[float] | Literal["random"] | None = Field(
        None, description="training interpolation weights: one per encoder (renormalised per clip over the "
                          "streams it has), 'random' (audio ~ U(random_audio_low, random_audio_high) per batch), "
                          "or null for equal weights")
    random_audio_low: float = Field(0.25, description="'random' weights: lower bound of the audio weight")
    random_audio_high: float = Field(1.0, description="'random' weights: upper bound of the audio weight")
    # Inference weights when predict() is not told otherwise. None -> the fixed training weights, or for
    # "random" training the mean of the audio distribution (0.625) with the rest split equally.
    inference_weights: list[float] | None = Field(
        None, description="inference interpolation weights; null: the training weights (for 'random', the mean "
                          "audio weight with the rest split equally)")
    # Batch composition (paper: 32 strong, 32 weak, 64 unlabelled = 128) and partitions of each kind.
    batch_strong: int = Field(32, description="strongly labelled clips per batch")
    batch_weak: int = Field(32, description="weakly labelled clips per batch")
    batch_unlabelled: int = Field(64, description="unlabelled clips per batch")
    strong_partitions: list[str] = Field(default_factory=lambda: ["synthetic"],
                                         description="store partitions of strongly labelled clips")
    weak_partitions: list[str] = Field(default_factory=lambda: ["weak"],
                                       description="store partitions of weakly labelled clips")
    unlabelled_partitions: list[str] = Field(default_factory=lambda: ["unlabelled"],
                                             description="store partitions of unlabelled clips")
    # Schedule: 100 epochs x 250 batches; RAdam lr 1e-3, x0.1 every 10 000 steps.
    epochs: int = Field(100, description="epochs (the paper: 100)")
    steps_per_epoch: int = Field(250, description="batches per epoch (the paper: 250)")
    learning_rate: float = Field(1e-3, description="RAdam learning rate")
    lr_decay_every: int = Field(10000, description="steps between learning-rate decays")
    lr_decay_factor: float = Field(0.1, description="learning-rate factor at each decay")
    # Mean teacher and loss.
    ema_decay: float = Field(0.999, description="mean teacher: exponential moving average decay")
    consistency_weight: float = Field(2.0, description="weight of the student-teacher consistency loss")
    # Mixup: applied to a batch with probability `mixup_rate`, ratio ~ Beta(alpha, alpha).
    mixup_rate: float = Field(0.33, description="probability that a batch is mixed up")
    mixup_alpha: float = Field(0.2, description="mixup ratio ~ Beta(alpha, alpha)")
    seed: int = Field(0, description="random seed of the run")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    # bf16 autocast and TF32 matmuls: None = on for CUDA, off elsewhere. A run records the resolved values.
    bf16: bool | None = Field(None, description="bf16 autocast; null: on for CUDA, off elsewhere")
    tf32: bool | None = Field(None, description="TF32 matmuls; null: on for CUDA, off elsewhere")
    # The step's speed settings (training/step.py); none changes what a step computes beyond float rounding, so a
    # run may resume with others. compile: Inductor (torch.compile) over the seeds' forward and backward, the
    # optimiser and the EMA; if compiling fails the run says why in one line and trains eagerly. capture: the
    # whole step recorded in a CUDA graph after a few warm-up steps and replayed (the compiled kernels inside it).
    compile: bool | None = Field(None, description="compile the training step with Inductor (torch.compile); "
                                                   "null: on for CUDA, off elsewhere")
    capture: bool | None = Field(None, description="capture the training step in a CUDA graph (CUDA only; "
                                                   "elsewhere a warning); null: on for CUDA")
    # How the seeds of a group share the device. vmap: one stacked model, one step for all (training/group.py).
    # streams: one single-seed step per seed, each on its own CUDA stream (one CUDA graph each when captured),
    # all reading the same resident features; on the CPU the same steps run one after another.
    seeds_mode: Literal["vmap", "streams"] = Field("vmap", description="vmap: seeds stacked in one step; streams: "
                                                                      "one step per seed on its own CUDA stream")
    # Seeds of one configuration train together, at most this many at a time; more run as consecutive groups that
    # share the loaded features. null: on CUDA as many as free GPU memory holds (measured per seed on a first
    # group of one, training/train.py), elsewhere 4. Measured on an H100 (transformer bi-encoder, batch 128, bf16,
    # eager): 23 / 27 / 29 seed-steps/s for groups of 1 / 4 / 8, and 20 seeds out of memory.
    group_seeds: int | None = Field(None, ge=1, description="most seeds trained together in one group (more run as "
                                                            "consecutive groups sharing the loaded features); null: "
                                                            "what free GPU memory holds on CUDA, 4 elsewhere")
    feature_dtype: str = Field("float32", description="dtype of the resident features (float16/bfloat16 halve GPU "
                                                      "memory)", json_schema_extra={"enum": list(DTYPES)})
    model_dtype: str = Field("float32", description="parameters and arithmetic (float64 for exactness checks)",
                             json_schema_extra={"enum": list(DTYPES)})
    # Standardise each visual embedding per dimension with the store's statistics over the training clips'
    # real frames, as the paper does for log-mel. Not stated for the embeddings in the paper; without it a
    # pretrained (or random) CNN's large shared offsets drown the frame-to-frame differences, and the visual
    # stream learned nothing in short runs (the demo's clip F1 with video equalled that with video ignored).
    standardise_visual: bool = Field(True, description="standardise each visual embedding per dimension with the "
                                                       "training clips' statistics, as log-mel")
    log_every: int = Field(50, description="steps between loss log lines (log.jsonl, TensorBoard)")
    checkpoint_every: int = Field(2500, description="steps between checkpoints")
    # Validation metrics (CBF1, SBF1, EBF1, PSDS1 of student and teacher) every this many steps; 0 = off.
    # The paper's result stays the student after the last step, evaluated by `avsed evaluate`.
    validate_every: int = Field(0, description="steps between validation metrics of student and teacher; 0: off")
    validation_partitions: list[str] = Field(default_factory=lambda: ["validation"],
                                             description="store partitions the validation metrics use")
    progress: bool = Field(True, description="show a progress bar")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def visual_streams(self) -> list[str]:
        return list(self.encoders[1:])

    def validate(self) -> "TrainConfig":
        if self.model.architecture not in ARCHITECTURES:
            raise TrainConfigError(f"model.architecture {self.model.architecture!r} not in {ARCHITECTURES}"
                                   f"{did_you_mean(self.model.architecture, ARCHITECTURES)}")
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
                raise TrainConfigError(f"{name} {getattr(self, name)!r} not in {DTYPES}"
                                       f"{did_you_mean(getattr(self, name), DTYPES)}")
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
        """A copy with the automatic settings decided for a device type ("cuda", "cpu"): bf16, TF32, compile and
        capture on for CUDA. The run saves this copy, so its config records what it actually did. (`group_seeds`
        null is decided by the run, from the free memory it finds.)"""
        out = self.model_copy(deep=True)
        cuda = device_type == "cuda"
        out.bf16 = cuda if self.bf16 is None else bool(self.bf16)
        out.tf32 = cuda if self.tf32 is None else bool(self.tf32)
        out.compile = cuda if self.compile is None else bool(self.compile)
        out.capture = cuda if self.capture is None else bool(self.capture)
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
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str | None = None) -> "TrainConfig":
        """A checked config from settings (unknown keys and wrong types are one TrainConfigError line naming
        `source`, the key and the closest known key)."""
        try:
            return validated(cls, data or {}, source or cls.__name__).validate()
        except TrainConfigError:
            raise
        except ConfigError as exc:
            raise TrainConfigError(str(exc)) from None

    @classmethod
    def load(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        """A YAML file's settings (the paper's defaults for the keys it leaves out), `overrides` merged in key by
        key."""
        return cls.from_dict(merge(read_yaml_mapping(path), overrides), source=str(path))


def merge_settings(base: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """`overrides` applied key by key: a nested section ({"model": {"d_model": 32}}) changes only the keys it
    names, so a config file's other settings in that section (e.g. its architecture) stay."""
    return merge(base, overrides)


def resolve_train_config(config: TrainConfig | dict[str, Any] | None = None, config_file: str | Path | None = None,
                         sets: dict[str, Any] | None = None,
                         config_name: str = "config") -> TrainConfig:
    """A training run's config from its sources (the file or the paper's defaults), key by key
    (avsed.core.config.resolve)."""
    return resolve(TrainConfig, config, config_file, sets, config_name)
