"""The detection tests' trained run: built once per session (a few minutes of CPU), see tests/detection/trained.py.
`AVSED_TEST_DETECT_RUN=DIR` reuses (or builds once into) DIR instead, to iterate on the tests without retraining."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    from tests.detection.trained import SYNTH, TrainedRun, build_trained_run

    keep = os.environ.get("AVSED_TEST_DETECT_RUN")
    if keep and (Path(keep) / "run/evaluation/result.json").is_file():
        root = Path(keep)
        return TrainedRun(root / "data", root / "features.zarr", root / "run", SYNTH)
    return build_trained_run(Path(keep) if keep else tmp_path_factory.mktemp("detect_run"))
