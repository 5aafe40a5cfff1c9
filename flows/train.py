"""Prefect flow `train`: train one or several seeds of a config on a cached store (nothing is downloaded)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from training.config import TrainConfig
from training.train import train


@task(name="train-seed", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def train_seed_task(store: str, config: dict[str, Any], out_dir: str) -> dict[str, Any]:
    # resume=True: a retried or re-run task continues from its last checkpoint instead of starting over.
    result = train(store, TrainConfig.from_dict(config), out_dir, resume=True)
    return {"out_dir": str(result.out_dir), "steps": result.steps, "last_losses": result.last_losses,
            "samples_per_second": result.samples_per_second}


@flow(name="train", log_prints=True)
def train_flow(store: str, out_dir: str, config: dict[str, Any] | None = None, config_file: str | None = None,
               seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """`seeds` given: one run per seed in <out_dir>/seed<k>; otherwise one run in out_dir."""
    cfg = TrainConfig.load(config_file) if config_file else TrainConfig.from_dict(config or {})
    if config_file and config:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **config})
    runs = [(cfg, out_dir)] if not seeds else \
        [(TrainConfig.from_dict({**cfg.to_dict(), "seed": s}), f"{out_dir}/seed{s}") for s in seeds]
    results = [train_seed_task(store, c.to_dict(), d) for c, d in runs]
    get_run_logger().info("trained %d run(s): %s", len(results), results)
    return results
