"""Prefect flow `evaluate`: evaluate trained runs as the paper does (grid.runs.evaluate_run), the unit the paper
grid submits per seed group to a work pool (grid/pool.py): the group's runs one after the other, in one process.
Each run directory is claimed while it is evaluated; an evaluation of that very checkpoint already there is kept.
A run refused for an expected reason does not stop the others: the flow run then fails with one line per refused
run (`EvaluationsRefused`). Artifacts: `evaluation-seed<k>` per run (the five metrics per set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from evaluation.run import PAPER_AUDIO_WEIGHTS, metrics_markdown
from flows import quiet_expected_errors, retry_unless_expected
from grid.plan import GridEntry
from grid.runs import EvaluationsRefused, RunRecord, evaluate_run, evaluate_runs


def seed_of(run_dir: str | Path) -> int:
    return int(Path(run_dir).name.removeprefix("seed") or 0)


@task(name="evaluate-run", task_run_name="evaluate[{run_dir}]", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=10, retry_condition_fn=retry_unless_expected)
def evaluate_task(store: str, run_dir: str, entry: GridEntry, plots: bool, device: str,
                  audio_weights: list[float] | None) -> RunRecord:
    record = RunRecord(entry, seed_of(run_dir), Path(run_dir))
    evaluate_run(store, record, plots=plots, device=device, audio_weights=audio_weights)
    return record


@flow(name="evaluate", log_prints=True)
def evaluate_flow(store: str, entry: dict[str, Any], run_dirs: list[str] = [], plots: bool = True,
                  device: str = "auto", audio_weights: list[float] | None = list(PAPER_AUDIO_WEIGHTS),
                  run_dir: str | None = None) -> dict[str, Any]:
    """Evaluate runs of the paper's grid: post-processing tuned on validation, eval with and without video.

    Args:
        store: the feature store the runs were trained on.
        entry: the grid model (table, architecture, encoders, scheme, train_audio_weight), recorded in the results.
        run_dirs: the run directories (runs/<model>/seed<k>), with their checkpoints, evaluated one after the other.
        plots: write the evaluation's plots.
        device: auto, cpu, cuda or cuda:N.
        audio_weights: the audio weights a multi-encoder model chooses from on validation EBF1 (None: the run's own).
        run_dir: one more run directory (one run alone).
    """
    quiet_expected_errors()
    grid_entry = GridEntry(**{**entry, "encoders": tuple(entry["encoders"])})
    dirs = list(run_dirs) + ([run_dir] if run_dir else [])
    weights: dict[int, Any] = {}

    def evaluate(record: RunRecord) -> None:
        done = evaluate_task(store, str(record.run_dir), grid_entry, plots, device, audio_weights)
        weights[done.seed] = done.result.info.get("audio_weight")
        create_markdown_artifact(f"# {done.entry.key}, seed {done.seed}\n\n{done.run_dir}; values in %.\n\n"
                                 f"{metrics_markdown(done.result)}\n", key=f"evaluation-seed{done.seed}",
                                 description=f"{done.entry.label} ({done.entry.architecture}), seed {done.seed}")

    refused = evaluate_runs([RunRecord(grid_entry, seed_of(d), Path(d)) for d in dirs], evaluate)
    if refused:
        raise EvaluationsRefused(refused)
    return {"run_dirs": dirs, "audio_weights": weights}
