"""benchmarks/gpu_bench.py --smoke: the GPU benchmark's code on the CPU at tiny sizes, writing its results as it
goes, skipping what its time budget does not cover, and counting fewer kernels per eager step than before."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_bench  # noqa: E402


@pytest.mark.slow
def test_smoke_run_writes_its_measurements_and_skips_past_its_budget(tmp_path):
    # A budget that covers the eager measurements but no compilation: the rest must be listed as skipped.
    md = gpu_bench.main(["--smoke", "--budget", "45", "--out", str(tmp_path / "smoke")])
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert md == tmp_path / "smoke.md" and data["smoke"] and "CPU" in data["device"] and data["date"]
    sections = data["sections"]
    kernels = [r["kernels_per_step"] for r in sections["Kernels per eager step (transformer bi-encoder, one seed)"]]
    # Before, + squeeze(0) (no select_backward per parameter), + SDPA (on the CPU with dropout on, still written out).
    assert len(kernels) == 3 and kernels[0] > kernels[1] >= kernels[2] > 100
    changes = sections["Each change (transformer bi-encoder, one seed)"]
    # Measured, or (on a loaded machine, where the counts above can spend the budget) listed as skipped.
    assert changes[0]["variant"].startswith("before")
    assert all(r.get("ms_per_step", 0) > 0 or r.get("skipped") == "time budget spent" for r in changes)
    assert not any("captured" in r["variant"] for r in changes)  # no CUDA graphs on the CPU
    skipped = [r for rows in sections.values() for r in rows if r.get("skipped") == "time budget spent"]
    assert any("compile" in r.get("variant", "") for r in skipped)
    assert len(sections["Compiled + captured, by architecture and streams (one seed)"]) == 6
    assert sections["CUDA tests (pytest -k cuda)"] == [{"result": "not run: no CUDA device"}]
    text = md.read_text()
    assert data["device"] in text and "| before: t[0], written-out attention |" in text
    counts = (tmp_path / "kernels_cpu.md").read_text()
    assert all(str(k) in counts for k in kernels)
