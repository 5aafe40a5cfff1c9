"""The extractor registry and the two kinds of extractor: audio (waveform -> frames) and image (frames -> embeddings).

Adding a feature is one module that subclasses `AudioExtractor` or `FrameExtractor` and decorates it with
`@register_extractor`; the flow, the CLI and the store name extractors by their `name`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np

from avsed.core.labels import ClipTiming

_REGISTRY: dict[str, type["FeatureExtractor"]] = {}


def register_extractor(cls: type["FeatureExtractor"]) -> type["FeatureExtractor"]:
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"extractor {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_extractors() -> None:
    # Importing the modules runs their @register_extractor; done lazily so that `features.base`
    # stays cheap and free of torchvision / h5py imports.
    import importlib

    for module in ("features.logmel", "features.openl3", "features.vgg16", "features.tce"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def extractor_names() -> list[str]:
    _load_builtin_extractors()
    return sorted(_REGISTRY)


def extractor_class(name: str) -> type["FeatureExtractor"]:
    _load_builtin_extractors()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def build_extractor(name: str, config: Any = None, **overrides: Any) -> "FeatureExtractor":
    """Instantiate a registered extractor from a config object, a dict, or keyword overrides."""
    cls = extractor_class(name)
    if config is None:
        config = cls.config_type()
    elif isinstance(config, dict):
        config = cls.config_type(**config)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return cls(config)


class FeatureExtractor(abc.ABC):
    """Common part: identity, output shape and provenance that the store records beside the data."""

    name: ClassVar[str]
    version: ClassVar[str]  # bump when outputs change; the store refuses to mix versions
    source: ClassVar[str]  # "audio" | "video"
    config_type: ClassVar[type]
    store_dtype: ClassVar[str] = "float32"

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.config_type()

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Size of one frame's feature vector."""

    @abc.abstractmethod
    def frames(self, timing: ClipTiming) -> int:
        """Frames per clip."""

    def weights_provenance(self) -> str:
        """Checksum of the pretrained weights, 'random', or 'none' (no weights)."""
        return "none"

    def provenance(self) -> dict[str, Any]:
        """What the store records for this feature; training refuses to mix stores that differ here."""
        config = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else dict(self.config)
        # Run-time choices that do not change the values beyond numerics stay out of the identity.
        for key in ("device", "batch_size", "num_threads", "weights_path"):
            config.pop(key, None)
        return {"extractor": self.name, "version": self.version, "config": config,
                "weights": self.weights_provenance(), "dtype": self.store_dtype}


class AudioExtractor(FeatureExtractor):
    source: ClassVar[str] = "audio"

    @abc.abstractmethod
    def extract(self, waveform: np.ndarray, timing: ClipTiming) -> np.ndarray:
        """(frames, dim) features of a mono waveform at `timing.sample_rate`, already padded to the clip length."""


class FrameExtractor(FeatureExtractor):
    """Image embedding applied to every sampled video frame; batches mix frames of many clips."""

    source: ClassVar[str] = "video"

    def frames(self, timing: ClipTiming) -> int:
        return timing.video_frames

    @abc.abstractmethod
    def embed(self, frames: np.ndarray) -> np.ndarray:
        """(N, dim) float embeddings of N RGB uint8 frames shaped (N, H, W, 3)."""
