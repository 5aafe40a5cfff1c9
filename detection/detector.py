"""A trained run as a detector: model, the store's time grid and standardisation, the extractors its features
came from (rebuilt from the provenance the checkpoint records) and the post-processing `avsed evaluate` tuned.

What a run directory must hold: `checkpoint.pt` (model, config, feature provenance, the store it was trained on)
and `evaluation/result.json` (EBF1-tuned thresholds and median filters, the inference audio weight); the store's
time grid and standardisation statistics are read from `evaluation/standardisation.json` (written by `avsed
evaluate`), else from the store the checkpoint names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.evaluate import EvaluationResult
from evaluation.run import STANDARDISATION, read_standardisation
from features.base import FeatureExtractor, build_extractor, extractor_class
from features.weights import WeightsError
from avsed.core.errors import AvsedError
from avsed.core.labels import ClipTiming
from avsed.core.store import FeatureStore
from training.config import AUDIO_STREAM, TrainConfig
from training.models import build_model
from training.predict import inference_weights, load_checkpoint


class DetectorError(AvsedError):
    """The run cannot detect anything (no checkpoint, never evaluated, features that cannot be remade)."""


@dataclass
class Detector:
    run_dir: Path
    config: TrainConfig
    model: torch.nn.Module
    classes: tuple[str, ...]
    timing: ClipTiming
    thresholds: np.ndarray  # (C,)
    filter_sizes: np.ndarray  # (C,) median filter sizes in output frames
    base_weights: torch.Tensor  # (S,) inference interpolation weights before availability (a gate's prior)
    audio_extractor: FeatureExtractor
    visual_extractors: list[FeatureExtractor]  # empty: audio only (an audio-only model, or weights unavailable)
    stats: dict[str, tuple[np.ndarray, np.ndarray]]  # feature -> (mean, std)
    frame_size: int  # decoded video frames are frame_size x frame_size (the store's)
    visual_dtypes: list[str]  # the store's dtype of each visual feature (embeddings are rounded through it)
    notes: list[str] = field(default_factory=list)  # one-line notices (e.g. video ignored, and why)
    postprocessing: dict[str, Any] = field(default_factory=dict)  # what was used, for the JSON output

    @property
    def encoders(self) -> list[str]:
        return list(self.config.encoders)

    @property
    def learned(self) -> bool:
        return getattr(self.model, "gate", None) is not None

    @property
    def uses_video(self) -> bool:
        return bool(self.visual_extractors)


def _rebuild_extractor(name: str, prov: dict[str, Any], run_dir: Path) -> FeatureExtractor:
    """The extractor that made a store feature, from its provenance; refuses one that would make other values."""
    try:
        cls = extractor_class(prov["extractor"])
    except KeyError as exc:
        raise DetectorError(f"{run_dir}: feature {name!r} was made by extractor {prov.get('extractor')!r}, which "
                            f"this installation does not have ({exc})") from None
    if str(cls.version) != str(prov.get("version")):
        raise DetectorError(f"{run_dir}: feature {name!r} was made by {cls.name} version {prov.get('version')}, this "
                            f"installation has version {cls.version}; install the avsed version the run was trained "
                            f"with, or train a new run")
    known = set(getattr(cls.config_type, "__dataclass_fields__", {}))
    settings = {k: v for k, v in prov.get("config", {}).items() if k in known}
    if "allow_random_weights" in known:
        settings["allow_random_weights"] = prov.get("weights") == "random"
    if "autocast" in known:
        settings["autocast"] = "none"  # the provenance's effective mode; the CPU's (recorded) is none
    extractor = build_extractor(cls.name, settings)
    made = extractor.provenance()
    if "frame_size" in prov:
        made["frame_size"] = prov["frame_size"]
    if json.dumps(made, sort_keys=True) != json.dumps(prov, sort_keys=True):
        raise DetectorError(f"{run_dir}: feature {name!r} cannot be remade as the run's store made it (store: {prov}; "
                            f"here: {made})")
    return extractor


def _standardisation(run_dir: Path, ckpt: dict, encoders: list[str], evaluated: bool
                     ) -> tuple[ClipTiming, tuple[str, ...], dict[str, tuple[np.ndarray, np.ndarray]]]:
    path = run_dir / "evaluation" / STANDARDISATION
    if path.is_file():
        return read_standardisation(path)
    store_path = Path(str(ckpt.get("store", "")))
    if not store_path.exists():
        again = "run `avsed evaluate` on it again" if evaluated else "run `avsed evaluate`"
        raise DetectorError(f"{run_dir}: no {path.relative_to(run_dir)} and the store it was trained on ({store_path}) "
                            f"is not there: {again} with --store pointing at that store")
    store = FeatureStore.open(store_path)
    stats = {name: store.stats(name) for name in encoders}
    return store.timing, store.classes, {k: v for k, v in stats.items() if v is not None}


def load_detector(run_dir: str | Path, threshold: float | None = None, device: str = "cpu") -> Detector:
    """The run's model and everything needed to feed it and to turn its outputs into events.

    threshold: one threshold for every class instead of the tuned ones (then a run never evaluated works too,
    with no median filtering and the config's default inference weights)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise DetectorError(f"{run_dir}: no such run directory (give the folder `avsed train` wrote)")
    try:
        ckpt = load_checkpoint(run_dir)
    except FileNotFoundError:
        raise DetectorError(f"{run_dir}: no checkpoint.pt; give a run directory that `avsed train` wrote") from None
    config = TrainConfig.from_dict(ckpt["config"])
    result_path = run_dir / "evaluation" / "result.json"
    result = EvaluationResult.load(result_path) if result_path.is_file() else None
    if result is None and threshold is None:
        raise DetectorError(f"{run_dir}: the run was never evaluated, so it has no tuned post-processing: run "
                            f"`avsed evaluate --checkpoint {run_dir} --store STORE` first, or pass --threshold")
    timing, classes, stats = _standardisation(run_dir, ckpt, list(config.encoders), result is not None)
    missing = [n for n in config.encoders if n not in stats and (n == AUDIO_STREAM or config.standardise_visual)]
    if missing:
        raise DetectorError(f"{run_dir}: no standardisation statistics for {missing}; rerun the extraction's "
                            f"statistics step on the run's store, then `avsed evaluate`")
    n_classes = len(classes)
    if result is not None:
        thresholds = np.asarray(result.tuning.ebf1.thresholds, dtype=np.float64)
        filters = np.asarray(result.tuning.ebf1.filter_sizes, dtype=np.int64)
        audio_weight = result.info.get("audio_weight")
        teacher = bool(result.info.get("teacher", False))
    else:
        thresholds, filters = np.full(n_classes, 0.5), np.ones(n_classes, dtype=np.int64)
        audio_weight, teacher = None, False
    if threshold is not None:
        thresholds = np.full(n_classes, float(threshold))
    model = build_model(config.model, ckpt["visual_dims"])
    model.load_state_dict(ckpt["teacher" if teacher else "model"])
    model.to(device).eval()
    provenance = ckpt["provenance"]
    audio = _rebuild_extractor(AUDIO_STREAM, provenance[AUDIO_STREAM], run_dir)
    notes: list[str] = []
    visual: list[FeatureExtractor] = []
    for name in config.encoders[1:]:
        try:
            extractor = _rebuild_extractor(name, provenance[name], run_dir)
            if hasattr(extractor, "load"):
                extractor.load()
        except WeightsError as exc:
            notes.append(f"videos are ignored, every window takes the audio-only path: the {name!r} stream's "
                         f"weights are not available ({' '.join(str(exc).split())})")
            visual = []
            break
        visual.append(extractor)
    sizes = {int(provenance[n].get("frame_size", 224)) for n in config.encoders[1:]}
    weights = torch.tensor(inference_weights(config, None, audio_weight), dtype=torch.float32)
    post = {"source": "threshold" if threshold is not None else "evaluation/result.json (EBF1 tuning)",
            "thresholds": dict(zip(classes, thresholds.tolist())), "median_filters": dict(zip(classes, filters.tolist())),
            "audio_weight": audio_weight, "teacher": teacher}
    return Detector(run_dir, config, model, tuple(classes), timing, thresholds, filters, weights, audio, visual,
                    stats, max(sizes) if sizes else 224, [str(provenance[n].get("dtype", "float32"))
                                                           for n in config.encoders[1:]], notes, post)
