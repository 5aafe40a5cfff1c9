"""Prefect flow `paper`: the grid of the paper's Tables 5-8 (training/paper.py) as tasks: one training task per
model (its seeds together), one evaluation task per run, one task that writes the tables. Complete runs and
evaluations are skipped, so a re-run of a killed flow continues where it stopped.

`base` (settings every model shares, typed: the UI shows a form, the server checks a deployment run's keys) merges
key by key into `config_file`. Artifacts: `paper-progress` (runs trained and evaluated of the grid), one Markdown
table per evaluated run (`evaluation-<model>-seed<k>`, the five metrics per set) and `paper-tables` (the tables).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from evaluation.run import PAPER_AUDIO_WEIGHTS
from flows import quiet_expected_errors, retry_unless_expected
from training.config import TrainConfig, resolve_train_config
from training.paper import GridEntry, PaperRun, RunRecord, evaluate_run, plan_paper, summary_of, train_entry
from training.paper_tables import write_tables


@task(name="train-model", cache_policy=NO_CACHE, retry_condition_fn=retry_unless_expected)
def train_model_task(store: str, out_dir: str, entry: GridEntry, seeds: list[int], base: dict) -> tuple:
    return train_entry(store, Path(out_dir), entry, seeds, TrainConfig.from_dict(base))


@task(name="evaluate-run", cache_policy=NO_CACHE, retry_condition_fn=retry_unless_expected)
def evaluate_run_task(store: str, record: RunRecord, plots: bool, device: str,
                      audio_weights: list[float]) -> tuple[bool, RunRecord]:
    return evaluate_run(store, record, plots=plots, device=device, audio_weights=audio_weights), record


@task(name="paper-tables", cache_policy=NO_CACHE, retry_condition_fn=retry_unless_expected)
def tables_task(paper: PaperRun, out_dir: str) -> dict:
    from training.paper_learned import write_learned_tables

    tables = write_tables(paper, out_dir)
    tables.update(write_learned_tables(paper, out_dir))  # beyond the paper: the learned weights' table
    return {k: str(v) for k, v in tables.items()}


def artifact_key(text: str) -> str:
    """A Prefect artifact key (lower-case letters, digits and dashes) from a model key."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", text.lower())).strip("-")


def evaluation_markdown(record: RunRecord) -> str:
    from evaluation.run import metrics_markdown

    return (f"# {record.entry.key}, seed {record.seed}\n\n{record.run_dir}; values in %.\n\n"
            f"{metrics_markdown(record.result)}\n")


@flow(name="paper", log_prints=True)
def paper_flow(store: str, out_dir: str, seeds: list[int] = list(range(20)),
               architectures: list[str] = ["transformer", "conformer"], base: TrainConfig | None = None,
               config_file: str | None = None, train_audio_weights: list[float] = [0.75],
               features: list[str] | None = None, plots: bool = True, device: str = "auto",
               inference_audio_weights: list[float] = list(PAPER_AUDIO_WEIGHTS),
               learned_modes: list[Literal["clip", "frame"]] = ["clip"]) -> dict[str, Any]:
    """Train and evaluate every model of the paper's tables that the store's features allow (20 seeds each by
    default), then write tables.md, table<N>.csv and table<N>.png into out_dir.

    Args:
        store: the feature store; models need the visual features it has.
        out_dir: runs/<model>/seed<k>/ and the tables go here.
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
    """
    quiet_expected_errors()
    logger = get_run_logger()
    shared = resolve_train_config(base, config_file).to_dict()
    entries, missing = plan_paper(store, architectures, train_audio_weights, features, list(learned_modes))
    paper = PaperRun(Path(out_dir), entries, missing)
    if missing:
        logger.info("the store has no %s: their rows are left out", ", ".join(missing))
    total = 2 * len(entries) * len(seeds)  # each run is trained, then evaluated
    progress = create_progress_artifact(0.0, key="paper-progress",
                                        description=f"runs trained and evaluated ({len(entries)} models x "
                                                    f"{len(seeds)} seeds)")
    done = 0
    for entry in entries:
        trained, records = train_model_task.with_options(task_run_name=f"train-{entry.key}")(
            store, out_dir, entry, list(seeds), shared)
        paper.trained_runs += trained
        done += len(records)
        update_progress_artifact(progress, 100.0 * done / max(1, total))
        for record in records:
            evaluated, record = evaluate_run_task.with_options(
                task_run_name=f"evaluate-{entry.key}-seed{record.seed}")(store, record, plots, device,
                                                                         list(inference_audio_weights))
            paper.evaluated_runs += int(evaluated)
            paper.runs.append(record)
            if record.result is not None:
                create_markdown_artifact(evaluation_markdown(record),
                                         key=artifact_key(f"evaluation-{entry.key}-seed{record.seed}"),
                                         description=f"{entry.label} ({entry.architecture}), seed {record.seed}")
            done += 1
            update_progress_artifact(progress, 100.0 * done / max(1, total))
        logger.info("%s: trained %d of %d runs", entry.key, trained, len(records))
    paper.tables = {k: Path(v) for k, v in tables_task(paper, out_dir).items()}
    markdown = paper.tables.get("markdown")
    if markdown is not None and Path(markdown).exists():
        create_markdown_artifact(Path(markdown).read_text(), key="paper-tables",
                                 description="the paper's Tables 5-8 from this grid")
    return summary_of(paper)
