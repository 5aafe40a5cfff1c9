"""Prefect flow `evaluate`: evaluate one trained run as the paper does (grid.runs.evaluate_run), the unit the
paper grid submits per run to a work pool (grid/pool.py). The run directory is claimed while it is evaluated;
an evaluation of that very checkpoint already there is kept. Artifact: `evaluation` (the five metrics per set).
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
from grid.runs import RunRecord, evaluate_run


@task(name="evaluate-run", task_run_name="evaluate[{run_dir}]", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=10, retry_condition_fn=retry_unless_expected)
def evaluate_task(store: str, run_dir: str, entry: GridEntry, plots: bool, device: str,
                  audio_weights: list[float] | None) -> RunRecord:
    record = RunRecord(entry, int(Path(run_dir).name.removeprefix("seed") or 0), Path(run_dir))
    evaluate_run(store, record, plots=plots, device=device, audio_weights=audio_weights)
    return record


@flow(name="evaluate", log_prints=True)
def evaluate_flow(store: str, run_dir: str, entry: dict[str, Any], plots: bool = True, device: str = "auto",
                  audio_weights: list[float] | None = list(PAPER_AUDIO_WEIGHTS)) -> dict[str, Any]:
    """Evaluate a run of the paper's grid: post-processing tuned on validation, eval with and without video.

    Args:
        store: the feature store the run was trained on.
        run_dir: the run directory (runs/<model>/seed<k>), with its checkpoint.
        entry: the grid model (table, architecture, encoders, scheme, train_audio_weight), recorded in the result.
        plots: write the evaluation's plots.
        device: auto, cpu, cuda or cuda:N.
        audio_weights: the audio weights a multi-encoder model chooses from on validation EBF1 (None: the run's own).
    """
    quiet_expected_errors()
    record = evaluate_task(store, run_dir, GridEntry(**{**entry, "encoders": tuple(entry["encoders"])}), plots,
                           device, audio_weights)
    create_markdown_artifact(f"# {record.entry.key}, seed {record.seed}\n\n{record.run_dir}; values in %.\n\n"
                             f"{metrics_markdown(record.result)}\n", key="evaluation",
                             description=f"{record.entry.label} ({record.entry.architecture}), seed {record.seed}")
    return {"run_dir": run_dir, "audio_weight": record.result.info.get("audio_weight")}
