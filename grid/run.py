"""The paper's grid, orchestrated once for every way it runs: train each model's seed groups, evaluate each
group's runs, write the tables. Where the units run is an executor's business: `InlineExecutor` runs each unit in
this process as it is submitted (`avsed paper`, and the `paper` flow with its Prefect tasks); grid/pool.py submits
each unit as a flow run to a Prefect work pool, whose workers (one per GPU) run them.

At most `window` units are in flight at once, so the grid's own memory and the load it puts on the Prefect
server stay bounded whatever the grid's size. What is done is read from the run directories (a complete
checkpoint, an evaluation of that very checkpoint), so a rerun or a re-submitted unit does only what is left.
A unit refused for an expected reason (a bad configuration, a run directory that holds another config) fails for
good as one line of the grid's report, and the rest of the grid goes on; a unit whose worker died is submitted
again (at most `attempts` times) and resumes from its runs' last checkpoints.

A unit is one seed group of one model: trained together, then evaluated together (one unit, its runs one after the
other), so a grid of M models in groups of G seeds is 2 x M x ceil(seeds / G) units, not M x (ceil(seeds / G) +
seeds). A run of an evaluation unit refused for an expected reason fails as one line of its own; the unit's
other runs are evaluated.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Protocol, Sequence

from evaluation.run import PAPER_AUDIO_WEIGHTS
from grid.learned import write_learned_tables
from grid.plan import GridEntry, Unit, as_base_config, grid_units, plan_paper, run_dir
from grid.runs import (PaperRun, RunRecord, evaluate_run, evaluate_runs, evaluation_of, is_trained, summary_of,
                       train_unit)
from grid.tables import write_tables
from avsed.core.errors import AvsedError
from training.config import TrainConfig

REPORT = "grid-report.md"
STATES = ("queued", "training", "trained", "evaluating", "evaluated", "failed")


@dataclass(frozen=True)
class GridSpec:
    """What every unit of one grid shares."""

    store: str
    out_dir: Path
    base: TrainConfig
    plots: bool = True
    device: str = "auto"
    audio_weights: tuple[float, ...] = tuple(PAPER_AUDIO_WEIGHTS)

    def config(self, entry: GridEntry) -> TrainConfig:
        return entry.config(self.base)


@dataclass
class Outcome:
    """How a submitted unit ended: done; refused (an expected error: not retried); lost (its worker died or it
    crashed: submitted again)."""

    state: str
    message: str = ""
    runs: dict[int, str] = field(default_factory=dict)  # refused runs of an evaluation unit: seed -> why


class Executor(Protocol):
    def submit(self, unit: Unit, spec: GridSpec, attempt: int) -> Hashable: ...

    def wait(self, handles: Sequence[Hashable], timeout: float) -> list[tuple[Hashable, Outcome]]: ...


class InlineExecutor:
    """Runs each unit in this process when it is submitted. `train(spec, unit)` and `evaluate(spec, record)`
    default to the plain functions; the `paper` flow passes them wrapped as Prefect tasks."""

    def __init__(self, train: Callable | None = None, evaluate: Callable | None = None):
        self._train = train or (lambda spec, unit: train_unit(spec.store, spec.out_dir, unit.entry, unit.seeds,
                                                              spec.base))
        self._evaluate = evaluate or (lambda spec, record: evaluate_run(
            spec.store, record, plots=spec.plots, device=spec.device, audio_weights=spec.audio_weights))
        self._done: dict[int, Outcome] = {}
        self._n = 0

    def submit(self, unit: Unit, spec: GridSpec, attempt: int) -> int:
        self._n += 1
        try:
            if unit.kind == "train":
                self._train(spec, unit)
                self._done[self._n] = Outcome("done")
            else:
                records = [RunRecord(unit.entry, s, run_dir(spec.out_dir, unit.entry, s)) for s in unit.seeds]
                refused = evaluate_runs(records, lambda record: self._evaluate(spec, record))
                self._done[self._n] = Outcome("refused", "; ".join(refused.values()), refused) if refused else \
                    Outcome("done")
        except AvsedError as exc:  # a bad configuration, a run another worker holds: one line, no retry
            self._done[self._n] = Outcome("refused", str(exc))
        return self._n

    def wait(self, handles: Sequence[Hashable], timeout: float) -> list[tuple[Hashable, Outcome]]:
        return [(h, self._done.pop(h)) for h in handles if h in self._done]


class RunReader:
    """What the grid reads back from a run directory (a test or a benchmark with stub units replaces it)."""

    def trained(self, path: Path, total_steps: int) -> bool:
        return is_trained(path, total_steps)

    def evaluated(self, path: Path) -> bool:
        return evaluation_of(path) is not None


@dataclass
class GridProgress:
    """Each run's state (STATES), per model, for the progress artifact and the report."""

    entries: list[GridEntry]
    seeds: list[int]
    state: dict[tuple[str, int], str] = field(default_factory=dict)
    most_in_flight: int = 0

    def __post_init__(self) -> None:
        self.state = {(e.key, s): "queued" for e in self.entries for s in self.seeds}

    def set(self, unit: Unit, state: str, seeds: Sequence[int] | None = None) -> None:
        for s in unit.seeds if seeds is None else seeds:
            self.state[unit.entry.key, s] = state

    def counts(self) -> dict[str, Counter]:
        out: dict[str, Counter] = {e.key: Counter() for e in self.entries}
        for (key, _), state in self.state.items():
            out[key][state] += 1
        return out

    def fraction_done(self) -> float:
        """Share of the grid's work done: each run trained, then evaluated (a failed run counts as done)."""
        points = {"trained": 1, "evaluating": 1, "evaluated": 2, "failed": 2}
        return sum(points.get(s, 0) for s in self.state.values()) / max(1, 2 * len(self.state))

    def markdown(self) -> str:
        lines = ["| model | " + " | ".join(STATES) + " |", "|---|" + "---:|" * len(STATES)]
        for key, counts in self.counts().items():
            lines.append(f"| {key} | " + " | ".join(str(counts[s]) for s in STATES) + " |")
        return "\n".join(lines) + "\n"


def _settle_train(job: "_Job", outcome: Outcome, spec: GridSpec, reader: RunReader, paper: PaperRun,
                  progress: GridProgress, queue: deque, attempts: int) -> None:
    unit = job.unit
    if outcome.state == "refused":
        paper.failed.append(f"{unit.name}: {outcome.message} (not retried)")
        progress.set(unit, "failed")
        return
    total = spec.config(unit.entry).total_steps
    done = [s for s in unit.seeds if reader.trained(run_dir(spec.out_dir, unit.entry, s), total)]
    paper.trained_runs += len(done)
    progress.set(unit, "trained", done)
    # Evaluations go first in the queue: a group's runs are evaluated as soon as they are trained.
    if done:
        queue.appendleft(_Job(Unit("evaluate", unit.entry, tuple(done))))
    left = tuple(s for s in unit.seeds if s not in done)
    if left:
        _again(_Job(Unit("train", unit.entry, left), job.attempt + 1), outcome, paper, progress, queue, attempts)


def _settle_evaluate(job: "_Job", outcome: Outcome, spec: GridSpec, reader: RunReader, paper: PaperRun,
                     progress: GridProgress, queue: deque, attempts: int,
                     notify: Callable[[GridProgress, RunRecord | None], None]) -> None:
    """Each run of the unit: evaluated; refused (one line per run, not retried); or left to submit again."""
    unit = job.unit
    left = []
    for s in unit.seeds:
        record = RunRecord(unit.entry, s, run_dir(spec.out_dir, unit.entry, s))
        if reader.evaluated(record.run_dir):
            paper.evaluated_runs += 1
            progress.set(unit, "evaluated", [s])
            notify(progress, record)
        elif outcome.state == "refused" and (s in outcome.runs or not outcome.runs):
            why = outcome.runs.get(s, outcome.message)
            paper.failed.append(f"{Unit('evaluate', unit.entry, (s,)).name}: {why} (not retried)")
            progress.set(unit, "failed", [s])
        else:
            left.append(s)
    if left:
        _again(_Job(Unit("evaluate", unit.entry, tuple(left)), job.attempt + 1), outcome, paper, progress, queue,
               attempts)
    notify(progress, None)


def _again(job: "_Job", outcome: Outcome, paper: PaperRun, progress: GridProgress, queue: deque,
           attempts: int) -> None:
    why = outcome.message or "it ended without finishing"
    if job.attempt >= attempts:
        paper.failed.append(f"{job.unit.name}: {why}; gave up after {attempts} attempts")
        progress.set(job.unit, "failed")
        return
    paper.requeued.append(f"{job.unit.name}: {why}; submitted again (attempt {job.attempt + 1} of {attempts})")
    progress.set(job.unit, "queued")
    queue.appendleft(job)


@dataclass
class _Job:
    unit: Unit
    attempt: int = 0


def run_grid(spec: GridSpec, entries: Sequence[GridEntry], missing: Sequence[str], seeds: Sequence[int],
             executor: Executor, window: int = 1, group_size: int | None = None, attempts: int = 3,
             poll_s: float = 2.0, reader: RunReader | None = None,
             on_change: Callable[[GridProgress, RunRecord | None], None] | None = None,
             log: Callable[[str], None] = print) -> PaperRun:
    """Train and evaluate every unit of the grid through `executor`, at most `window` units in flight, then
    write the tables and the grid's report (grid-report.md) into `spec.out_dir`."""
    reader = reader or RunReader()
    seeds = [int(s) for s in seeds]
    paper = PaperRun(spec.out_dir, list(entries), list(missing))
    progress = GridProgress(list(entries), seeds)
    notify = on_change or (lambda progress, record: None)
    queue: deque[_Job] = deque()
    runnable = []
    for entry in entries:
        try:
            spec.config(entry)
            runnable.append(entry)
        except AvsedError as exc:  # refused before anything runs; the rest of the grid goes on
            paper.failed.append(f"{entry.key}: {exc} (not retried)")
            progress.set(Unit("train", entry, tuple(seeds)), "failed")
    queue.extend(_Job(u) for u in grid_units(runnable, seeds, group_size))
    in_flight: dict[Hashable, _Job] = {}
    while queue or in_flight:
        while queue and len(in_flight) < max(1, window):
            job = queue.popleft()
            handle = _submit(job, spec, executor, reader, progress, queue)
            if handle is not None:
                in_flight[handle] = job
                progress.most_in_flight = max(progress.most_in_flight, len(in_flight))
            notify(progress, None)
        if not in_flight:
            continue
        for handle, outcome in executor.wait(list(in_flight), timeout=poll_s):
            job = in_flight.pop(handle)
            unit = job.unit
            if unit.kind == "train":
                _settle_train(job, outcome, spec, reader, paper, progress, queue, attempts)
                log(f"paper: {unit.name}: {outcome.state}{': ' + outcome.message if outcome.message else ''}")
                notify(progress, None)
                continue
            _settle_evaluate(job, outcome, spec, reader, paper, progress, queue, attempts, notify)
    for entry in entries:
        for s in seeds:
            path = run_dir(spec.out_dir, entry, s)
            paper.runs.append(RunRecord(entry, s, path, evaluation_of(path) if (path / "evaluation").exists()
                                        else None))
    counts = Counter(progress.state.values())
    log(f"paper: {len(entries)} models x {len(seeds)} seeds: {counts['evaluated']} runs evaluated, "
        f"{counts['failed']} failed, {len(paper.requeued)} units submitted again")
    paper.tables = write_tables(paper, spec.out_dir)
    paper.tables.update(write_learned_tables(paper, spec.out_dir))
    paper.tables["report"] = write_report(paper, progress, spec.out_dir)
    return paper


def _submit(job: _Job, spec: GridSpec, executor: Executor, reader: RunReader, progress: GridProgress,
            queue: deque) -> Hashable | None:
    """Submit what is left of the job's unit; None when the run directories say it is all done already."""
    unit = job.unit
    if unit.kind == "train":
        total = spec.config(unit.entry).total_steps
        done = [s for s in unit.seeds if reader.trained(run_dir(spec.out_dir, unit.entry, s), total)]
        if done:
            queue.appendleft(_Job(Unit("evaluate", unit.entry, tuple(done))))
        progress.set(unit, "trained", done)
        left = tuple(s for s in unit.seeds if s not in done)
        if not left:
            return None
        unit = Unit("train", unit.entry, left)
        job.unit = unit
        progress.set(unit, "training")
    else:
        done = [s for s in unit.seeds if reader.evaluated(run_dir(spec.out_dir, unit.entry, s))]
        progress.set(unit, "evaluated", done)
        left = tuple(s for s in unit.seeds if s not in done)
        if not left:
            return None
        unit = Unit("evaluate", unit.entry, left)
        job.unit = unit
        progress.set(unit, "evaluating")
    return executor.submit(unit, spec, job.attempt)


def write_report(paper: PaperRun, progress: GridProgress, out_dir: Path) -> Path:
    """grid-report.md: each model's runs by state, then one line per unit that failed or was submitted again."""
    lines = ["# The grid's report", "", progress.markdown()]
    if paper.failed:
        lines += ["## Failed (one line each)", ""] + [f"- {line}" for line in paper.failed] + [""]
    if paper.requeued:
        lines += ["## Submitted again (a worker died or a run crashed)", ""] + [f"- {line}" for line in
                                                                               paper.requeued] + [""]
    path = Path(out_dir) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def run_paper(store: str | Path, out_dir: str | Path, seeds: Sequence[int] = tuple(range(20)),
              architectures: Sequence[str] = ("transformer", "conformer"), base: TrainConfig | dict | None = None,
              train_audio_weights: Sequence[float] = (0.75,), features: Sequence[str] | None = None,
              plots: bool = True, device: str = "auto", inference_audio_weights: Sequence[float] = PAPER_AUDIO_WEIGHTS,
              log: Callable[[str], None] = print, learned_modes: Sequence[str] = ("clip",),
              executor: Executor | None = None, window: int = 1, group_size: int | None = None,
              on_change: Callable | None = None) -> PaperRun:
    """Train and evaluate the grid with the store's features, then write the tables into `out_dir` (with the
    learned weights' table after the paper's). Without an executor, every unit runs in this process."""
    spec = GridSpec(str(store), Path(out_dir), as_base_config(base), plots, device, tuple(inference_audio_weights))
    entries, missing = plan_paper(store, architectures, train_audio_weights, features, learned_modes)
    if missing:
        log(f"paper: the store has no {', '.join(missing)}: their rows are left out of the tables")
    return run_grid(spec, entries, missing, seeds, executor or InlineExecutor(), window=window,
                    group_size=group_size, on_change=on_change, log=log)


__all__ = ["GridSpec", "InlineExecutor", "Outcome", "RunReader", "run_grid", "run_paper", "summary_of"]
