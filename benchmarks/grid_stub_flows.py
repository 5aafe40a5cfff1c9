"""Stub `train` and `evaluate` flows for bench_grid_orchestration.py: the parameters of flows/train.py and
flows/evaluate.py, no work (sleep 0), a marker file per run so the grid reads back what is done. They import
Prefect only, so a flow run's process starts as fast as Prefect allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow


@flow(name="train")
def stub_train(store: str, out_dir: str, config: dict[str, Any] | None = None, config_file: str | None = None,
               seeds: list[int] | None = None) -> int:
    for s in seeds or []:
        run = Path(out_dir) / f"seed{s}"
        run.mkdir(parents=True, exist_ok=True)
        (run / "trained").touch()
    return len(seeds or [])


@flow(name="evaluate")
def stub_evaluate(store: str, entry: dict[str, Any], run_dirs: list[str] = [], plots: bool = True,
                  device: str = "auto", audio_weights: list[float] | None = None, run_dir: str | None = None) -> int:
    dirs = list(run_dirs) + ([run_dir] if run_dir else [])
    for d in dirs:
        Path(d).mkdir(parents=True, exist_ok=True)
        (Path(d) / "evaluated").touch()
    return len(dirs)
