"""Prefect flow `train`: train one seed, or the seeds of one configuration together, on a cached store
(nothing is downloaded).

The parameters are typed (`TrainConfig`): the Prefect UI shows a form and the server refuses a deployment run with
a misspelt key or a wrong type before it starts. `config_file` and `config` merge key by key
(`training.config.resolve_train_config`): `config_file: configs/conformer_bi_openl3.yaml` with
`config: {"model": {"d_model": 32}}` trains that file's conformer, 32 wide.

Observability: the task is named after what it trains (`train-seeds[conformer logmel+openl3, seeds 0+1]`), a
progress artifact (`training-progress`) follows the runs' logs while they train, and a Markdown artifact per run
(`training-seed<k>`) holds its summary and its last validation metrics (student and teacher) when
`validate_every` is set.
"""

from __future__ import annotations

import contextvars
import json
import threading
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from flows import quiet_expected_errors, retry_unless_expected
from grid.runs import train_runs
from training.run_dirs import seed_dir
from training.config import TrainConfig, resolve_train_config


def run_label(config: TrainConfig, seeds) -> str:
    """What a training task trains, for its name: architecture, streams and seeds."""
    return f"{config.model.architecture} {'+'.join(config.encoders)}, seeds {'+'.join(str(s) for s in seeds)}"


class TrainingProgress:
    """A progress artifact over the steps of the runs a task trains, read from their `log.jsonl` (written every
    `log_every` steps) by a thread of the task while it trains: the training loop itself knows nothing of Prefect."""

    def __init__(self, runs: dict[int, str], total_steps: int, key: str = "training-progress",
                 interval: float = 10.0):
        self.logs = [Path(d) / "log.jsonl" for d in runs.values()]
        self.total, self.interval = max(1, int(total_steps)), interval
        self.artifact = create_progress_artifact(0.0, key=key,
                                                 description=f"steps done of {total_steps} (slowest of "
                                                             f"{len(self.logs)} run(s))")
        self._stop = threading.Event()
        self._shown = -1.0
        # the thread reports through this task run's Prefect context
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._watch,), name="avsed-training-progress",
                                        daemon=True)

    def steps_done(self) -> int:
        """The step of the slowest run, from the last line of each log."""
        done = []
        for path in self.logs:
            step = 0
            try:
                with open(path, "rb") as f:
                    f.seek(max(0, f.seek(0, 2) - 4096))
                    lines = f.read().decode(errors="replace").splitlines()
                for line in reversed(lines):
                    try:
                        step = int(json.loads(line)["step"])
                        break
                    except (ValueError, KeyError, TypeError):
                        continue  # the first, cut line of the tail
            except OSError:
                pass
            done.append(step)
        return min(done, default=0)

    def update(self) -> None:
        percent = 100.0 * min(self.steps_done(), self.total) / self.total
        if percent != self._shown:
            update_progress_artifact(self.artifact, percent)
            self._shown = percent

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.update()
            except Exception:  # noqa: BLE001 - progress is a courtesy: the training goes on
                pass

    def __enter__(self) -> "TrainingProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.update()


def summary_markdown(result: dict[str, Any], config: TrainConfig) -> str:
    """A run's summary (and its last validation metrics, student and teacher, when it validated) as Markdown."""
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result["last_losses"].items()) or "none"
    lines = [f"# Training run {result['out_dir']}", "",
             "| | |", "|---|---|",
             f"| model | {config.model.architecture}, encoders {', '.join(config.encoders)}, d_model "
             f"{config.model.d_model} |",
             f"| interpolation weights | {config.interpolation_weights or 'equal'} |",
             f"| seed | {result['seed']} |",
             f"| steps | {result['steps']} of {config.total_steps} ({result['trained_steps']} in this run) |",
             f"| last losses | {losses} |",
             f"| samples per second | {result['samples_per_second']:.1f} |"]
    validation = result.get("validation")
    if validation:
        metrics = sorted({m for ms in validation["metrics"].values() for m in ms})
        lines += ["", f"## Validation at step {validation['step']} (values in %)", "",
                  "| model | " + " | ".join(m.upper() for m in metrics) + " |",
                  "|---|" + "---:|" * len(metrics)]
        for who, ms in validation["metrics"].items():
            lines.append(f"| {who} | " + " | ".join(f"{100 * ms[m]:.1f}" if ms.get(m) is not None else ""
                                                   for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def _last_validation(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    entry = next((h for h in reversed(history) if "validation" in h), None)
    return {"step": entry["step"], "metrics": entry["validation"]} if entry else None


@task(name="train-seeds", task_run_name="train-seeds[{label}]", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=10, retry_condition_fn=retry_unless_expected)
def train_seeds_task(store: str, config: dict[str, Any], runs: dict[int, str], label: str) -> list[dict[str, Any]]:
    cfg = TrainConfig.from_dict(config)
    with TrainingProgress(runs, cfg.total_steps):
        # The runs are claimed first (two workers never write one run; a dead worker's claim is taken over), and
        # resumed: a retried, re-run or re-submitted task continues from the last checkpoints, bit-exactly.
        results = train_runs(store, cfg, {int(s): d for s, d in runs.items()}, purpose=f"training {label}")
    return [{"seed": int(s), "out_dir": str(r.out_dir), "steps": r.steps, "trained_steps": r.trained_steps,
             "last_losses": r.last_losses, "samples_per_second": r.samples_per_second,
             "validation": _last_validation(r.history)}
            for s, r in zip(runs, results)]


def flow_config(config: TrainConfig | dict[str, Any] | None, config_file: str | None) -> TrainConfig:
    """The config file (or the paper's defaults) with `config` merged in key by key."""
    return resolve_train_config(config, config_file)


@flow(name="train", log_prints=True)
def train_flow(store: str, out_dir: str, config: TrainConfig | None = None, config_file: str | None = None,
               seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """Train on a feature store (a run already in out_dir continues from its checkpoint).

    Args:
        store: the feature store (features.zarr) on the machine that runs the flow.
        out_dir: the run directory; with `seeds`, one <out_dir>/seed<k> per seed.
        config: training settings, every key optional (the paper's defaults, or `config_file`'s settings, for the
            rest; the two merge key by key, `config` winning).
        config_file: a YAML file of training settings (configs/*.yaml), on the machine that runs the flow.
        seeds: train these seeds together in one task (one process, the store read once); otherwise one run with
            the config's seed in out_dir.
    """
    quiet_expected_errors()
    cfg = flow_config(config, config_file)
    runs = {int(s): str(seed_dir(out_dir, s)) for s in seeds} if seeds else {cfg.seed: str(Path(out_dir))}
    results = train_seeds_task(store, cfg.to_dict(), runs, label=run_label(cfg, runs))
    for result in results:
        create_markdown_artifact(summary_markdown(result, cfg), key=f"training-seed{result['seed']}",
                                 description=f"training run {result['out_dir']}")
    get_run_logger().info("trained %d run(s): %s", len(results),
                          [{k: v for k, v in r.items() if k != "validation"} for r in results])
    return results
