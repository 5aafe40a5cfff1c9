"""The paper's grid through a Prefect work pool on 127.0.0.1 (one server for the module, the repository's
prefect.yaml deployed to a process pool, two workers): a toy grid of 2 models x 2 seeds on the CPU ends with the
tables and checkpoints of an in-process `avsed paper`; with a worker killed (SIGKILL, with its flow run's
process) while it trains, the grid still completes and the killed run, resumed by another worker's flow run from
its last checkpoint, ends equal to the uninterrupted run; a unit whose run directory holds another configuration
ends as one line of the grid's report while the other unit finishes (these two faults in one grid).

Cost: the in-process reference grid trains while the server starts and the deployments deploy; every test starts
with two live workers (a killed one is started again), so no test runs its units one after the other."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grid.claim import CLAIM, TAKEOVERS, read_claim
from grid.run import REPORT
from tests.flows.test_prefect_deployment import BIN, ROOT, deployed, prefect_env, stop_group  # noqa: F401
from tests.training.conftest import small_config, synthetic_store  # noqa: F401 - the session fixture, shared
from tests.training.test_group import tiny_model
from training.checkpoint import CHECKPOINT
from training.train import train_group

pytestmark = pytest.mark.slow

MODELS = ("transformer-logmel-none", "conformer-logmel-none")
SEEDS = (0, 1)
STEPS = 60  # enough steps to kill a worker between two checkpoints


def toy_config(tmp_path: Path) -> Path:
    toy = small_config(["logmel"], steps=STEPS, model=tiny_model("transformer"), batch_strong=2, batch_weak=2,
                       batch_unlabelled=2, log_every=5, checkpoint_every=5)
    path = tmp_path / "toy.yaml"
    toy.save(path)
    return path


def paper_argv(store: Path, out: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "avsed.cli", "paper", "--store", str(store), "--out", str(out), "--seeds", "2",
            "--config", str(config), "--architectures", "transformer,conformer", "--features", "none",
            "--learned", "none", "--no-plots"]


@pytest.fixture(scope="module")
def reference_started(synthetic_store, tmp_path_factory):  # noqa: F811
    """The same grid by an in-process `avsed paper` (no Prefect), started in the background."""
    root = tmp_path_factory.mktemp("paper-reference")
    config = toy_config(root)
    out = root / "paper"
    log = root / "paper.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(paper_argv(synthetic_store, out, config) + ["--engine", "plain"], cwd=ROOT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    yield proc, out, config, log
    if proc.poll() is None:
        stop_group(proc)


@pytest.fixture(scope="module")
def reference(reference_started, workers):
    """The in-process grid, finished: it trains while the server starts, the deployments deploy and the
    workers start (`workers` is set up after `reference_started` and before this waits)."""
    proc, out, config, log = reference_started
    try:
        proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        stop_group(proc)
    assert proc.returncode == 0, log.read_text()[-6000:]
    return out, config


class Workers(list):
    """Two process workers on the pool, one flow run at a time each (as one per GPU); `revive()` starts again
    the ones a test killed, so that every test has two."""

    def __init__(self, env: dict, root: Path):
        super().__init__([None, None])
        self.env, self.root, self.logs = env, root, []
        self.revive()

    def revive(self) -> None:
        for k, proc in enumerate(self):
            if proc is not None and proc.poll() is None:
                continue
            self.logs.append(open(self.root / f"worker{k}-{len(self.logs)}.log", "w"))
            self[k] = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "avsed", "--type",
                                        "process", "--limit", "1", "--name", f"worker{k}"], cwd=ROOT, env=self.env,
                                       stdout=self.logs[-1], stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        for p in self:
            if p is not None and p.poll() is None:
                stop_group(p)
        for f in self.logs:
            f.close()


@pytest.fixture(scope="module")
def workers(deployed, prefect_env, tmp_path_factory):  # noqa: F811
    procs = Workers({**prefect_env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                    tmp_path_factory.mktemp("workers"))
    yield procs
    procs.stop()


@pytest.fixture
def two_workers(workers):
    workers.revive()
    return workers


def grid_process(store: Path, out: Path, config: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(paper_argv(store, out, config) + ["--work-pool", "avsed", "--in-flight", "2"], cwd=ROOT,
                            env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def finish(grid: subprocess.Popen, log: Path, timeout: float = 900) -> str:
    try:
        grid.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(grid)
        raise AssertionError("the grid did not finish:\n" + log.read_text()[-4000:])
    return log.read_text()


def rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def assert_same_run(got: Path, want: Path) -> None:
    a = torch.load(got / CHECKPOINT, map_location="cpu", weights_only=False)
    b = torch.load(want / CHECKPOINT, map_location="cpu", weights_only=False)
    assert a["step"] == b["step"] == STEPS
    for part in ("model", "teacher"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{got}: {part}.{name} differs"


def test_the_grid_on_two_workers_equals_the_in_process_grid(synthetic_store, reference, two_workers, prefect_env,  # noqa: F811
                                                            tmp_path):
    ref_out, config = reference
    out = tmp_path / "paper"
    log = tmp_path / "grid.log"
    output = finish(grid_process(synthetic_store, out, config, prefect_env, log), log)
    assert "trained 4 runs, evaluated 4 runs (2 models x 2 seeds)" in output, output[-4000:]
    for name in ("table5.csv", "table7.csv"):
        assert rows(out / name) == rows(ref_out / name), name
    for model in MODELS:
        for seed in SEEDS:
            run = out / "runs" / model / f"seed{seed}"
            assert_same_run(run, ref_out / "runs" / model / f"seed{seed}")
            assert not (run / CLAIM).exists()  # released
            result = json.loads((run / "evaluation" / "result.json").read_text())
            want = json.loads((ref_out / "runs" / model / f"seed{seed}" / "evaluation" / "result.json").read_text())
            assert result["sets"] == want["sets"]
    # Each unit ran as its own flow run of the pool's deployments, on the two workers.
    api = prefect_env["PREFECT_API_URL"]
    from tests.flows.test_prefect_deployment import api_post

    names = {r["name"]: r for r in api_post(api, "/flow_runs/filter", {"limit": 200})}
    for model in MODELS:  # one training and one evaluation flow run per seed group
        assert names[f"train-{model}-seed0+1"]["state_type"] == "COMPLETED"
        assert names[f"evaluate-{model}-seed0+1"]["state_type"] == "COMPLETED"
        assert not any(f"evaluate-{model}-seed{s}" in names for s in SEEDS)
    assert "| transformer-logmel-none | 0 | 0 | 0 | 0 | 2 | 0 |" in (out / REPORT).read_text()


def _pid_of_worker(pid: int, workers: list[subprocess.Popen]) -> subprocess.Popen | None:
    """The worker whose process tree holds `pid`."""
    ids = {w.pid: w for w in workers}
    while pid > 1:
        if pid in ids:
            return ids[pid]
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return None
    return None


def test_a_worker_killed_while_it_trains_loses_nothing_and_a_bad_unit_is_one_line(
        synthetic_store, reference, two_workers, prefect_env, tmp_path):  # noqa: F811
    """Two faults in one grid (each grid costs its flow runs' processes): the transformer's seed 0 already holds a
    run of another configuration (another learning rate), so its unit fails at once as one line and is not
    retried; the conformer's worker is killed (SIGKILL, with its flow run's process) once a checkpoint is written
    mid-run, and another worker's flow run resumes it to the uninterrupted result."""
    ref_out, config = reference
    out = tmp_path / "paper"
    bad, good = MODELS
    other = small_config(["logmel"], steps=STEPS, model=tiny_model("transformer"), batch_strong=2, batch_weak=2,
                         batch_unlabelled=2, learning_rate=0.01)
    train_group(synthetic_store, other, {0: out / "runs" / bad / "seed0"}, stop_after=1)
    log = tmp_path / "grid.log"
    grid = grid_process(synthetic_store, out, config, prefect_env, log)
    # Kill the worker seen training the conformer, with its flow run's process, once a checkpoint is written.
    killed = None
    deadline = time.time() + 600
    run = out / "runs" / good / "seed0"
    while killed is None and time.time() < deadline and grid.poll() is None:
        claim = read_claim(run)
        if claim and (run / CHECKPOINT).exists():
            worker = _pid_of_worker(int(claim["pid"]), two_workers)
            assert worker is not None, claim
            os.kill(int(claim["pid"]), signal.SIGKILL)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
            killed = (claim, torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)["step"])
            break
        time.sleep(0.05)
    assert killed is not None, "no worker was seen training:\n" + log.read_text()[-3000:]
    two_workers.revive()  # the dead worker restarted (as a supervisor would): the rest runs on two workers again
    claim, step = killed
    assert 0 < step < STEPS  # killed between two checkpoints of the run, not after it
    output = finish(grid, log)
    # The bad unit: one line, not retried, exit 1; the grid's other unit finished.
    assert grid.returncode == 1, output[-4000:]
    failed = [line for line in output.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith(f"failed: train-{bad}-seed0+1: ") and \
        "cannot resume with a different config" in failed[0] and "(not retried)" in failed[0], output[-3000:]
    report = (out / REPORT).read_text()
    assert f"| {bad} | 0 | 0 | 0 | 0 | 0 | 2 |" in report and f"| {good} | 0 | 0 | 0 | 0 | 2 | 0 |" in report
    # The killed unit: the other worker took the dead claim over and resumed; its runs end as the uninterrupted.
    for seed in SEEDS:
        takeovers = [json.loads(line) for line in (out / "runs" / good / f"seed{seed}" / TAKEOVERS).read_text()
                     .splitlines()]
        assert [t["dead"]["pid"] for t in takeovers] == [claim["pid"]]
        assert takeovers[0]["by"]["flow_run"] != claim["flow_run"]
        assert_same_run(out / "runs" / good / f"seed{seed}", ref_out / "runs" / good / f"seed{seed}")
    assert f"train-{good}-seed0+1: its worker died" in report and "submitted again" in report
    assert [r for r in rows(out / "table5.csv") if r["architecture"] == "conformer"] == \
        [r for r in rows(ref_out / "table5.csv") if r["architecture"] == "conformer"]


def test_the_grid_finds_the_pools_deployments_or_says_what_to_deploy(deployed, prefect_env):  # noqa: F811
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from grid.pool import PoolError, pool_deployments

    with temporary_settings({PREFECT_API_URL: prefect_env["PREFECT_API_URL"]}):
        assert pool_deployments("avsed") == {"train": "train/desed", "evaluate": "evaluate/desed"}
        with pytest.raises(PoolError, match="work pool 'avsed-cpu': no `evaluate` deployment.*--pool avsed-cpu"):
            pool_deployments("avsed", evaluate_pool="avsed-cpu")
        with pytest.raises(PoolError, match="no `train` deployment named 'other'"):
            pool_deployments("avsed", deployment="other")
