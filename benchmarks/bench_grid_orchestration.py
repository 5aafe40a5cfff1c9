"""The paper grid's orchestration at full size, by simulation: 18 models x 20 seeds = 360 runs (18 training units
of 20 seeds, then 18 evaluation units; with --group-size G, 18 x ceil(20 / G) of each) through a real Prefect
server on 127.0.0.1 and two process workers, with stub `train` and `evaluate` flows that do nothing
(benchmarks/grid_stub_flows.py) and the real grid (grid/run.py, grid/pool.py) submitting them in a bounded window.

Reported: the grid's wall time and its own CPU seconds per run (the orchestration itself), the parent's peak RSS
and its RSS as the grid goes on (bounded: it must not grow with the runs submitted), the Prefect server's CPU
seconds and RSS, the most flow runs in flight, the flow runs submitted and status polls made, the flow runs given
up on as stuck (taken by a worker, never started) and the machine's load average. The workers'
time per flow run (a fresh Python process importing Prefect for every run) is what bounds the wall time here;
on GPUs the training itself dwarfs it. Writes benchmarks/results/grid_orchestration.json and .md.

    .venv/bin/python benchmarks/bench_grid_orchestration.py [--models 18] [--seeds 20] [--group-size 20]
        [--window 16] [--limit 4] [--out benchmarks/results/grid_orchestration]

The server is Prefect's default, SQLite. Every client (the grid, the workers, the flow runs) retries a busy
server's answer (503 `database is locked`) up to PREFECT_CLIENT_MAX_RETRIES times, 10 here against 5 by default.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grid.plan import paper_grid  # noqa: E402
from grid.run import GridSpec, RunReader, run_grid  # noqa: E402
from avsed.synthetic.processes import BIN, free_port, stop_group, wait_for  # noqa: E402
from training.config import TrainConfig  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
POOL = "grid-bench"


class MarkerReader(RunReader):
    """Done is what the stub flows marked in the run directories."""

    def trained(self, path: Path, total_steps: int) -> bool:
        return (path / "trained").exists()

    def evaluated(self, path: Path) -> bool:
        return (path / "evaluated").exists()


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """A process and its live descendants (the server runs in a child of `prefect server start`)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
            out.append(p)
        except OSError:
            pass
    return out


def _sum(measure, pid: int) -> float:
    total = 0.0
    for p in process_tree(pid):
        try:
            total += measure(p)
        except OSError:
            pass  # ended meanwhile
    return total


def tree_cpu_seconds(pid: int) -> float:
    return _sum(cpu_seconds, pid)


def tree_rss_mb(pid: int) -> float:
    return _sum(rss_mb, pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=18)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--window", type=int, default=16, help="units in flight at most")
    parser.add_argument("--limit", type=int, default=4, help="flow runs at once per worker")
    parser.add_argument("--group-size", type=int, default=None, help="seeds per unit (default: all)")
    parser.add_argument("--start-s", type=float, default=120.0,
                        help="a flow run taken by a worker and not started after this long is given up on")
    parser.add_argument("--out", default=str(RESULTS / "grid_orchestration"), help="results .json/.md stem")
    parser.add_argument("--server-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a Prefect setting for the server only, e.g. "
                             "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED=false")
    args = parser.parse_args()

    entries = paper_grid(["transformer", "conformer"], ["vgg16", "openl3", "tce"], learned_modes=())[:args.models]
    seeds = list(range(args.seeds))
    tmp = Path(tempfile.mkdtemp(prefix="grid-bench-"))
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
           "PREFECT_CLIENT_MAX_RETRIES": "10"}
    os.environ.update({k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED",
                                           "DO_NOT_TRACK", "PREFECT_LOGGING_LEVEL", "PREFECT_CLIENT_MAX_RETRIES")})
    server_log = open(tmp / "server.log", "w")
    server_settings = dict(item.split("=", 1) for item in args.server_setting)
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env={**env, **server_settings}, stdout=server_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    workers: list[subprocess.Popen] = []
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).status == 200,
                 180, "prefect server", server)
        subprocess.run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], env=env, check=True,
                       capture_output=True, timeout=120)
        spec_file = tmp / "prefect.yaml"
        spec_file.write_text(json.dumps({"name": "grid-bench", "deployments": [
            {"name": "stub", "entrypoint": "benchmarks/grid_stub_flows.py:stub_train", "work_pool": {"name": POOL}},
            {"name": "stub", "entrypoint": "benchmarks/grid_stub_flows.py:stub_evaluate", "work_pool": {"name": POOL}},
        ]}))
        deploy = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file",
                                 str(spec_file)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        for k in range(2):
            workers.append(subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type",
                                             "process", "--limit", str(args.limit)], cwd=ROOT, env=env,
                                            stdout=open(tmp / f"worker{k}.log", "w"), stderr=subprocess.STDOUT,
                                            start_new_session=True))
        from grid.pool import PoolExecutor, pool_deployments

        grid_log: list[str] = []
        executor = PoolExecutor(pool_deployments(POOL), poll_s=1.0, start_s=args.start_s, log=grid_log.append)
        spec = GridSpec("unused-store", tmp / "grid", TrainConfig(), plots=False)
        samples: list[dict] = []
        stop = threading.Event()
        runs = len(entries) * len(seeds)

        def sample() -> None:
            while not stop.wait(5.0):
                samples.append({"t": round(time.perf_counter() - t0, 1), "parent_rss_mb": round(rss_mb(), 1),
                                "server_rss_mb": round(tree_rss_mb(server.pid), 1),
                                "submitted": executor.submitted})

        load0 = os.getloadavg()
        server_cpu0 = tree_cpu_seconds(server.pid)
        cpu0 = time.process_time()
        rss0 = rss_mb()
        t0 = time.perf_counter()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        paper = run_grid(spec, entries, [], seeds, executor, window=args.window, group_size=args.group_size,
                         reader=MarkerReader(), poll_s=1.0, log=grid_log.append)
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        parent_cpu = time.process_time() - cpu0
        server_cpu = tree_cpu_seconds(server.pid) - server_cpu0
        evaluated = sum(1 for e in entries for s in seeds if (tmp / "grid" / "runs" / e.key / f"seed{s}" /
                                                                "evaluated").exists())
        results = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()}, {os.cpu_count()} CPUs", "models": len(entries), "seeds": len(seeds),
            "runs": runs, "flow_runs_submitted": executor.submitted, "status_polls": executor.polls,
            "group_size": args.group_size or len(seeds), "window": args.window, "workers": 2,
            "load_average_start": [round(x, 1) for x in load0], "load_average_end": [round(x, 1) for x in
                                                                                     os.getloadavg()],
            "stuck_flow_runs": executor.stuck, "server_settings": server_settings,
            "grid_log_lines": [line for line in grid_log if not line.endswith(": done")],
            "flow_runs_per_worker": args.limit,
            "runs_evaluated": evaluated, "failed": paper.failed, "requeued": len(paper.requeued),
            "wall_seconds": round(wall, 1), "wall_seconds_per_run": round(wall / runs, 3),
            "parent_cpu_seconds": round(parent_cpu, 1), "parent_cpu_seconds_per_run": round(parent_cpu / runs, 4),
            "server_cpu_seconds": round(server_cpu, 1), "server_cpu_seconds_per_run": round(server_cpu / runs, 4),
            "parent_rss_mb_start": round(rss0, 1), "parent_peak_rss_mb": round(resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "most_in_flight": executor.most_in_flight,
            "samples": samples}
    finally:
        for w in workers:
            stop_group(w)
        stop_group(server)
        server_log.close()
    results["server_database_locked_errors"] = (tmp / "server.log").read_text(errors="replace").count(
        "sqlite3.OperationalError: database is locked")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    third = r["samples"][len(r["samples"]) // 3] if r["samples"] else {}
    last = r["samples"][-1] if r["samples"] else {}
    rows = [("grid", f"{r['models']} models x {r['seeds']} seeds = {r['runs']} runs in units of {r['group_size']} "
                     f"seeds, {r['flow_runs_submitted']} flow runs (training and evaluation units), window "
                     f"{r['window']}"),
            ("machine load (1, 5, 15 min) at start, at end", f"{r['load_average_start']}, {r['load_average_end']}"),
            ("flow runs given up on as stuck (never started)", str(len(r["stuck_flow_runs"]))),
            ("server: settings beyond the defaults; `database is locked` errors in its log",
             f"{r.get('server_settings') or 'none'}; {r.get('server_database_locked_errors')}"),
            ("workers", f"{r['workers']} process workers, {r['flow_runs_per_worker']} flow runs at once each, stub "
                        f"flows (sleep 0)"),
            ("runs evaluated / failed / submitted again", f"{r['runs_evaluated']} / {len(r['failed'])} / "
                                                          f"{r['requeued']}"),
            ("wall time", f"{r['wall_seconds']} s ({r['wall_seconds_per_run']} s per run)"),
            ("the grid's own CPU (orchestration)", f"{r['parent_cpu_seconds']} s "
                                                   f"({r['parent_cpu_seconds_per_run']} s per run)"),
            ("Prefect server CPU", f"{r['server_cpu_seconds']} s ({r['server_cpu_seconds_per_run']} s per run)"),
            ("flow runs in flight at most", str(r["most_in_flight"])),
            ("status polls", str(r["status_polls"])),
            ("grid's RSS: start, a third in, last sample, peak",
             f"{r['parent_rss_mb_start']}, {third.get('parent_rss_mb')}, {last.get('parent_rss_mb')}, "
             f"{r['parent_peak_rss_mb']} MB"),
            ("server's RSS: a third in, last sample", f"{third.get('server_rss_mb')}, {last.get('server_rss_mb')} MB")]
    return ("# The paper grid's orchestration, simulated (bench_grid_orchestration.py)\n\n"
            f"{r['date']}, {r['machine']}.\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n")


if __name__ == "__main__":
    main()
