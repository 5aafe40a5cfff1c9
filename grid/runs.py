"""The work of one grid unit, wherever it runs (in the grid's process, or a worker of a work pool): train some
seeds of one model together, or evaluate one run as the paper does; and what the grid reads back from a run
directory to know a run is done.

Training claims its run directories (grid/claim.py) and resumes from their checkpoints, so a unit re-run after
a dead worker continues bit-exactly. An evaluation unit evaluates the runs of one seed group one after the other;
a run refused for an expected reason does not stop the others, and ends as one line of its own
(`EvaluationsRefused`). Evaluation is the paper's (evaluation.run.evaluate_checkpoint: post-processing
tuned on validation; the inference audio weight chosen on validation EBF1 among 0.25 / 0.5 / 0.75 / 0.875 for
every multi-encoder model; eval split with and without video plus the forced audio-only set). A run whose
checkpoint reached the schedule's end is not trained again, and a run with an evaluation of that very checkpoint
file (its modification time and size are recorded) is not evaluated again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from evaluation.evaluate import EvaluationResult
from evaluation.run import PAPER_AUDIO_WEIGHTS, evaluate_checkpoint
from evaluation.validation import VALIDATOR
from grid.claim import claimed
from grid.plan import EVALUATION_FILE, GridEntry, run_dir
from avsed.core.errors import AvsedError
from training.checkpoint import CHECKPOINT
from training.config import TrainConfig
from training.train import TrainResult, train_group


@dataclass
class RunRecord:
    entry: GridEntry
    seed: int
    run_dir: Path
    result: EvaluationResult | None = None


@dataclass
class PaperRun:
    """What a grid run did and found."""

    out_dir: Path
    entries: list[GridEntry]
    missing_features: list[str]
    runs: list[RunRecord] = field(default_factory=list)
    trained_runs: int = 0  # runs that trained in this call
    evaluated_runs: int = 0  # runs evaluated in this call
    tables: dict[str, Path] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # one line per unit that failed for good
    requeued: list[str] = field(default_factory=list)  # one line per unit submitted again (a dead worker)


def checkpoint_step(run_dir: Path) -> int | None:
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


def is_trained(run_dir: Path, total_steps: int) -> bool:
    return (checkpoint_step(run_dir) or 0) >= total_steps


def _checkpoint_identity(run_dir: Path) -> list[int]:
    stat = (run_dir / CHECKPOINT).stat()
    return [stat.st_mtime_ns, stat.st_size]


def evaluation_of(run_dir: Path) -> EvaluationResult | None:
    """The run's paper evaluation if it was made from the checkpoint that is there now (a retrained run with the
    same number of steps gets a new one)."""
    path = run_dir / EVALUATION_FILE
    if not path.exists() or not (run_dir / CHECKPOINT).exists():
        return None
    result = EvaluationResult.load(path)
    return result if result.info.get("checkpoint_identity") == _checkpoint_identity(run_dir) else None


def train_runs(store: str | Path, config: TrainConfig | dict, runs: Mapping[int, str | Path],
               purpose: str = "training") -> list[TrainResult]:
    """Claim the runs, then train their seeds together from their checkpoints (resume=True: a re-run after a
    dead worker continues where its last checkpoint stopped, bit-exactly)."""
    with claimed(list(runs.values()), purpose):
        return train_group(store, config, {int(s): d for s, d in runs.items()}, resume=True, validator=VALIDATOR)


def train_unit(store: str | Path, out_dir: Path, entry: GridEntry, seeds: Sequence[int], base: TrainConfig) -> int:
    """Train the entry's unfinished seeds of `seeds` together; returns how many runs trained."""
    config = entry.config(base)
    todo = {int(s): run_dir(out_dir, entry, s) for s in seeds}
    todo = {s: d for s, d in todo.items() if not is_trained(d, config.total_steps)}
    if not todo:
        return 0
    return sum(1 for r in train_runs(store, config, todo, purpose=f"training {entry.key}") if r.trained_steps > 0)


def evaluate_run(store: str | Path, record: RunRecord, plots: bool = True, device: str = "auto",
                 audio_weights: Sequence[float] | None = PAPER_AUDIO_WEIGHTS) -> bool:
    """Evaluate a run as the paper does unless its checkpoint already has an evaluation; True if evaluated.
    `audio_weights`: the inference audio weights a multi-encoder model chooses from on validation EBF1."""
    if not (record.run_dir / CHECKPOINT).exists():
        raise FileNotFoundError(f"{record.run_dir}: no checkpoint to evaluate")
    record.result = evaluation_of(record.run_dir)
    if record.result is not None:
        return False
    with claimed([record.run_dir], f"evaluating {record.entry.key}"):
        identity = _checkpoint_identity(record.run_dir)
        grid = tuple(audio_weights) if audio_weights and len(record.entry.encoders) > 1 else None
        out = record.run_dir / EVALUATION_FILE.parent
        ev = evaluate_checkpoint(record.run_dir, store, out if plots else None, split_by_availability=True,
                                 audio_weight_grid=grid, device=device)
        ev.result.info["paper_entry"] = json.loads(json.dumps(record.entry.__dict__))
        ev.result.info["checkpoint_identity"] = identity  # modification time and size of the checkpoint evaluated
        out.mkdir(parents=True, exist_ok=True)
        ev.result.save(out / EVALUATION_FILE.name)
    record.result = ev.result
    return True


class EvaluationsRefused(AvsedError):
    """Runs of one evaluation unit refused for an expected reason, one line each (`seed<k>: why`, joined by
    ` || ` into the one line a flow run's state carries); the unit's other runs were evaluated."""

    SEPARATOR = " || "

    def __init__(self, failures: Mapping[int, str]):
        self.failures = {int(s): (str(m).strip().splitlines() or [""])[0] for s, m in failures.items()}
        super().__init__(self.SEPARATOR.join(f"seed{s}: {m}" for s, m in self.failures.items()))

    @classmethod
    def parse(cls, message: str) -> dict[int, str]:
        """The failures from the message (a flow run's state message: {} when it is not this error's)."""
        out = {}
        for part in message.split(cls.SEPARATOR):
            m = re.match(r"seed(\d+): (.*)", part.strip())
            if m:
                out[int(m[1])] = m[2]
        return out


def evaluate_runs(records: Sequence[RunRecord], evaluate: Callable[[RunRecord], object]) -> dict[int, str]:
    """Evaluate the runs one after the other with `evaluate(record)`; a run refused for an expected reason
    (`AvsedError`) does not stop the others. Returns the refused runs' one-line reasons by seed; any other error
    is raised once every run had its turn (the first one, the others' reasons in its message)."""
    refused: dict[int, str] = {}
    crashed: list[tuple[int, Exception]] = []
    for record in records:
        try:
            evaluate(record)
        except AvsedError as exc:
            refused[record.seed] = str(exc)
        except Exception as exc:  # noqa: BLE001 - raised below, after the unit's other runs
            crashed.append((record.seed, exc))
    if crashed:
        seed, first = crashed[0]
        if len(crashed) > 1 or refused:
            others = "; ".join([f"seed{s}: {type(e).__name__}: {e}" for s, e in crashed[1:]] +
                               [f"seed{s}: {m}" for s, m in refused.items()])
            raise RuntimeError(f"seed{seed}: {type(first).__name__}: {first} (and {others})") from first
        raise first
    return refused


def summary_of(paper: PaperRun) -> dict:
    """A JSON-friendly account of a grid run (the flow's return value, the CLI's message)."""
    return {"out_dir": str(paper.out_dir), "entries": [e.key for e in paper.entries],
            "missing_features": paper.missing_features, "trained_runs": paper.trained_runs,
            "evaluated_runs": paper.evaluated_runs, "tables": {k: str(v) for k, v in paper.tables.items()},
            "failed": list(paper.failed), "requeued": list(paper.requeued)}
