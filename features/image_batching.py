"""Shared machinery of the PyTorch image embeddings (OpenL3, VGG16, TCE): device choice, fixed-shape batching,
inference mode, channels_last, bf16 autocast on GPU by default, lazy model loading with the weights checks of
`features.weights`, and computing identical frames (still images, black screens) only once.

Fixed batch shapes: every forward pass sees exactly `batch_size` frames (a short last batch is padded with black
frames whose outputs are dropped). For a fixed shape the kernels compute each frame's output independently of the
other frames of the batch (checked bit for bit on CPU, `tests/features/test_embedding_worker.py`), so a frame's
embedding depends only on the frame and `batch_size`: not on which clips shared its batch, nor on whether identical
frames were computed once. That is what makes a resumed extraction write exactly what an uninterrupted one would.

A concrete embedding subclasses `TorchImageExtractor` and supplies: the network built with random init
(`build_network`), the weights file name it expects (`weights_file_name`), how that file becomes a state dict
(`read_state_dict`), and the input normalisation of the original model (`normalise`).
"""

from __future__ import annotations

import abc
import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from features.base import FrameExtractor
from features.frame_dedup import unique_frames
from features.weights import RANDOM_WEIGHTS, WeightsMismatchError, locate_weights, sha256_file

Autocast = Literal["none", "bf16", "fp16"]
ResizeMode = Literal["stretch", "center_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageExtractorConfig:
    """Options shared by the image embeddings; the model modules add their own fields."""

    weights_path: str | None = None  # None: look for the model's default file name (see features.weights)
    # No weights file found -> seeded random init instead of an error (tests and the demo only).
    allow_random_weights: bool = False
    seed: int = 0
    device: str = "auto"  # "auto" -> cuda if available, else cpu
    # Frames per forward pass (the fixed batch shape; frames of many clips share a batch). On a GPU use a few
    # hundred (e.g. 256) to fill it.
    batch_size: int = 32
    # bf16/fp16 autocast, GPU only: bf16 by default there (tensor cores; the store keeps float16 anyway). On CPU
    # the effective mode is "none". The effective mode is recorded in the provenance.
    autocast: Autocast = "bf16"
    num_threads: int | None = None  # torch CPU threads; None leaves torch's default
    channels_last: bool = True
    # cuDNN picks the fastest algorithm per input shape (shapes are fixed here, so it chooses once). It may pick
    # a different one on another run; set False (and fixed shapes keep the choice deterministic) when a resumed
    # GPU run must be bit-identical to an uninterrupted one.
    cudnn_benchmark: bool = True
    dedup_identical_frames: bool = True  # still images and black screens are common on YouTube
    # Fold each batch norm that directly follows a convolution into it (inference only): +10% frames/s for
    # OpenL3, +25% for TCE on CPU, outputs equal to ~1e-6 relative.
    fuse_batchnorm: bool = True
    # Network input size; None: the model's own (224). A smaller one (the synthetic set's 64 px frames) cuts the
    # cost by (224 / size)^2 for tests and the demo; it changes the values, so provenance records it.
    input_size: int | None = None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def effective_autocast(autocast: str, device: torch.device) -> str:
    if autocast not in ("none", "bf16", "fp16"):
        raise ValueError(f"autocast must be none, bf16 or fp16, not {autocast!r}")
    # CPU autocast would change the numbers for little gain on this kind of CPU: GPU only, as documented.
    return autocast if device.type == "cuda" else "none"


def autocast_context(autocast: str, device: torch.device) -> contextlib.AbstractContextManager:
    mode = effective_autocast(autocast, device)
    if mode == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def resize_frames(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 255] -> (N, 3, size, size).

    `stretch`: bilinear (antialiased) resize of the whole frame to size x size; the identity on frames
    already that size (the pipeline's 224 x 224 frames).
    `center_crop`: shorter side to 256 * size / 224 then the central size x size patch, the usual
    ImageNet/L3 evaluation crop; frames already size x size are passed unchanged, as OpenL3 does.
    """
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if mode == "stretch":
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if mode != "center_crop":
        raise ValueError(f"resize mode must be stretch or center_crop, not {mode!r}")
    short = round(size * 256 / 224)
    scale = short / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top:top + size, left:left + size]


def check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be shaped (N, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be RGB uint8, got {frames.dtype}")
    return frames


_RANDOM_INIT_LOCK = threading.Lock()


class TorchImageExtractor(FrameExtractor):
    """Base of the PyTorch frame embeddings: lazy model, weights lookup, batched inference."""

    config_type: ClassVar[type] = ImageExtractorConfig
    store_dtype: ClassVar[str] = "float16"
    input_size: ClassVar[int] = 224
    resize_mode: ClassVar[str] = "stretch"

    def __init__(self, config: Any = None):
        super().__init__(config)
        self._net: torch.nn.Module | None = None
        self._device: torch.device | None = None
        self._weights: tuple[Path | None, str] | None = None  # (file or None for random, provenance)
        # One instance may serve several task threads (Prefect / Dask); building and fusing the network in
        # place must happen once, not concurrently.
        self._load_lock = threading.Lock()
        # Counters for the benchmark and the flow's logs: frames asked for vs forward passes actually run.
        self.frames_seen = 0
        self.frames_computed = 0

    # --- what a model module provides -------------------------------------------------------------------
    @abc.abstractmethod
    def build_network(self) -> torch.nn.Module:
        """The embedding network, randomly initialised (parameters drawn from torch's global RNG)."""

    @abc.abstractmethod
    def weights_file_name(self) -> str:
        """Default file name of the pretrained weights (looked for in `features.weights.search_dirs()`)."""

    @abc.abstractmethod
    def read_state_dict(self, path: Path) -> dict[str, torch.Tensor]:
        """The file's tensors under the network's state-dict keys (training prefixes and heads removed)."""

    @abc.abstractmethod
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float in [0, 255] -> the network's input range, as the original preprocessing."""

    # --- weights ----------------------------------------------------------------------------------------
    def weights_file(self) -> Path | None:
        """The weights file that will be loaded, or None for random init; raises MissingWeightsError."""
        return self._resolve_weights()[0]

    def _resolve_weights(self) -> tuple[Path | None, str]:
        if self._weights is None:
            try:
                path = locate_weights(self.name, self.config.weights_path, self.weights_file_name())
            except FileNotFoundError:
                if not self.config.allow_random_weights:
                    raise
                self._weights = (None, RANDOM_WEIGHTS)
            else:
                self._weights = (path, "sha256:" + sha256_file(path))
        return self._weights

    def weights_provenance(self) -> str:
        return self._resolve_weights()[1]

    def provenance(self) -> dict[str, Any]:
        prov = super().provenance()
        # Memory layout, batch-norm folding and the cuDNN algorithm choice change the numerics at most; the
        # effective autocast, the input size and the weights change the values. Deduplication is recorded too
        # (issue #13: everything that could change a feature's values is named, so a store never mixes rows made
        # both ways). Whether random weights were allowed is recorded by `weights` itself.
        for key in ("channels_last", "fuse_batchnorm", "allow_random_weights", "cudnn_benchmark"):
            prov["config"].pop(key, None)
        if not prov["weights"] == RANDOM_WEIGHTS:
            prov["config"].pop("seed", None)  # the seed only matters for random weights
        prov["config"]["autocast"] = effective_autocast(self.config.autocast, self.device)
        return prov

    @property
    def device(self) -> torch.device:
        if self._device is None:
            self._device = resolve_device(self.config.device)
        return self._device

    def load(self) -> "TorchImageExtractor":
        """Build the network and load its weights now (raises the weights errors early); idempotent."""
        with self._load_lock:
            if self._net is None:
                self._load()
        return self

    def _load(self) -> None:
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(self.config.cudnn_benchmark)
        path, _ = self._resolve_weights()
        if path is None:
            # torch's RNG is process-wide: two threads initialising two models at once would interleave their
            # draws and make the "seeded" random weights depend on timing. One initialisation at a time.
            with _RANDOM_INIT_LOCK, torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                net = self.build_network()
        else:
            state = self.read_state_dict(path)
            # Built on the meta device: no time spent drawing random parameters that are overwritten.
            with torch.device("meta"):
                net = self.build_network()
            load_state_dict_checked(net, state, path)
        net = net.eval()
        if self.config.fuse_batchnorm:
            from torch.fx.experimental.optimization import fuse

            net = fuse(net, inplace=True)
        net = net.to(self.device)
        if self.config.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self._net = net

    # --- inference --------------------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 frames already on the device -> the network's input (n, 3, S, S)."""
        # NHWC uint8 -> NCHW view: its memory is already channels_last, so no copy is made for that layout.
        x = x.permute(0, 3, 1, 2).float()
        x = resize_frames(x, self.config.input_size or self.input_size, self.resize_mode)
        x = self.normalise(x)
        fmt = torch.channels_last if self.config.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=fmt)

    @property
    def batch_frames(self) -> int:
        """Frames per forward pass: the fixed batch shape."""
        return max(1, int(self.config.batch_size))

    def forward_uploaded(self, x: torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 frames on `self.device` -> (n, dim) float32 embeddings on the device.

        Runs in forward passes of exactly `batch_frames` frames (the last one padded with black frames), so each
        frame's output is the same whatever else shares its batch. Asynchronous on a GPU: the caller synchronises.
        """
        self.load()
        if self.device.type == "cpu":
            pin_cpu_threads(self.config.num_threads)
        n, bs = int(x.shape[0]), self.batch_frames
        with torch.inference_mode(), autocast_context(self.config.autocast, self.device):
            out = torch.empty((n, self.dim), dtype=torch.float32, device=x.device)
            for start in range(0, n, bs):
                chunk = x[start:start + bs]
                k = int(chunk.shape[0])
                if k < bs:
                    chunk = torch.cat([chunk, chunk.new_zeros((bs - k,) + tuple(chunk.shape[1:]))])
                out[start:start + k] = self._net(self._prepare(chunk))[:k].float()
        self.frames_computed += n
        return out

    def upload(self, frames: np.ndarray) -> torch.Tensor:
        """Host uint8 frames -> the device (through pinned memory on a GPU, so the copy is asynchronous)."""
        x = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x

    def embed(self, frames: np.ndarray) -> np.ndarray:
        frames = check_frames(frames)
        n = len(frames)
        self.frames_seen += n
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        if self.config.dedup_identical_frames:
            keep, inverse = unique_frames(frames)
            work = frames[keep]
        else:
            inverse, work = None, frames
        out = self.forward_uploaded(self.upload(work)).cpu().numpy()
        return out if inverse is None else out[inverse]


def pin_cpu_threads(num_threads: int | None) -> None:
    """Make this thread's CPU kernels use `num_threads` (None: torch's process-wide setting).

    On CPU the fully connected layers (VGG16's) are MKL GEMMs whose sums are split by thread, so their values
    depend on the thread count. MKL's count is per thread, and a thread (the pipeline's embedding thread, a
    Prefect task's) that reaches a GEMM before torch has set it up uses MKL's own default (the machine's cores),
    whatever torch.set_num_threads said: the same frames then gave other bits in one process than in another.
    Setting it in the thread that runs the network makes the values a function of the setting alone."""
    torch.set_num_threads(int(num_threads or torch.get_num_threads()))


def load_state_dict_checked(net: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load `state` into `net` (possibly on the meta device) after checking every key and shape."""
    from features.weights import check_state_dict

    expected = {k: v.shape for k, v in net.state_dict().items()}
    state = dict(state)
    for key in expected:
        # Checkpoints from before PyTorch 0.4.1 (and the Keras conversion) have no BN step counter: unused here.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    check_state_dict(path, expected, state)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # pragma: no cover - check_state_dict catches these first
        raise WeightsMismatchError(path, "?", str(exc)) from exc
