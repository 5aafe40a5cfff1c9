"""Prefect flow `paper`: the grid of the paper's Tables 5-8 (training/paper.py) as tasks: one training task per
model (its seeds together), one evaluation task per run, one task that writes the tables. Complete runs and
evaluations are skipped, so a re-run of a killed flow continues where it stopped."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from evaluation.run import PAPER_AUDIO_WEIGHTS
from flows import quiet_expected_errors

from training.paper import (GridEntry, PaperRun, RunRecord, as_base_config, evaluate_run, plan_paper, summary_of,
                            train_entry)
from training.paper_tables import write_tables


@task(name="train-model", cache_policy=NO_CACHE)
def train_model_task(store: str, out_dir: str, entry: GridEntry, seeds: list[int], base: dict) -> tuple:
    from pathlib import Path

    return train_entry(store, Path(out_dir), entry, seeds, as_base_config(base))


@task(name="evaluate-run", cache_policy=NO_CACHE)
def evaluate_run_task(store: str, record: RunRecord, plots: bool, device: str,
                      audio_weights: list[float]) -> tuple[bool, RunRecord]:
    return evaluate_run(store, record, plots=plots, device=device, audio_weights=audio_weights), record


@task(name="paper-tables", cache_policy=NO_CACHE)
def tables_task(paper: PaperRun, out_dir: str) -> dict:
    return {k: str(v) for k, v in write_tables(paper, out_dir).items()}


@flow(name="paper", log_prints=True)
def paper_flow(store: str, out_dir: str, seeds: list[int] = list(range(20)),
               architectures: list[str] = ["transformer", "conformer"], base: dict[str, Any] | None = None,
               train_audio_weights: list[float] = [0.75], features: list[str] | None = None, plots: bool = True,
               device: str = "auto",
               inference_audio_weights: list[float] = list(PAPER_AUDIO_WEIGHTS)) -> dict[str, Any]:
    """Train and evaluate every model of the paper's tables that the store's features allow (20 seeds each by
    default), then write tables.md, table<N>.csv and table<N>.png into out_dir."""
    from pathlib import Path

    quiet_expected_errors()
    logger = get_run_logger()
    entries, missing = plan_paper(store, architectures, train_audio_weights, features)
    paper = PaperRun(Path(out_dir), entries, missing)
    if missing:
        logger.info("the store has no %s: their rows are left out", ", ".join(missing))
    base = as_base_config(base).to_dict()
    for entry in entries:
        trained, records = train_model_task.with_options(task_run_name=f"train-{entry.key}")(
            store, out_dir, entry, list(seeds), base)
        paper.trained_runs += trained
        for record in records:
            evaluated, record = evaluate_run_task.with_options(
                task_run_name=f"evaluate-{entry.key}-seed{record.seed}")(store, record, plots, device,
                                                                         list(inference_audio_weights))
            paper.evaluated_runs += int(evaluated)
            paper.runs.append(record)
        logger.info("%s: trained %d of %d runs", entry.key, trained, len(records))
    paper.tables = {k: Path(v) for k, v in tables_task(paper, out_dir).items()}
    return summary_of(paper)
