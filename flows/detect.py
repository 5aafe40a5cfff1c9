"""Prefect flow `detect`: `avsed detect` for folders on a worker (detection.detect.detect with the same
parameters); a Markdown artifact lists each recording's summary line and each skipped input's line."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from detection.detect import DEFAULT_BATCH_WINDOWS, DEFAULT_HOP_SECONDS, detect
from flows import quiet_expected_errors, retry_unless_expected
from pipeline.download import DownloadConfig


@task(name="detect-recordings", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10,
      retry_condition_fn=retry_unless_expected)
def detect_task(model: str, inputs: list[str], out_dir: str, hop: float, threshold: float | None,
                batch_windows: int, download: DownloadConfig | None, plots: bool) -> dict[str, Any]:
    logger = get_run_logger()
    summary = detect(model, inputs, out_dir, hop_seconds=hop, threshold=threshold, batch_windows=batch_windows,
                     download=download, plots=plots, progress=False, echo=logger.info)
    return {"out_dir": str(summary.out_dir), "exit_code": summary.exit_code, "seconds": summary.seconds,
            "recordings": [r.summary() for r in summary.recordings], "failures": [f.message for f in summary.failures],
            "notes": summary.notes, "events": sum(len(r.events) for r in summary.recordings)}


@flow(name="detect", log_prints=True)
def detect_flow(model: str, inputs: list[str], out_dir: str, hop: float = DEFAULT_HOP_SECONDS,
                threshold: float | None = None, batch_windows: int = DEFAULT_BATCH_WINDOWS,
                download: DownloadConfig | None = None, plots: bool = True) -> dict[str, Any]:
    """Sound events in `inputs` (files, folders, YouTube URLs or ids) with the trained, evaluated run `model`."""
    quiet_expected_errors()
    result = detect_task(model, inputs, out_dir, hop, threshold, batch_windows, download, plots)
    lines = [f"- {line}" for line in result["recordings"]] + [f"- skipped: {line}" for line in result["failures"]]
    create_markdown_artifact("# Detections\n\n" + "\n".join(lines) + f"\n\n{result['events']} events in "
                             f"`{result['out_dir']}/detections.tsv`\n", key="detections")
    return result
