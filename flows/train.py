"""Prefect flow `train`: train one seed, or the seeds of one configuration together, on a cached store
(nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import quiet_expected_errors, retry_unless_expected
from training.cli import seed_dir
from training.config import TrainConfig, merge_settings
from training.train import train_group


@task(name="train-seeds", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10,
      retry_condition_fn=retry_unless_expected)
def train_seeds_task(store: str, config: dict[str, Any], runs: dict[int, str]) -> list[dict[str, Any]]:
    # resume=True: a retried or re-run task continues from the last checkpoints instead of starting over.
    results = train_group(store, TrainConfig.from_dict(config), {int(s): d for s, d in runs.items()}, resume=True)
    return [{"seed": int(s), "out_dir": str(r.out_dir), "steps": r.steps, "trained_steps": r.trained_steps,
             "last_losses": r.last_losses, "samples_per_second": r.samples_per_second}
            for s, r in zip(runs, results)]


def flow_config(config: dict[str, Any] | None, config_file: str | None) -> TrainConfig:
    """The config file (or the paper's defaults) with `config` merged in key by key."""
    base = TrainConfig.load(config_file).to_dict() if config_file else TrainConfig().to_dict()
    return TrainConfig.from_dict(merge_settings(base, config))


@flow(name="train", log_prints=True)
def train_flow(store: str, out_dir: str, config: dict[str, Any] | None = None, config_file: str | None = None,
               seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """`seeds` given: the seeds train together in one task (one process, the store read once), each into
    <out_dir>/seed<k>; otherwise one run (seed from the config) in out_dir."""
    quiet_expected_errors()
    cfg = flow_config(config, config_file)
    runs = {int(s): str(seed_dir(out_dir, s)) for s in seeds} if seeds else {cfg.seed: str(Path(out_dir))}
    results = train_seeds_task(store, cfg.to_dict(), runs)
    get_run_logger().info("trained %d run(s): %s", len(results), results)
    return results
