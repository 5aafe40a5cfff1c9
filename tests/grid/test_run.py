"""The grid's orchestration without training (a fake executor, run directories read by a stub): at most `window`
units in flight over a paper-sized grid, every run trained once and evaluated once (one evaluation unit per seed
group), a lost unit submitted again, a refused one failing as one line while the rest goes on, a refused run of an
evaluation unit failing as one line of its own; a flow run stuck before it starts given up on; and the run
directories' claims."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from grid.claim import CLAIM, TAKEOVERS, RunClaimed, claim_run, claimed, holder_alive, read_claim
from grid.plan import grid_units, paper_grid
from grid.run import REPORT, GridSpec, Outcome, RunReader, run_grid
from tests.training.conftest import small_config


class FakePool:
    """Finishes the oldest unit in flight at each wait; `fate(unit, attempt)` says how it ends."""

    def __init__(self, reader: "DiskStub", fate=lambda unit, attempt: "done"):
        self.reader, self.fate = reader, fate
        self.in_flight: dict[int, tuple] = {}
        self.most = 0
        self.submitted: list[str] = []

    def submit(self, unit, spec, attempt):
        handle = len(self.submitted)
        self.submitted.append(unit.name)
        self.in_flight[handle] = (unit, attempt)
        self.most = max(self.most, len(self.in_flight))
        return handle

    def wait(self, handles, timeout):
        handle = min(handles)
        unit, attempt = self.in_flight.pop(handle)
        fate = self.fate(unit, attempt)
        if fate == "done":
            for s in unit.seeds:
                (self.reader.evaluated_runs if unit.kind == "evaluate" else self.reader.trained_runs).add(
                    (unit.entry.key, s))
            return [(handle, Outcome("done"))]
        if fate == "refused":
            return [(handle, Outcome("refused", "RunMismatch: the run holds another config"))]
        if isinstance(fate, dict):  # an evaluation unit: these runs refused, the others evaluated
            for s in unit.seeds:
                if s not in fate:
                    self.reader.evaluated_runs.add((unit.entry.key, s))
            return [(handle, Outcome("refused", "; ".join(fate.values()), fate))]
        return [(handle, Outcome("lost", "its worker died"))]


class DiskStub(RunReader):
    def __init__(self):
        self.trained_runs, self.evaluated_runs = set(), set()

    def trained(self, path: Path, total_steps: int) -> bool:
        return (path.parent.name, int(path.name[4:])) in self.trained_runs

    def evaluated(self, path: Path) -> bool:
        return (path.parent.name, int(path.name[4:])) in self.evaluated_runs


def _spec(tmp_path) -> GridSpec:
    return GridSpec("store", tmp_path, small_config(["logmel"]), plots=False)


def test_a_paper_sized_grid_keeps_at_most_window_units_in_flight(tmp_path):
    entries = paper_grid(["transformer", "conformer"], ["vgg16", "openl3", "tce"], learned_modes=())  # 18 models
    seeds = list(range(20))
    reader = DiskStub()
    pool = FakePool(reader)
    paper = run_grid(_spec(tmp_path), entries, [], seeds, pool, window=8, reader=reader, log=lambda line: None)
    assert len(entries) * len(seeds) == 360
    assert 1 < pool.most <= 8  # the window, not 36 flow runs at once
    # each unit once: a training unit and an evaluation unit per model (its 20 seeds), not one per run
    assert len(pool.submitted) == 2 * len(entries) == len(set(pool.submitted))
    assert f"evaluate-{entries[0].key}-seed{'+'.join(map(str, seeds))}" in pool.submitted
    assert paper.trained_runs == paper.evaluated_runs == 360 and not paper.failed and not paper.requeued
    assert "| transformer-logmel-none | 0 | 0 | 0 | 0 | 20 | 0 |" in (tmp_path / REPORT).read_text()


def test_a_lost_unit_is_submitted_again_and_a_refused_one_fails_as_one_line(tmp_path):
    entries = paper_grid(["conformer"], ["openl3"], learned_modes=())  # audio only, OpenL3 fixed and random
    bad = entries[1].key

    def fate(unit, attempt):
        if unit.entry.key == bad and unit.kind == "train":
            return "refused"
        if unit.entry.key == entries[0].key and unit.kind == "train" and attempt == 0:
            return "lost"
        return "done"

    reader = DiskStub()
    pool = FakePool(reader, fate)
    paper = run_grid(_spec(tmp_path), entries, [], [0, 1], pool, window=2, reader=reader, log=lambda line: None)
    assert paper.failed == [f"train-{bad}-seed0+1: RunMismatch: the run holds another config (not retried)"]
    assert pool.submitted.count(f"train-{bad}-seed0+1") == 1  # not retried
    assert pool.submitted.count(f"train-{entries[0].key}-seed0+1") == 2  # lost once, then done
    assert len(paper.requeued) == 1 and "its worker died" in paper.requeued[0]
    assert paper.evaluated_runs == 4  # the two good models' runs
    report = (tmp_path / REPORT).read_text()
    assert f"| {bad} | 0 | 0 | 0 | 0 | 0 | 2 |" in report and "## Failed (one line each)" in report


def test_an_evaluation_unit_refusing_one_run_fails_that_run_in_one_line_and_groups_follow_group_size(tmp_path):
    entries = paper_grid(["conformer"], [], learned_modes=())  # audio only
    key = entries[0].key

    def fate(unit, attempt):
        if unit.kind == "evaluate" and 1 in unit.seeds:
            return {1: "EvaluationError: seed 1's checkpoint holds NaN"}
        if unit.kind == "evaluate" and unit.seeds == (2, 3) and attempt == 0:
            return "lost"
        return "done"

    reader = DiskStub()
    pool = FakePool(reader, fate)
    paper = run_grid(_spec(tmp_path), entries, [], [0, 1, 2, 3], pool, window=2, group_size=2, reader=reader,
                     log=lambda line: None)
    assert pool.submitted == [f"train-{key}-seed0+1", f"train-{key}-seed2+3", f"evaluate-{key}-seed0+1",
                              f"evaluate-{key}-seed2+3", f"evaluate-{key}-seed2+3"]  # lost once, then done
    assert paper.failed == [f"evaluate-{key}-seed1: EvaluationError: seed 1's checkpoint holds NaN (not retried)"]
    assert paper.evaluated_runs == 3 and len(paper.requeued) == 1
    assert f"| {key} | 0 | 0 | 0 | 0 | 3 | 1 |" in (tmp_path / REPORT).read_text()


def test_evaluation_refusals_travel_as_one_line_per_run_through_a_flow_runs_state():
    from prefect.states import Completed, Crashed, Failed

    from grid.pool import outcome_of
    from grid.runs import EvaluationsRefused, RunRecord, evaluate_runs
    from avsed.core.errors import AvsedError

    def evaluate(record):
        if record.seed == 1:
            raise AvsedError("no checkpoint of step 60\nsecond line")
        if record.seed == 3:
            raise AvsedError("the store lacks openl3")

    records = [RunRecord(None, s, Path(f"seed{s}")) for s in range(4)]
    refused = evaluate_runs(records, evaluate)
    error = EvaluationsRefused(refused)
    assert error.failures == {1: "no checkpoint of step 60", 3: "the store lacks openl3"}
    state = Failed(message=f"Flow run encountered an exception: EvaluationsRefused: {error}")
    outcome = outcome_of(state)
    assert (outcome.state, outcome.runs) == ("refused", error.failures)
    assert outcome_of(Failed(message="Flow run encountered an exception: RunClaimed: x")).runs == {}
    assert outcome_of(Crashed(message="exit 137")).state == "lost" and outcome_of(Completed()).state == "done"
    # an unexpected error in one run: the others still run, then it is raised (the unit is lost, submitted again)
    seen = []

    def crash(record):
        seen.append(record.seed)
        if record.seed == 0:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        evaluate_runs(records, crash)
    assert seen == [0, 1, 2, 3]


def test_a_flow_run_that_never_starts_is_given_up_on_and_idle_pools_are_reported(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from prefect.states import Pending, Running, Scheduled

    from grid import pool as pool_module
    from grid.plan import Unit

    clock = [1000.0]
    monkeypatch.setattr(pool_module.time, "monotonic", lambda: clock[0])
    lines = []
    executor = pool_module.PoolExecutor({"train": "train/x", "evaluate": "evaluate/x"}, lease_s=300, start_s=60,
                                        log=lines.append)
    entry = paper_grid(["conformer"], [], learned_modes=())[0]
    unit = Unit("evaluate", entry, (0, 1))
    for k in ("a", "b"):
        executor._runs[k] = (unit, _spec(tmp_path))

    def run(k, state):
        return SimpleNamespace(id=k, name=k, state=state)

    submitting = Pending(name="Submitting")
    assert executor._stuck(run("a", Scheduled())) is None
    clock[0] += 100  # Scheduled for 100 s is waiting for a worker, not stuck
    assert executor._stuck(run("a", Scheduled())) is None and executor._stuck(run("a", submitting)) is None
    executor._report_idle([run("a", Scheduled())])
    assert not lines  # "a" is Pending now
    clock[0] += 61
    why, state = executor._stuck(run("a", submitting))
    assert "Submitting for 60 s without starting" in why and state.__name__ == "Cancelling"
    # Running without ever holding a claim for a whole lease: its worker is gone
    assert executor._stuck(run("b", Running())) is None
    clock[0] += 200
    (tmp_path / "runs" / entry.key / "seed0").mkdir(parents=True)
    (tmp_path / "runs" / entry.key / "seed0" / "claim.json").write_text(json.dumps(
        {"flow_run": "b", "host": "elsewhere", "heartbeat": pool_module.time.time()}))
    assert executor._stuck(run("b", Running())) is None
    clock[0] += 299
    (tmp_path / "runs" / entry.key / "seed0" / "claim.json").unlink()  # between two runs of the unit
    assert executor._stuck(run("b", Running())) is None  # a claim was seen 299 s ago
    clock[0] += 2
    why, state = executor._stuck(run("b", Running()))
    assert "without a claim on its runs" in why and state.__name__ == "Crashed"
    # every unit in flight Scheduled past the deadline and none running: said once
    executor._since.clear()
    executor._stuck(run("a", Scheduled()))
    clock[0] += 61
    for _ in range(2):
        executor._report_idle([run("a", Scheduled())])
    assert len(lines) == 1 and "is a worker polling" in lines[0]


def test_a_unit_lost_every_time_gives_up_after_its_attempts(tmp_path):
    entries = paper_grid(["conformer"], [], learned_modes=())
    reader = DiskStub()
    pool = FakePool(reader, lambda unit, attempt: "lost")
    paper = run_grid(_spec(tmp_path), entries, [], [0], pool, window=2, reader=reader, attempts=3,
                     log=lambda line: None)
    assert len(pool.submitted) == 3 and len(paper.failed) == 1 and "gave up after 3 attempts" in paper.failed[0]


def test_units_group_a_models_seeds():
    entries = paper_grid(["conformer"], ["openl3"], learned_modes=())
    units = grid_units(entries, range(5), group_size=2)
    assert [u.seeds for u in units[:3]] == [(0, 1), (2, 3), (4,)] and len(units) == 9
    assert [u.seeds for u in grid_units(entries, range(5))] == [(0, 1, 2, 3, 4)] * 3


def test_a_second_claim_refuses_in_one_line_and_a_released_run_can_be_claimed(tmp_path):
    run = tmp_path / "runs" / "m" / "seed0"
    with claimed([run], "training m") as claims:
        assert read_claim(run)["token"] == claims[0].identity["token"]
        with pytest.raises(RunClaimed) as refused:
            claim_run(run, "training m")
        assert "\n" not in str(refused.value) and "claimed by training m on" in str(refused.value)
    assert not (run / CLAIM).exists()
    claim_run(run, "again").release()


def test_a_dead_holders_claim_is_taken_over_once(tmp_path):
    run = tmp_path / "seed0"
    # a process that claims the run and dies without releasing it (SIGKILL-like: os._exit skips the finally)
    code = ("import os, sys; from grid.claim import claim_run; claim_run(sys.argv[1], 'doomed'); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(run)], check=True, cwd=Path(__file__).resolve().parents[2],
                   timeout=120)
    dead = read_claim(run)
    assert dead["purpose"] == "doomed" and not holder_alive(dead)
    # another host's holder is judged by its heartbeat's age instead
    assert holder_alive({**dead, "host": "elsewhere", "heartbeat": 1000.0}, lease_s=60, now=1030.0)
    assert not holder_alive({**dead, "host": "elsewhere", "heartbeat": 1000.0}, lease_s=60, now=1061.0)
    won, errors = [], []

    def take():
        try:
            won.append(claim_run(run, "taker"))
        except RunClaimed as exc:
            errors.append(exc)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(errors) == 3  # one taker wins; the others see a live holder
    assert won[0].took_over["pid"] == dead["pid"]
    log = [json.loads(line) for line in (run / TAKEOVERS).read_text().splitlines()]
    assert [entry["dead"]["pid"] for entry in log] == [dead["pid"]]
    won[0].release()


def test_a_work_pool_without_a_prefect_server_is_one_line(tmp_path, monkeypatch, capsys):
    from avsed import cli

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert cli.main(["paper", "--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "o"), "--work-pool",
                     "avsed-gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--work-pool: set PREFECT_API_URL" in err[0]


def test_the_pool_outlives_a_busy_server_but_not_a_refusal():
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    from grid.pool import _patiently

    def status_error(code: int) -> PrefectHTTPStatusError:
        request = httpx.Request("POST", "http://127.0.0.1/api/x")
        return PrefectHTTPStatusError("busy", request=request, response=httpx.Response(code, request=request))

    answers = [httpx.ConnectError("refused"), status_error(503), "ok"]

    def call():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert _patiently(call, first_delay=0) == "ok" and not answers
    answers[:] = [status_error(422), "never"]
    with pytest.raises(PrefectHTTPStatusError):
        _patiently(call, first_delay=0)
    assert answers == ["never"]  # a refusal is not asked again
