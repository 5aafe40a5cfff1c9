"""Prefect flow `paper`: the grid of the paper's Tables 5-8 (grid/), a thin wrapper over grid.run.run_paper.

Without `work_pool`, each model's training and each run's evaluation is a task of this flow run (in its
process). With `work_pool`, each unit is its own flow run of that pool's `train` and `evaluate` deployments
(flows/train.py, flows/evaluate.py: a seed group trained, then the group's runs evaluated; grid/pool.py), at most
`in_flight` at once, pulled by the pool's workers (one per GPU); this flow waits, re-submits the units of a worker
that died, and writes the tables. Complete runs and evaluations are skipped, so a re-run of a killed flow continues
where it stopped.

`base` (settings every model shares, typed: the UI shows a form, the server checks a deployment run's keys) merges
key by key into `config_file`. Artifacts: `paper-progress` (share of the grid's runs trained and evaluated),
`grid-progress` (per model: runs queued, training, trained, evaluating, evaluated, failed), one Markdown table per
evaluated run (`evaluation-<model>-seed<k>`, the five metrics per set), `paper-tables` and `grid-report` (units that
failed, one line each, and units submitted again).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from evaluation.run import PAPER_AUDIO_WEIGHTS, metrics_markdown
from flows import quiet_expected_errors, retry_unless_expected
from grid.pool import PoolExecutor, pool_deployments
from grid.run import GridProgress, GridSpec, InlineExecutor, run_paper
from grid.runs import RunRecord, evaluate_run, evaluation_of, summary_of, train_unit
from training.config import TrainConfig, resolve_train_config


@task(name="train-model", task_run_name="train-{name}", cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_expected)
def train_model_task(spec: GridSpec, unit, name: str) -> int:
    return train_unit(spec.store, spec.out_dir, unit.entry, unit.seeds, spec.base)


@task(name="evaluate-run", task_run_name="evaluate-{name}", cache_policy=NO_CACHE,
      retry_condition_fn=retry_unless_expected)
def evaluate_run_task(spec: GridSpec, record: RunRecord, name: str) -> bool:
    return evaluate_run(spec.store, record, plots=spec.plots, device=spec.device, audio_weights=spec.audio_weights)


def artifact_key(text: str) -> str:
    """A Prefect artifact key (lower-case letters, digits and dashes) from a model key."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def evaluation_markdown(record: RunRecord) -> str:
    return (f"# {record.entry.key}, seed {record.seed}\n\n{record.run_dir}; values in %.\n\n"
            f"{metrics_markdown(record.result)}\n")


class GridArtifacts:
    """The grid's progress as artifacts of this flow run, refreshed at most every `interval` seconds (and at
    every evaluated run, which gets its own table)."""

    def __init__(self, interval: float = 5.0):
        self.interval, self._last, self._shown = interval, 0.0, None
        self.progress = create_progress_artifact(0.0, key="paper-progress",
                                                 description="share of the grid's runs trained and evaluated")

    def __call__(self, progress: GridProgress, record: RunRecord | None) -> None:
        if record is not None:
            record.result = evaluation_of(record.run_dir)
            if record.result is not None:
                create_markdown_artifact(evaluation_markdown(record),
                                         key=artifact_key(f"evaluation-{record.entry.key}-seed{record.seed}"),
                                         description=f"{record.entry.label} ({record.entry.architecture}), "
                                                     f"seed {record.seed}")
        now = time.monotonic()
        table = progress.markdown()
        if table == self._shown or (now - self._last < self.interval and record is None):
            return
        self._last, self._shown = now, table
        update_progress_artifact(self.progress, 100.0 * progress.fraction_done())
        create_markdown_artifact(f"# The grid, per model\n\n{table}", key="grid-progress",
                                 description="runs queued, training, trained, evaluating, evaluated, failed")

    def finish(self, progress_fraction: float) -> None:
        update_progress_artifact(self.progress, 100.0 * progress_fraction)


@flow(name="paper", log_prints=True)
def paper_flow(store: str, out_dir: str, seeds: list[int] = list(range(20)),
               architectures: list[str] = ["transformer", "conformer"], base: TrainConfig | None = None,
               config_file: str | None = None, train_audio_weights: list[float] = [0.75],
               features: list[str] | None = None, plots: bool = True, device: str = "auto",
               inference_audio_weights: list[float] = list(PAPER_AUDIO_WEIGHTS),
               learned_modes: list[Literal["clip", "frame"]] = ["clip"], work_pool: str | None = None,
               deployment: str | None = None, evaluate_pool: str | None = None, in_flight: int = 16,
               group_size: int | None = None) -> dict[str, Any]:
    """Train and evaluate every model of the paper's tables that the store's features allow (20 seeds each by
    default), then write tables.md, table<N>.csv and table<N>.png into out_dir.

    Args:
        store: the feature store; models need the visual features it has (every worker must see this path).
        out_dir: runs/<model>/seed<k>/, the tables and grid-report.md go here (every worker must see this path).
        seeds: the seeds of every model (the paper: 20).
        architectures: transformer and/or conformer.
        base: settings every model shares (e.g. toy sizes); each model sets its own architecture, encoders and
            interpolation weights. Merged key by key into `config_file`'s.
        config_file: a YAML file of shared training settings, on the machine that runs the flow.
        train_audio_weights: training audio weights of the fixed-weight models (the best on validation EBF1 is
            shown).
        features: visual features to use (default vgg16, openl3, tce; absent ones are left out).
        plots: write each run's evaluation plots.
        device: auto, cpu, cuda or cuda:N.
        inference_audio_weights: the audio weights a multi-encoder model chooses from on validation EBF1.
        learned_modes: beyond the paper, each bi- and tri-encoder also trained with learned interpolation weights
            per clip and/or per frame (training/gate.py); empty: none.
        work_pool: submit each unit to this work pool's `train` and `evaluate` deployments (prefect.yaml) instead
            of running it here.
        deployment: which deployment name of the pool, where it has several.
        evaluate_pool: the work pool whose `evaluate` deployment evaluates the runs (e.g. a CPU pool; default
            `work_pool`).
        in_flight: with a work pool, units submitted and not finished at most (e.g. twice the workers).
        group_size: seeds of a model trained together in one unit (default: all of them).
    """
    quiet_expected_errors()
    logger = get_run_logger()
    shared = resolve_train_config(base, config_file)
    if work_pool:
        executor, window = PoolExecutor(pool_deployments(work_pool, deployment, evaluate_pool),
                                        log=logger.warning), in_flight
    else:
        executor, window = InlineExecutor(
            train=lambda spec, unit: train_model_task(spec, unit, name=unit.name.removeprefix("train-")),
            evaluate=lambda spec, record: evaluate_run_task(spec, record,
                                                            name=f"{record.entry.key}-seed{record.seed}")), 1
    artifacts = GridArtifacts()
    paper = run_paper(store, out_dir, seeds, architectures, shared, train_audio_weights, features, plots, device,
                      inference_audio_weights, logger.info, list(learned_modes), executor=executor, window=window,
                      group_size=group_size, on_change=artifacts)
    artifacts.finish(1.0)
    for path, key, what in ((paper.tables.get("markdown"), "paper-tables", "the paper's Tables 5-8 from this grid"),
                            (paper.tables.get("report"), "grid-report", "units that failed or were submitted again")):
        if path is not None and Path(path).exists():
            create_markdown_artifact(Path(path).read_text(), key=key, description=what)
    return summary_of(paper)
