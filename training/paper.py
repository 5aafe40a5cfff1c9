"""The paper's experiment grid (Tables 5, 6, 7 and 8) as data, and the runner that trains and evaluates it.

`paper_grid(...)` lists every model of the tables that the store's features allow: per architecture the
uni-encoder baseline and a bi-encoder per visual embedding with fixed interpolation weights (Table 5), the
bi-encoders with random training weights (Table 6) and the OpenL3 + TCE tri-encoders with both schemes
(Table 8); Table 7 re-reads Table 5's runs split by video availability. A model's training interpolation
weights come from a scheme in `WEIGHT_SCHEMES` (a registry). Beyond the paper, each bi- and tri-encoder also gets
learned, data-dependent weights (schemes `learned` and, when asked for, `learned_frame`: training/gate.py), tabulated
beside its fixed and random weights (training/paper_learned.py).

`run_paper(...)` trains each model's seeds together (training.train.train_group), evaluates every run as the
paper does (evaluation.run.evaluate_checkpoint: post-processing tuned on validation; the inference audio weight
chosen on validation EBF1 among 0.25 / 0.5 / 0.75 / 0.875 for every multi-encoder model; eval split with and
without video plus the forced audio-only set) and writes the tables (training/paper_tables.py). A run whose
checkpoint reached the schedule's end is not trained again, and a run with an evaluation of that very checkpoint
file (its modification time and size are recorded) is not evaluated again, so a killed grid continues where it stopped and a rerun only rewrites the tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from evaluation.evaluate import EvaluationResult
from evaluation.run import PAPER_AUDIO_WEIGHTS, evaluate_checkpoint
from pipeline.store import FeatureStore
from training.checkpoint import CHECKPOINT
from training.cli import seed_dir
from training.config import AUDIO_STREAM, TrainConfig, TrainConfigError, merge_settings
from training.train import train_group

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
LEARNED_TABLE = "L"  # beyond the paper: learned weights beside fixed and random (training/paper_learned.py)


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


@dataclass
class RunRecord:
    entry: GridEntry
    seed: int
    run_dir: Path
    result: EvaluationResult | None = None


@dataclass
class PaperRun:
    """What `run_paper` did and found."""

    out_dir: Path
    entries: list[GridEntry]
    missing_features: list[str]
    runs: list[RunRecord] = field(default_factory=list)
    trained_runs: int = 0  # runs that trained at least one step in this call
    evaluated_runs: int = 0  # runs evaluated in this call
    tables: dict[str, Path] = field(default_factory=dict)


def _checkpoint_step(run_dir: Path) -> int | None:
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


def _checkpoint_identity(run_dir: Path) -> list[int]:
    stat = (run_dir / CHECKPOINT).stat()
    return [stat.st_mtime_ns, stat.st_size]


def _evaluation_of(run_dir: Path) -> EvaluationResult | None:
    """The run's paper evaluation if it was made from the checkpoint that is there now (a retrained run with the
    same number of steps gets a new one)."""
    path = run_dir / EVALUATION_FILE
    if not path.exists():
        return None
    result = EvaluationResult.load(path)
    return result if result.info.get("checkpoint_identity") == _checkpoint_identity(run_dir) else None


def seeds_argument(value: str | int | Sequence[int]) -> list[int]:
    """--seeds for the grid: a count ("20" -> seeds 0..19) or explicit seeds / ranges ("0-4", "0,2")."""
    if isinstance(value, int):
        return list(range(value))
    if not isinstance(value, str):
        return [int(s) for s in value]
    if value.strip().isdigit():
        return list(range(int(value)))
    from training.cli import parse_seeds

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


def run_paper(store: str | Path, out_dir: str | Path, seeds: Sequence[int] = tuple(range(20)),
              architectures: Sequence[str] = ("transformer", "conformer"), base: TrainConfig | dict | None = None,
              train_audio_weights: Sequence[float] = (0.75,), features: Sequence[str] | None = None,
              plots: bool = True, device: str = "auto", inference_audio_weights: Sequence[float] = PAPER_AUDIO_WEIGHTS,
              log: Callable[[str], None] = print, learned_modes: Sequence[str] = ("clip",)) -> PaperRun:
    """Train and evaluate the grid with the store's features, then write the tables into `out_dir` (with the
    learned weights' table after the paper's)."""
    from training.paper_learned import write_learned_tables
    from training.paper_tables import write_tables

    out_dir = Path(out_dir)
    base = as_base_config(base)
    entries, missing = plan_paper(store, architectures, train_audio_weights, features, learned_modes)
    paper = PaperRun(out_dir, entries, missing)
    if missing:
        log(f"paper: the store has no {', '.join(missing)}: their rows are left out of the tables")
    for n, entry in enumerate(entries, 1):
        trained, records = train_entry(store, out_dir, entry, seeds, base)
        paper.trained_runs += trained
        for record in records:
            evaluated = evaluate_run(store, record, plots=plots, device=device, audio_weights=inference_audio_weights)
            paper.evaluated_runs += int(evaluated)
        paper.runs += records
        log(f"paper: [{n}/{len(entries)}] {entry.key}: {len(seeds)} seeds, trained {trained}, "
            f"evaluated {sum(1 for r in records if r.result is not None)}")
    paper.tables = write_tables(paper, out_dir)
    paper.tables.update(write_learned_tables(paper, out_dir))
    return paper


def summary_of(paper: PaperRun) -> dict:
    """A JSON-friendly account of a grid run (the flow's return value, the CLI's message)."""
    return {"out_dir": str(paper.out_dir), "entries": [e.key for e in paper.entries],
            "missing_features": paper.missing_features, "trained_runs": paper.trained_runs,
            "evaluated_runs": paper.evaluated_runs, "tables": {k: str(v) for k, v in paper.tables.items()}}


def train_entry(store: str | Path, out_dir: Path, entry: GridEntry, seeds: Sequence[int],
                base: TrainConfig) -> tuple[int, list[RunRecord]]:
    """Train the entry's unfinished seeds together; returns how many runs trained and a record per seed."""
    config = entry.config(base)
    dirs = {int(s): seed_dir(out_dir / "runs" / entry.key, s) for s in seeds}
    todo = {s: d for s, d in dirs.items() if (_checkpoint_step(d) or 0) < config.total_steps}
    trained = 0
    if todo:
        results = train_group(store, config, todo, resume=True)
        trained = sum(1 for r in results if r.trained_steps > 0)
    return trained, [RunRecord(entry, s, d) for s, d in dirs.items()]


def evaluate_run(store: str | Path, record: RunRecord, plots: bool = True, device: str = "auto",
                 audio_weights: Sequence[float] = PAPER_AUDIO_WEIGHTS) -> bool:
    """Evaluate a run as the paper does unless its checkpoint already has an evaluation; True if evaluated.
    `audio_weights`: the inference audio weights a multi-encoder model chooses from on validation EBF1."""
    if not (record.run_dir / CHECKPOINT).exists():
        raise FileNotFoundError(f"{record.run_dir}: no checkpoint to evaluate")
    record.result = _evaluation_of(record.run_dir)
    if record.result is not None:
        return False
    identity = _checkpoint_identity(record.run_dir)
    grid = tuple(audio_weights) if len(record.entry.encoders) > 1 else None
    out = record.run_dir / EVALUATION_FILE.parent
    ev = evaluate_checkpoint(record.run_dir, store, out if plots else None, split_by_availability=True,
                             audio_weight_grid=grid, device=device)
    ev.result.info["paper_entry"] = json.loads(json.dumps(record.entry.__dict__))
    ev.result.info["checkpoint_identity"] = identity  # modification time and size of the checkpoint evaluated
    ev.result.save(out / EVALUATION_FILE.name)
    record.result = ev.result
    return True
