"""The paper's experiment grid (Tables 5, 6, 7 and 8) as data: its models, and the units of work they split into.

`paper_grid(...)` lists every model of the tables that the store's features allow: per architecture the
uni-encoder baseline and a bi-encoder per visual embedding with fixed interpolation weights (Table 5), the
bi-encoders with random training weights (Table 6) and the OpenL3 + TCE tri-encoders with both schemes
(Table 8); Table 7 re-reads Table 5's runs split by video availability. A model's training interpolation
weights come from a scheme in `WEIGHT_SCHEMES` (a registry). Beyond the paper, each bi- and tri-encoder also gets
learned, data-dependent weights (schemes `learned` and, when asked for, `learned_frame`: training/gate.py), tabulated
beside its fixed and random weights (grid/learned.py). `grid_units(...)` cuts the grid into the units a worker
trains at once: the seeds of one model, in groups of at most `group_size`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from avsed.core.store import FeatureStore
from training.run_dirs import parse_seeds, seed_dir
from training.config import AUDIO_STREAM, TrainConfig, TrainConfigError, merge_settings

VISUAL_FEATURES = ("vgg16", "openl3", "tce")  # Table 5 / 6 rows, in the paper's order
TRI_ENCODER = ("openl3", "tce")  # Table 8: VGG16 is not pursued further in the paper
FEATURE_LABELS = {"vgg16": "VGG16", "openl3": "OpenL3", "tce": "TCE"}
EVALUATION_FILE = Path("evaluation") / "result.json"


def _none(config: TrainConfig, entry: "GridEntry"):
    return None


def _fixed(config: TrainConfig, entry: "GridEntry"):
    # Paper 3.2.3: the non-audio share is split equally between the visual encoders.
    n = len(entry.encoders)
    a = float(entry.train_audio_weight)
    return [a] + [(1.0 - a) / (n - 1)] * (n - 1)


def _random(config: TrainConfig, entry: "GridEntry"):
    return "random"


@dataclass(frozen=True)
class WeightScheme:
    """How a grid model gets its interpolation weights: the config's `interpolation_weights` for an entry, and
    the model's gate (training/gate.py; "none": the weights as given)."""

    weights: Callable[[TrainConfig, "GridEntry"], object]
    gate: str = "none"


# Training interpolation-weight schemes by name. A learned scheme trains with equal weights as the gate's prior
# (they only mask the missing streams): the gate chooses.
WEIGHT_SCHEMES: dict[str, WeightScheme] = {
    "none": WeightScheme(_none), "fixed": WeightScheme(_fixed), "random": WeightScheme(_random),
    "learned": WeightScheme(_none, gate="clip"), "learned_frame": WeightScheme(_none, gate="frame")}
LEARNED_SCHEMES = {"clip": "learned", "frame": "learned_frame"}  # gate mode -> scheme
LEARNED_TABLE = "L"  # beyond the paper: learned weights beside fixed and random (grid/learned.py)


@dataclass(frozen=True)
class GridEntry:
    """One trained model of the paper's tables (all its seeds)."""

    table: str  # "5", "6" or "8" (Table 7 re-reads Table 5's runs); LEARNED_TABLE for learned weights
    architecture: str
    encoders: tuple[str, ...]
    scheme: str  # a WEIGHT_SCHEMES name
    train_audio_weight: float | None = None  # fixed scheme: the audio encoder's training weight

    @property
    def visual(self) -> tuple[str, ...]:
        return self.encoders[1:]

    @property
    def label(self) -> str:
        """The row label: the visual embeddings it adds to the audio ("audio only" for the baseline)."""
        return " + ".join(FEATURE_LABELS.get(v, v) for v in self.visual) or "audio only"

    @property
    def key(self) -> str:
        """Directory name of the model's runs."""
        parts = [self.architecture, "_".join(self.encoders), self.scheme]
        if self.scheme == "fixed":
            parts.append(f"audio{self.train_audio_weight:g}")
        return "-".join(parts)

    def config(self, base: TrainConfig) -> TrainConfig:
        scheme = WEIGHT_SCHEMES[self.scheme]
        # The gate's other settings (width, temperature, audio floor) come from the base config.
        settings = merge_settings(base.to_dict(), {"model": {"architecture": self.architecture,
                                                             "gate": {"mode": scheme.gate}},
                                                   "encoders": list(self.encoders), "inference_weights": None})
        config = TrainConfig.from_dict(settings)
        config.interpolation_weights = scheme.weights(config, self)
        return config.validate()


def paper_grid(architectures: Sequence[str] = ("transformer", "conformer"), features: Sequence[str] = VISUAL_FEATURES,
               train_audio_weights: Sequence[float] = (0.75,), learned_modes: Sequence[str] = ("clip",)
               ) -> list[GridEntry]:
    """Every model of Tables 5, 6 and 8 for these architectures and visual features. Fixed-weight models get
    one entry per training audio weight (the paper tried 0.25 / 0.5 / 0.75 / 0.875 and kept the best on
    validation EBF1; the tables then show the best). Beyond the paper, every bi- and tri-encoder also gets one
    entry per gate mode in `learned_modes` (clip, frame; empty: none) with learned weights."""
    unknown = [m for m in learned_modes if m not in LEARNED_SCHEMES]
    if unknown:
        raise TrainConfigError(f"learned weights per {unknown}? the gate modes are {sorted(LEARNED_SCHEMES)}")
    entries: list[GridEntry] = []
    visual = [f for f in VISUAL_FEATURES if f in features]
    learned = [LEARNED_SCHEMES[m] for m in learned_modes]
    for arch in architectures:
        entries.append(GridEntry("5", arch, (AUDIO_STREAM,), "none"))
        for f in visual:
            entries += [GridEntry("5", arch, (AUDIO_STREAM, f), "fixed", w) for w in train_audio_weights]
        for f in visual:
            entries.append(GridEntry("6", arch, (AUDIO_STREAM, f), "random"))
        tri = all(f in features for f in TRI_ENCODER)
        if tri:
            entries += [GridEntry("8", arch, (AUDIO_STREAM, *TRI_ENCODER), "fixed", w) for w in train_audio_weights]
            entries.append(GridEntry("8", arch, (AUDIO_STREAM, *TRI_ENCODER), "random"))
        for encoders in [(AUDIO_STREAM, f) for f in visual] + [(AUDIO_STREAM, *TRI_ENCODER)] * tri:
            entries += [GridEntry(LEARNED_TABLE, arch, encoders, scheme) for scheme in learned]
    return entries


def seeds_argument(value: str | int | Sequence[int]) -> list[int]:
    """--seeds for the grid: a count (20 -> seeds 0..19) or explicit seeds / ranges ("0-4", "0,2"), as everywhere."""
    if isinstance(value, int):
        return list(range(value))
    if not isinstance(value, str):
        return [int(s) for s in value]
    return parse_seeds(value)


def as_base_config(base: TrainConfig | dict | None) -> TrainConfig:
    """The settings every grid model shares (toy sizes for tests); each entry sets its own architecture,
    encoders and interpolation weights."""
    if isinstance(base, TrainConfig):
        return base.validate()
    return TrainConfig.from_dict(base or {})


def plan_paper(store: str | Path, architectures: Sequence[str], train_audio_weights: Sequence[float],
               features: Sequence[str] | None = None, learned_modes: Sequence[str] = ("clip",)
               ) -> tuple[list[GridEntry], list[str]]:
    """The grid entries the store's features allow, and the wanted visual features it lacks."""
    have = set(FeatureStore.open(store).feature_names())
    wanted = list(features) if features is not None else list(VISUAL_FEATURES)
    unknown = [f for f in wanted if f not in VISUAL_FEATURES]
    if unknown:
        raise TrainConfigError(f"unknown visual features {unknown}; the paper's are {list(VISUAL_FEATURES)}")
    missing = [f for f in wanted if f not in have]
    return paper_grid(architectures, [f for f in wanted if f in have], train_audio_weights, learned_modes), missing




@dataclass(frozen=True)
class Unit:
    """What one worker does at once: train some seeds of one model together (one stacked group, one process),
    or evaluate the runs of such a group (one after the other, one process)."""

    kind: str  # "train" or "evaluate"
    entry: GridEntry
    seeds: tuple[int, ...]

    @property
    def name(self) -> str:
        what = "+".join(str(s) for s in self.seeds)
        return f"{self.kind}-{self.entry.key}-seed{what}"

    def run_dirs(self, out_dir: str | Path) -> dict[int, Path]:
        return {s: run_dir(out_dir, self.entry, s) for s in self.seeds}


def run_dir(out_dir: str | Path, entry: GridEntry, seed: int) -> Path:
    """runs/<model>/seed<k> under the grid's output folder."""
    return seed_dir(Path(out_dir) / "runs" / entry.key, seed)


def grid_units(entries: Sequence[GridEntry], seeds: Sequence[int], group_size: int | None = None) -> list[Unit]:
    """The training units of the grid, model by model: each model's seeds in consecutive groups of `group_size`
    (None: all of them, one group; training.train.train_group still splits a group by `group_seeds` on the
    device, so a unit of 20 seeds on one GPU trains 4 at a time with the default)."""
    size = max(1, int(group_size)) if group_size else max(1, len(seeds))
    seeds = [int(s) for s in seeds]
    return [Unit("train", entry, tuple(seeds[i:i + size])) for entry in entries for i in range(0, len(seeds), size)]
