"""A store that no kill, second run or label correction can silently damage (issue: reliability).

The extraction is killed right after each of the store's writes in turn (through the storage seams, in a child
process that exits like a SIGKILL), rerun, and the store must then equal an uninterrupted run's, array by array.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.extract import ExtractConfig, run_extraction
from pipeline.ledger import Ledger
from avsed.core.store import FeatureStore
from tests.flows.faults import (KILLED, assert_same_store, fresh_copy, run_child, store_contents,
                                write_tiny_desed)

WEAK = {"Yaaaaaaaaaa1_0.000_1.000.wav": "Speech", "Yaaaaaaaaaa2_0.000_1.000.wav": "Dog"}
STRONG = {"1.wav": [(0.1, 0.5, "Cat")]}
VALIDATION = {"Ybbbbbbbbbb1_0.000_1.000.wav": [(0.2, 0.6, "Dog")]}


def config(data: Path, store: Path) -> dict:
    # log-mel only: the store's whole life cycle (creation, growth, a feature, rows, statistics, consolidation)
    # without downloads, so that one extraction per write stays cheap.
    return ExtractConfig(metadata=str(data / "metadata"), audio_dir=str(data / "audio"), store=str(store),
                         features=("logmel",)).to_dict()


def ledger_state(store: Path) -> dict:
    with Ledger(Ledger.path_for_store(store)) as ledger:
        return {k: (e.status, e.reason) for k, e in ledger.entries().items()}


def _kill_at_every_write(tmp: Path, data: Path, base: Path | None, reference: dict, phase: str) -> int:
    """Kill the run after write k for every k it makes, rerun, compare; returns the number of writes."""
    counts = tmp / f"writes-{phase}.txt"
    probe = tmp / f"probe-{phase}.zarr"
    if base is not None:
        fresh_copy(base, probe)
    code, result = run_child(config(data, probe), tmp, count_file=counts)
    assert (code, result) == (0, "done")
    writes = counts.read_text().splitlines()
    assert_same_store(store_contents(probe), reference, f"{phase}: a hooked, uninterrupted run")
    for k in range(1, len(writes) + 1):
        store = tmp / f"{phase}-{k}.zarr"
        if base is not None:
            fresh_copy(base, store)
        code, _ = run_child(config(data, store), tmp, kill_after=k)
        assert code == KILLED, f"{phase}: the run was not killed after write {k} ({writes[k - 1]})"
        run_extraction(ExtractConfig.from_dict(config(data, store)), progress=False)
        assert_same_store(store_contents(store), reference, f"{phase}: killed after write {k} ({writes[k - 1]})")
    return len(writes)


@pytest.mark.slow
def test_a_kill_after_any_store_write_never_damages_the_store(tmp_path):
    data = write_tiny_desed(tmp_path / "data", WEAK, STRONG, VALIDATION)
    first = tmp_path / "first.zarr"
    run_extraction(ExtractConfig.from_dict(config(data, first)), progress=False)
    reference = store_contents(first)
    n = _kill_at_every_write(tmp_path, data, None, reference, "creation")
    assert n >= 20  # creation, growth, feature creation, rows, statistics, consolidation

    # A later run grows the store and reconciles corrected labels: killed after each of its writes too.
    weak = {**WEAK, "Yaaaaaaaaaa1_0.000_1.000.wav": "Dog", "Yaaaaaaaaaa3_0.000_1.000.wav": "Cat"}
    strong = {"1.wav": [(0.1, 0.5, "Cat"), (0.6, 0.9, "Dog")], "2.wav": [(0.0, 0.3, "Blender")]}
    write_tiny_desed(data, weak, strong, VALIDATION)
    grown = fresh_copy(first, tmp_path / "grown.zarr")
    run_extraction(ExtractConfig.from_dict(config(data, grown)), progress=False)
    reference = store_contents(grown)
    s = FeatureStore.open(grown)
    assert s.n_clips == 6 and [str(e.label) for e in s.clip_events()[list(s.clip_ids()).index("1.wav")]] == ["Cat", "Dog"]
    _kill_at_every_write(tmp_path, data, first, reference, "growth")


@pytest.mark.slow
def test_two_runs_at_once_one_refuses_and_the_store_is_a_single_runs(tmp_path):
    data = write_tiny_desed(tmp_path / "data", WEAK, STRONG, VALIDATION)
    single = tmp_path / "single.zarr"
    run_extraction(ExtractConfig.from_dict(config(data, single)), progress=False)
    store = tmp_path / "shared.zarr"
    # Slow storage (20 ms per write, as on a network file system) keeps the first run inside its writes while the
    # second one starts.
    runs = [run_child(config(data, store), tmp_path, delay=0.02, start=False) for _ in range(2)]
    for proc, _ in runs:
        proc.join(300)
    outcomes = sorted((proc.exitcode, result.read_text()) for proc, result in runs)
    assert outcomes[0] == (0, "done")
    assert outcomes[1][0] == 3 and "is being written by extract (pid" in outcomes[1][1], outcomes
    assert_same_store(store_contents(store), store_contents(single), "two runs at once")
    assert ledger_state(store) == ledger_state(single)


def test_corrected_labels_are_applied_on_rerun(tmp_path):
    data = write_tiny_desed(tmp_path / "data", WEAK, STRONG, VALIDATION)
    store = tmp_path / "features.zarr"
    run_extraction(ExtractConfig.from_dict(config(data, store)), progress=False)
    write_tiny_desed(data, {**WEAK, "Yaaaaaaaaaa1_0.000_1.000.wav": "Dog"}, STRONG, VALIDATION)
    run_extraction(ExtractConfig.from_dict(config(data, store)), progress=False)
    s = FeatureStore.open(store)
    row = list(s.clip_ids()).index("Yaaaaaaaaaa1_0.000_1.000.wav")
    assert [c for c, on in zip(s.classes, s.column("weak_labels")[row]) if on] == ["Dog"]
