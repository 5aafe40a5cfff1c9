"""Checkpoints of a run, and of the seeds of a group written together.

A run directory holds `checkpoint.pt`: student, teacher, optimiser state, step, the torch RNG state (dropout),
the loss sums since the last log line, the config and the store's feature provenance. A seed trained in a group
writes the same file into its own directory. The seeds of a group must resume from the same step, so a group
checkpoint is written in two phases: every seed's `checkpoint.next.pt` first (each atomically), then each is
renamed over `checkpoint.pt`. A kill in the first phase leaves every `checkpoint.pt` at the previous step (the
`.next` files are discarded on resume); a kill in the second leaves every seed with the new step in one of the
two files (rolled forward on resume).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from avsed.core.errors import AvsedError
from training.run_dirs import CHECKPOINT

PENDING = "checkpoint.next.pt"
FORMAT = 2


class RunMismatch(AvsedError, ValueError):
    """A run directory (or checkpoint) does not fit what was asked of it: another config, features made
    differently, no checkpoint to resume. The message names the run and says what to do."""


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash never leaves a half-written file under the final name


def save_checkpoints(out_dirs: Sequence[Path], payloads: Sequence[dict[str, Any]]) -> None:
    for d, payload in zip(out_dirs, payloads):
        _write_atomic(Path(d) / PENDING, payload)
    for d in out_dirs:
        os.replace(Path(d) / PENDING, Path(d) / CHECKPOINT)


class StoreChanged(RunMismatch):
    """The store no longer holds the training data a checkpoint was trained on (clips added, videos found, ...)."""


class BadCheckpoint(RunMismatch):
    """A checkpoint file cannot be read (truncated, overwritten, not a checkpoint at all)."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file's payload; `BadCheckpoint` (one line: the file, the cause, what to do) if it cannot be
    read. torch.load fails in many ways on a damaged file (zip reader, unpickler, EOF), none of them a bug here."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - every way a damaged file fails to load is the same user problem
        cause = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise BadCheckpoint(f"{path}: cannot be read as a checkpoint ({cause}); the file is truncated or is not a "
                            f"checkpoint (a copy cut short, a full disk?): restore it from a copy, or delete it and "
                            f"train the run again into a new directory") from None
    if not isinstance(payload, dict) or "step" not in payload:
        raise BadCheckpoint(f"{path}: holds a {type(payload).__name__}, not a training checkpoint (no step); point "
                            f"at a run directory's {CHECKPOINT}, or train the run again")
    return payload


def load_checkpoints(out_dirs: Sequence[Path]) -> list[dict[str, Any] | None]:
    """Each directory's checkpoint (None where there is none) after finishing or discarding an interrupted
    group write (see the module docstring)."""
    dirs = [Path(d) for d in out_dirs]
    current = [read_checkpoint(d / CHECKPOINT) if (d / CHECKPOINT).exists() else None for d in dirs]
    pending = [read_checkpoint(d / PENDING) if (d / PENDING).exists() else None for d in dirs]
    if any(p is not None for p in pending):
        target = max(p["step"] for p in pending if p is not None)
        complete = all((p is not None and p["step"] == target) or (c is not None and c["step"] == target)
                       for p, c in zip(pending, current))
        for k, d in enumerate(dirs):
            if pending[k] is None:
                continue
            if complete and pending[k]["step"] == target:
                os.replace(d / PENDING, d / CHECKPOINT)
                current[k] = pending[k]
            else:
                (d / PENDING).unlink()
    return current
